"""Where a dependency does the work, it gives what the hand-written code gave: timm's forward_intermediates the
token maps we built by hand; and what stays written out (the ImageNet constants) equals the dependency's value,
so that the engine's start-up need not import it."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import compose_retrieval
from compose_retrieval import OptionError


def test_imagenet_constants_are_timms():
    import timm.data

    assert compose_retrieval.IMAGENET_MEAN == tuple(timm.data.IMAGENET_DEFAULT_MEAN)
    assert compose_retrieval.IMAGENET_STD == tuple(timm.data.IMAGENET_DEFAULT_STD)


def test_listing_the_plugins_does_not_import_timm():
    """Why the constants are written out: listing plugins (every plugin loaded) must not pay for importing timm."""
    code = "import sys, compose_retrieval as c; c.list_image_encoders(); c.list_combiners(); print('timm' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


# ------------------------------------------------ timm's forward_intermediates gives the map we built by hand


def _hand_made_map(encoder, images):
    """What TimmImageEncoder.features did before forward_intermediates: forward_features, then for (B, N, C)
    tokens the prefix tokens dropped and the rest laid out row by row on a square grid."""
    x = encoder.body.forward_features(images)
    if x.dim() == 3:
        x = x[:, getattr(encoder.body, "num_prefix_tokens", 0) :]
        side = int(x.shape[1] ** 0.5)
        assert side * side == x.shape[1]
        x = x.transpose(1, 2).reshape(x.shape[0], x.shape[2], side, side)
    return x


def _timm(model_name, **model_kwargs):
    torch.manual_seed(0)
    return compose_retrieval.create("image_encoder", "timm", out_dim=8, model_name=model_name, model_kwargs=model_kwargs).eval()


@pytest.mark.parametrize("model_name, model_kwargs, size", [
    ("vit_tiny_patch16_224", {"img_size": 32, "depth": 2}, 32),  # one class token
    ("vit_tiny_patch16_224", {"img_size": 32, "depth": 2, "class_token": False, "reg_tokens": 2}, 32),
    ("eva02_tiny_patch14_224", {"img_size": 28, "depth": 2}, 28),
    ("test_resnet", {}, 32),  # a CNN: forward_features, as before
], ids=["vit", "vit-registers", "eva02", "cnn"])
def test_the_token_map_equals_the_hand_made_one(model_name, model_kwargs, size):
    encoder = _timm(model_name, **model_kwargs)
    images = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = encoder.features(images)
        assert torch.equal(ours, _hand_made_map(encoder, images))
        assert ours.shape[1] == encoder.map_channels and encoder(images).pooled.shape == (2, 8)


def test_maps_the_hand_made_layout_could_not_give():
    """A patch grid that is not square (a ViT with dynamic_img_size given 32 x 48 images) and Swin's channels-last
    output: forward_intermediates lays both out as (B, C, h, w); the hand-made code refused one and mis-read the other."""
    vit = _timm("vit_tiny_patch16_224", img_size=32, depth=2, dynamic_img_size=True)
    images = torch.randn(2, 3, 32, 48, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        tokens = vit.body.forward_features(images)[:, 1:]  # (2, 6, 192): 2 rows of 3 patches
        assert torch.equal(vit.features(images), tokens.transpose(1, 2).reshape(2, 192, 2, 3))
    swin = _timm("swin_tiny_patch4_window7_224", img_size=64, depths=(1, 1, 1, 1), embed_dim=16,
                 num_heads=(1, 1, 1, 2), window_size=2)
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.equal(swin.features(images), swin.body.forward_features(images).permute(0, 3, 1, 2))
        assert swin(images).pooled.shape == (2, 8)


def test_a_vit_given_images_of_another_size_is_one_line():
    vit = _timm("vit_tiny_patch16_224", img_size=32, depth=2)
    with pytest.raises(OptionError, match=r"cannot take \(64, 64\) images") as info:
        vit.features(torch.zeros(1, 3, 64, 64))
    assert "\n" not in str(info.value)
