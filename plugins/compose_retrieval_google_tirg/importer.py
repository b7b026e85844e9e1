"""Read a google/tirg checkpoint without unpickling code, map its parameters onto ours, save it for the zoo.

google/tirg (main.py) saves ``{"it": step, "opt": argparse.Namespace, "model_state_dict": ...}``
with ``torch.save``. Its model (img_text_composition_models.py, E = embed_dim):

    img_model.*                       torchvision ResNet-18, fc = Sequential(Linear(512, E))
    text_model.embedding_layer        Embedding(V, E), ids from SimpleVocab (below)
    text_model.lstm                   LSTM(E, E), sequence-first (same parameters as ours)
    text_model.fc_output.1            Linear(E, E) after Dropout(0.1)
    normalization_layer.norm_s        the learnable scale, shape [1]
    a                                 [gate weight, residual weight, unused, unused]
    tirg:           gated_feature_composer = (concat, BN1d, ReLU, Linear)
                    res_info_composer = (concat, BN1d, ReLU, Linear, ReLU, Linear)
    tirg_lastconv:  mod2d_gate, mod2d = (BN2d, Conv3x3, ReLU, Conv3x3)

SimpleVocab numbers words by first appearance in the training texts (not sorted), with
'<UNK>' = 0; the checkpoint does not store it, so the importer rebuilds it from the
dataset: the lstm text encoder, built through the registry with the options
``tokenizer="ascii"`` (google/tirg's tokenizer, which the saved vocabulary records so that
the import tokenises as google/tirg did; our default for new training is "unicode") and
``vocabulary_order="first_seen"``, is fitted on ``dataset.train_texts()``. For css the texts' order is
the order of the file's modifications, so the rebuild is exact. For fashion200k and
mitstates google/tirg read the label files / folders in os.listdir order, which depends
on the authors' file system and is lost; this project reads them in sorted order, so
word ids can differ from the authors' run (the likely cause of the "R@1 2.7 instead of
16" report in google/tirg's README): evaluate the imported model before trusting it.
"""

from __future__ import annotations

import argparse
import contextlib
import os
from pathlib import Path

import torch
from torch import Tensor

from compose_retrieval import registry
from compose_retrieval.checkpoint import state_mismatches
from compose_retrieval.errors import CheckpointError, UnknownNameError
from compose_retrieval.model import ComponentSpec, ComposedRetrievalModel, ModelSpec, build_model
from compose_retrieval.zoo import cache_dir as default_cache_dir
from compose_retrieval.zoo import save_pretrained, sha256_of

URL = "https://storage.googleapis.com/image_retrieval_css/pretrained_models/checkpoint_{}.pth"
RELEASES = {  # our dataset plugin -> (zoo name, the authors' file)
    "fashion200k": ("tirg-fashion200k", URL.format("fashion200k")),
    "mitstates": ("tirg-mitstates", URL.format("mitstates")),
    "css": ("tirg-css3d", URL.format("css3d")),
}

# google/tirg prefix -> ours; the first match wins (mod2d_gate before mod2d)
_PREFIXES = (
    ("img_model.fc.0.", "image_encoder.fc."),
    ("img_model.", "image_encoder.body."),
    ("text_model.embedding_layer.", "text_encoder.embedding."),
    ("text_model.lstm.", "text_encoder.lstm."),
    ("text_model.fc_output.1.", "text_encoder.fc."),
    ("gated_feature_composer.1.", "combiner.gate.0."),
    ("gated_feature_composer.3.", "combiner.gate.2."),
    ("res_info_composer.1.", "combiner.residual.0."),
    ("res_info_composer.3.", "combiner.residual.2."),
    ("res_info_composer.5.", "combiner.residual.4."),
    ("mod2d_gate.", "combiner.gate."),
    ("mod2d.", "combiner.residual."),
)


