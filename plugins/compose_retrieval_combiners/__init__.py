"""The composition methods of the TIRG paper (Vo et al., CVPR 2019): TIRG and its eight baselines."""

from compose_retrieval import hookimpl

from .attribute_operator import AttributeOperator
from .concat import Concat
from .film import FiLM
from .mrn import MRN
from .param_hashing import ParamHashing
from .relationship import Relationship
from .show_and_tell import ShowAndTell
from .simple import ImageOnly, TextOnly
from .tirg import TIRG, TIRGLastConv


@hookimpl
def register_combiners(register):
    register("tirg", TIRG)
    register("tirg_lastconv", TIRGLastConv)
    register("image_only", ImageOnly)
    register("text_only", TextOnly)
    register("concat", Concat)
    register("show_and_tell", ShowAndTell)
    register("attribute_operator", AttributeOperator)
    register("param_hashing", ParamHashing)
    register("relationship", Relationship)
    register("mrn", MRN)
    register("film", FiLM)
