from __future__ import annotations

from typing import Annotated

import torch
from torch import Tensor, nn

from compose_retrieval import Combiner, ImageFeatures, TextFeatures
from compose_retrieval.options import Range


class AttributeOperator(Combiner):
    """The text becomes a d x d operator applied to the image embedding: phi_xt = T(t) phi_x.

    Nagarajan and Grauman, "Attributes as Operators", ECCV 2018, as the TIRG paper
    adapts it to free text: a linear map predicts the operator from the text vector.
    T(t) = I + Delta(t), with Delta's predictor initialised near zero, so training
    starts from a working image-to-image system. Option ``rank``: 0 (default) predicts
    the full d x d matrix as in the paper (d*d*text_dim weights: 134M at d = 512);
    r > 0 predicts Delta = U(t) V(t)^T with U, V of size d x r, a lighter variant.
    ``init_scale``: the initial size of Delta(t) x relative to x.
    """

    def __init__(
        self, image_dim: int, text_dim: int, embed_dim: int, *,
        rank: Annotated[int, Range(0, 4096)] = 0, init_scale: Annotated[float, Range(0, 100)] = 0.1,
    ):
        super().__init__()
        self.dim, self.rank = image_dim, rank
        outputs = image_dim * image_dim if rank == 0 else 2 * image_dim * rank
        self.predict = nn.Linear(text_dim, outputs)
        # ||Delta(t) x|| starts near init_scale * ||x|| for unit-variance inputs, whatever the sizes:
        # full rank, Delta x is linear in the weights (std s * sqrt(text_dim * d)); low rank,
        # U (V^T x) is quadratic in them (std s^2 * text_dim * sqrt(d * r))
        if rank == 0:
            std = init_scale / (text_dim * image_dim) ** 0.5
        else:
            std = (init_scale / (text_dim * (image_dim * rank) ** 0.5)) ** 0.5
        nn.init.normal_(self.predict.weight, std=std)
        nn.init.zeros_(self.predict.bias)
        self.out = nn.Identity() if image_dim == embed_dim else nn.Linear(image_dim, embed_dim)

    def forward(self, image: ImageFeatures, text: TextFeatures) -> Tensor:
        x = image.pooled
        p = self.predict(text.sentence)
        if self.rank == 0:
            delta_x = torch.bmm(p.view(-1, self.dim, self.dim), x[:, :, None]).squeeze(2)
        else:
            u, v = p.view(-1, 2, self.dim, self.rank).unbind(1)
            delta_x = torch.bmm(u, torch.bmm(v.transpose(1, 2), x[:, :, None])).squeeze(2)
        return self.out(x + delta_x)

    def pair_prototypes(self, objects: ImageFeatures, attributes: TextFeatures) -> Tensor:
        """Attributes as Operators' own pair scorer: the attribute's operator applied to the object.

        In the paper a pair (a, o) is the point relu(A_a e_o), e_o a learnt object
        embedding, and an image scores -||g(x) - relu(A_a e_o)||^2. Here e_o is the mean
        image vector of the object's training images with another attribute (``objects``,
        given by the engine) and the point T(a) e_o; images score by cosine to it, which
        ranks as the negative squared distance of unit vectors does.
        """
        return self(objects, attributes)
