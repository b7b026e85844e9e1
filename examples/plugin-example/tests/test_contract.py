"""The example's components against compose-retrieval's contract (pip install -e examples/plugin-example; pytest)."""

from compose_retrieval.testing import check_combiner, check_loss

from compose_retrieval_example import GatedSum, Hinge


def test_gated_sum_keeps_the_combiner_contract():
    check_combiner(GatedSum, hidden=16)


def test_hinge_keeps_the_loss_contract():
    check_loss(Hinge, margin=0.5)
