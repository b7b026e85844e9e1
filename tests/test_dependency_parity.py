"""What the project writes out by hand instead of importing equals the dependency's own value, and the engine's
start-up does not import the dependency it avoids."""

from __future__ import annotations

import subprocess
import sys

import compose_retrieval


def test_imagenet_constants_are_timms():
    import timm.data

    assert compose_retrieval.IMAGENET_MEAN == tuple(timm.data.IMAGENET_DEFAULT_MEAN)
    assert compose_retrieval.IMAGENET_STD == tuple(timm.data.IMAGENET_DEFAULT_STD)


def test_listing_the_plugins_does_not_import_timm():
    """Why the constants are written out: listing plugins (every plugin loaded) must not pay for importing timm."""
    code = "import sys, compose_retrieval as c; c.list_image_encoders(); c.list_combiners(); print('timm' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
