"""The composition methods of the TIRG paper (Vo et al., CVPR 2019)."""

from compose_retrieval import hookimpl

from .concat import Concat
from .simple import ImageOnly, TextOnly
from .tirg import TIRG, TIRGLastConv


@hookimpl
def register_combiners(register):
    register("tirg", TIRG)
    register("tirg_lastconv", TIRGLastConv)
    register("image_only", ImageOnly)
    register("text_only", TextOnly)
    register("concat", Concat)