def read_original(path: str | os.PathLike) -> dict[str, Tensor]:
    """The state dict of a google/tirg checkpoint, read with torch.load(weights_only=True).

    Only tensors, plain containers and argparse.Namespace (the saved command-line
    options) are allowed; anything else is refused, never run.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} not found; download it first (see `compose-retrieval zoo info tirg-fashion200k`)")
    if hasattr(torch.serialization, "safe_globals"):
        allowed = torch.serialization.safe_globals([argparse.Namespace])
    else:  # torch 2.4 has only the process-wide allow-list
        torch.serialization.add_safe_globals([argparse.Namespace])
        allowed = contextlib.nullcontext()
    try:
        with allowed:
            saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # the restricted unpickler and the zip reader raise many kinds
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CheckpointError(
            f"cannot read {path} as a weights-only PyTorch file ({reason}); it is not a google/tirg checkpoint, "
            "or it holds objects that would have to run code to load, which this importer refuses"
        ) from None
    state = saved.get("model_state_dict", saved) if isinstance(saved, dict) else None
    if not isinstance(state, dict) or not isinstance(state.get("img_model.fc.0.weight"), Tensor):
        raise CheckpointError(f"{path} holds no google/tirg model (no 'model_state_dict' with 'img_model.fc.0.weight')")
    return state


def combiner_of(state: dict[str, Tensor], path: str | os.PathLike = "the checkpoint") -> str:
    if any(k.startswith("mod2d") for k in state):
        return "tirg_lastconv"
    if any(k.startswith("gated_feature_composer.") for k in state):
        return "tirg"
    heads = sorted({k.split(".")[0] for k in state} - {"img_model", "text_model", "normalization_layer", "a"})
    raise CheckpointError(f"{path} is not a TIRG model (its composer is {', '.join(heads) or 'missing'}); only tirg and tirg_lastconv import")


def map_state(state: dict[str, Tensor]) -> dict[str, tuple[str, Tensor]]:
    """Our parameter name -> (google/tirg's name, the tensor)."""
    mapped, unknown = {}, []
    for key, value in state.items():
        if key == "a":
            mapped["combiner.weights"] = (key, value[:2])  # a[2:] is never used by google/tirg's TIRG
        elif key == "normalization_layer.norm_s":
            mapped["normalization.scale"] = (key, value.reshape(()))
        else:
            ours = next((new + key[len(old):] for old, new in _PREFIXES if key.startswith(old)), None)
            if ours is None:
                unknown.append(key)
            else:
                mapped[ours] = (key, value)
    if unknown:
        raise CheckpointError(f"the checkpoint has parameters the TIRG importer does not know: {', '.join(unknown[:5])}")
    return mapped


def original_spec(state: dict[str, Tensor], combiner: str) -> ModelSpec:
    """The architecture of google/tirg in our components: timm's ResNet-18 (torchvision's layout), the LSTM, TIRG."""
    embed_dim = int(state["img_model.fc.0.weight"].shape[0])
    return ModelSpec(
        combiner=ComponentSpec(combiner),
        image_encoder=ComponentSpec("timm", {"model_name": "resnet18"}),
        text_encoder=ComponentSpec("lstm", {
            "word_dim": embed_dim, "hidden_dim": embed_dim, "dropout": 0.1,
            "tokenizer": "ascii", "vocabulary_order": "first_seen",  # SimpleVocab's words and ids
        }),
        embed_dim=embed_dim,
    )


def load_into(model: ComposedRetrievalModel, mapped: dict[str, tuple[str, Tensor]]) -> None:
    """Copy the mapped tensors in, strictly: a missing, extra or differently shaped parameter is named (by google/tirg's name)."""
    ours = model.state_dict()
    state = {k: tensor for k, (_, tensor) in mapped.items()}
    # torch < 0.4.1 saved no BatchNorm step counters; they do not affect evaluation
    state.update({k: v for k, v in ours.items() if k.endswith("num_batches_tracked") and k not in state})
    original = {k: orig for k, (orig, _) in mapped.items()}
    parts = state_mismatches(ours, state, lambda k: original.get(k, k))
    if parts:
        raise CheckpointError(f"the checkpoint does not fit google/tirg's model as rebuilt here: {'; '.join(parts)}")
    model.load_state_dict(state, strict=True)


def import_tirg(
    path: str | os.PathLike,
    dataset: str,
    data_root: str | os.PathLike,
    *,
    name: str | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> Path:
    """Convert google/tirg's checkpoint ``path`` (trained on ``dataset``) into ``<cache>/<name>.safetensors``."""
    if dataset not in RELEASES:
        raise UnknownNameError("dataset for import-tirg", dataset, [d for d in RELEASES if d[:2] == dataset[:2]], list(RELEASES))
    name = name or RELEASES[dataset][0]
    state = read_original(path)
    combiner = combiner_of(state, path)
    data = registry.create("dataset", dataset, data_root=str(data_root))
    model = build_model(original_spec(state, combiner), data.preprocessing, for_checkpoint=True)
    model.text_encoder.fit(data.train_texts())  # SimpleVocab's ids: the spec asks for first-seen order, ascii words
    rows = state.get("text_model.embedding_layer.weight")
    words = model.state_dict()["text_encoder.embedding.weight"].shape[0]
    if rows is not None and rows.shape[0] != words:
        raise CheckpointError(
            f"{path} embeds {rows.shape[0]} words but the {dataset} training texts under {data_root} give "
            f"{words} (with the unknown word); import with the same training split the checkpoint was trained on"
        )
    load_into(model, map_state(state))
    out = default_cache_dir(cache_dir) / f"{name}.safetensors"
    out.parent.mkdir(parents=True, exist_ok=True)
    recipe = {
        "imported_from": str(path), "sha256": sha256_of(path), "release": RELEASES[dataset][1],
        "dataset": dataset, "data_root": str(Path(data_root).resolve()),
    }
    return save_pretrained(model.eval(), out, recipe=recipe)
