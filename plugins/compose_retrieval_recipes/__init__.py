"""The built-in training recipes: ``cpu`` (the default: minutes on a laptop) and ``paper`` (google/tirg's).

"cpu" is sized so that the default command trains a useful model on a 2-core laptop in
under 10 minutes: AdamW with a cosine schedule and the batch softmax loss learn far more
per step than SGD with the soft triplet, and ResNet-18 at half width is 3x faster a step
on a CPU with better recall in the same minutes (benchmarks/RESULTS.md).

"paper" is google/tirg's default: SGD at 1e-2 decayed x0.1 every 50,000 steps for
160,000 steps, the loss left to the dataset as in the paper. It starts ResNet-18 as
torchvision (google/tirg's backbone) does, with the last BatchNorm of each residual
block at weight 1; timm zeroes it by default (zero_init_last), so every block starts as
the identity, which cost 12 points of recall@1 at 1,000 steps from random
initialisation on CSS-style data (benchmarks/RESULTS.md, section 6).
"""

from __future__ import annotations

from compose_retrieval import ComponentSpec, ModelSpec, hookimpl
from compose_retrieval.recipes import Recipe

TORCHVISION_INIT = {"model_kwargs": {"zero_init_last": False}}


def _model(**image_options) -> ModelSpec:
    return ModelSpec(
        combiner=ComponentSpec("tirg"),
        image_encoder=ComponentSpec("timm", {"model_name": "resnet18", **image_options}),
        text_encoder=ComponentSpec("lstm"),
        embed_dim=512,
    )


CPU = Recipe(
    description="minutes on a laptop CPU: AdamW, cosine schedule, batch softmax, ResNet-18 at half width",
    model=_model(model_kwargs={"channels": [32, 64, 128, 256]}),
    dataset="css-synthetic",
    training=dict(optimizer="adamw", lr=1e-3, weight_decay=1e-6, batch_size=32, steps=1200,
                  lr_schedule="cosine", warmup_steps=50, loss="batch_softmax"),
    fallback_loss="batch_softmax",
    default=True,
)

PAPER = Recipe(
    description="google/tirg's: SGD 1e-2, x0.1 every 50k of 160k steps, the dataset's loss, ResNet-18",
    model=_model(**TORCHVISION_INIT),
    dataset="css-synthetic",
    training=dict(optimizer="sgd", lr=1e-2, momentum=0.9, weight_decay=1e-6, batch_size=32, steps=160_000,
                  lr_schedule="step", lr_decay_every=50_000, lr_decay=0.1, warmup_steps=0),
    fallback_loss="soft_triplet",
    backbone_init=TORCHVISION_INIT,
)


@hookimpl
def register_recipes(register):
    register("cpu", CPU, CPU.description)
    register("paper", PAPER, PAPER.description)
