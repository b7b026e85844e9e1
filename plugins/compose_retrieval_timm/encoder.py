from __future__ import annotations

import difflib

import torch
from torch import Tensor, nn

from compose_retrieval.errors import OptionError, UnknownNameError
from compose_retrieval import ImageEncoder


# timm.create_model arguments whose names say they read files or fetch configurations or weights
_READING_KWARGS = ("path", "file", "url", "cfg", "dir", "cache", "hub", "pretrained")


def _maps_from_intermediates(body: nn.Module) -> bool:
    """Whether timm's ``forward_intermediates`` gives this model's feature map.

    These families' ``forward_features`` is "the blocks, then the final norm", so the
    last block's output, normed, with the prefix (class, register) tokens dropped and
    arranged on the patch grid, is exactly what we took from ``forward_features`` by hand
    (tests/test_dependency_parity.py), and it also arranges grids that are not square
    and Swin's channels-last maps. Left out on purpose: XCiT, whose class-attention
    layers after the last block change the patch tokens too (its map would differ), and
    families not checked; those, and every CNN, keep ``forward_features``.
    """
    from timm.models import (beit, cait, eva, mvitv2, swin_transformer, swin_transformer_v2, tnt, vision_transformer,
                             vision_transformer_relpos)

    families = (
        vision_transformer.VisionTransformer, eva.Eva, beit.Beit, cait.Cait, vision_transformer_relpos.VisionTransformerRelPos,
        tnt.TNT, mvitv2.MultiScaleVit, swin_transformer.SwinTransformer, swin_transformer_v2.SwinTransformerV2,
    )
    return isinstance(body, families)


class TimmImageEncoder(ImageEncoder):
    """Any timm backbone (default ResNet-18): its last feature map, average-pooled and projected.

    Options: ``model_name`` (any name of ``timm.list_models()``), ``pretrained``
    (ImageNet weights; needs them cached or a network), ``model_kwargs`` (passed to
    ``timm.create_model``, e.g. ``{"channels": [32, 64, 128, 256]}`` for a narrow ResNet). A transformer
    backbone's patch tokens are arranged into a map (timm's ``forward_intermediates``), so
    map-editing combiners work on it too.
    """

    main_option = "model_name"

    def __init__(
        self, out_dim: int = 512, model_name: str = "resnet18", pretrained: bool = False, model_kwargs: dict | None = None
    ):
        super().__init__()
        import timm  # here, not at module level: listing plugins should not import timm

        if not timm.is_model(model_name):
            close = difflib.get_close_matches(model_name, timm.list_models(), n=3)
            raise UnknownNameError("timm model", model_name, close, ["see timm.list_models()"])
        self.body = timm.create_model(model_name, pretrained=pretrained, num_classes=0, global_pool="", **(model_kwargs or {}))
        self.model_name = model_name
        self.map_channels = self.body.num_features
        self.out_dim = out_dim
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(self.map_channels, out_dim)
        self._prefix_tokens = getattr(self.body, "num_prefix_tokens", 0)
        self._from_intermediates = _maps_from_intermediates(self.body)

    @classmethod
    def options_for_loading(cls, options: dict) -> dict:
        """No pretrained weights (the checkpoint holds the trained ones), and no model_kwargs that make timm read
        a file or fetch a configuration: a checkpoint's options never choose what is read."""
        reads = sorted(k for k in options.get("model_kwargs") or {} if any(w in k.lower() for w in _READING_KWARGS))
        if reads:
            raise OptionError(f"timm model_kwargs {', '.join(reads)} would make timm read files or fetch weights; "
                              "a checkpoint may not set them")
        return {**options, "pretrained": False}

    def features(self, images: Tensor) -> Tensor:
        try:
            if self._from_intermediates:  # (B, C, h, w): the last block, normed, prefix tokens dropped
                return self.body.forward_intermediates(
                    images, indices=1, norm=True, output_fmt="NCHW", intermediates_only=True
                )[-1]
            x = self.body.forward_features(images)
        except AssertionError as exc:  # timm's input checks (a ViT built for 224 px given 64 px images)
            raise OptionError(f"timm model {self.model_name!r} cannot take {tuple(images.shape[-2:])} images ({exc}); "
                              "choose a backbone for that size or change the dataset's image_size") from None
        if x.dim() == 3:  # (B, N, C) tokens of another token model -> (B, C, h, w) on a square grid
            x = x[:, self._prefix_tokens :]
            side = int(x.shape[1] ** 0.5)
            if side * side != x.shape[1]:
                raise OptionError(f"timm model {self.model_name!r}: cannot arrange {x.shape[1]} patch tokens into a square feature map; choose a CNN or a ViT without extra tokens")
            x = x.transpose(1, 2).reshape(x.shape[0], x.shape[2], side, side)
        return x

    def feature_blocks(self) -> list[tuple[nn.Module, int]]:
        """The stages of a CNN. A token model (a patch embedding: ViT, Swin, ...) exposes none: its blocks output
        tokens, not (B, C, H, W) maps, so a combiner that conditions maps (film) refuses it up front."""
        if hasattr(self.body, "patch_embed"):
            return []
        info = getattr(self.body, "feature_info", None) or []
        return [(self.body.get_submodule(i["module"]), i["num_chs"]) for i in info if i.get("module")]

    def backbone(self) -> nn.Module:
        return self.body

    def head(self, feature_map: Tensor) -> Tensor:
        return self.fc(torch.flatten(self.pool(feature_map), 1))
