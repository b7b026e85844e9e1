"""The CSS family: css-synthetic (generated from a seed, the embedded default), css (the original files), make-css,
and css-pairs (single objects named by held-out (colour, shape) pairs: compositional classification)."""

from compose_retrieval import hookimpl

from .css import CSS
from .dataset import CSSSynthetic
from .pairs import CSSPairs


@hookimpl
def register_datasets(register):
    register("css-synthetic", CSSSynthetic)
    register("css", CSS)
    register("css-pairs", CSSPairs)


@hookimpl
def register_commands(data):
    from .commands import make_css

    data.command("make-css")(make_css)
