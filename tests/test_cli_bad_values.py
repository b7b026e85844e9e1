"""Bad values on the command line are one line on stderr, exit code 1, never a traceback.

Each case carries the tiny model and dataset options, so one that wrongly got past
validation would still finish in seconds (and fail its assertion) instead of training
a full model.
"""

from __future__ import annotations

import json

import pytest
import torch

import compose_retrieval.cli
from compose_retrieval.checkpoint import save_checkpoint

from conftest import TINY_CLI_MODEL, TINY_DATASET, assert_one_line_error, invoke, tiny_model

TINY_DATA = [arg for key, value in TINY_DATASET.items() for arg in ("--dataset-opt", f"{key}={value}")]
TINY_TRAIN = [*TINY_CLI_MODEL, *TINY_DATA]




def _replace(args: list[str], option: str, value: str) -> list[str]:
    """``args`` with the value of ``option`` replaced."""
    args = list(args)
    args[args.index(option) + 1] = value
    return args


def _metadata_edit(path, tmp_path, name: str, **changes: str):
    """A copy of checkpoint ``path`` whose metadata fields are replaced (as tests/test_checkpoint.py _rewrite)."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata())
    meta.update(changes)
    out = tmp_path / f"{name}.safetensors"
    save_file(load_file(str(path)), str(out), metadata=meta)
    return out


def _model_edit(spec: dict, **changes) -> str:
    edited = {**spec, **changes}
    return json.dumps({k: v for k, v in edited.items() if v is not None})


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A tiny checkpoint and copies of it with malformed metadata, by name."""
    tmp_path = tmp_path_factory.mktemp("bad-checkpoints")
    good = save_checkpoint(tiny_model("tirg"), tmp_path / "good.safetensors",
                           recipe={"dataset": "css-synthetic", "dataset_options": dict(TINY_DATASET)})
    from safetensors import safe_open

    with safe_open(str(good), framework="pt") as f:
        spec = json.loads(f.metadata()["model"])
    combiner_without_name = {**spec, "combiner": {"options": {}}}
    return {
        "good": good,
        "version-abc": _metadata_edit(good, tmp_path, "version-abc", format_version="abc"),
        "model-not-json": _metadata_edit(good, tmp_path, "model-not-json", model="{not json"),
        "combiner-no-name": _metadata_edit(good, tmp_path, "combiner-no-name", model=json.dumps(combiner_without_name)),
        "embed-dim-big": _metadata_edit(good, tmp_path, "embed-dim-big", model=_model_edit(spec, embed_dim="big")),
        "extra-spec-field": _metadata_edit(good, tmp_path, "extra-spec-field", model=_model_edit(spec, colour="red")),
        "extra-metadata-field": _metadata_edit(good, tmp_path, "extra-metadata-field", surprise="1"),
    }


# (id, arguments (strings; {tmp}: a fresh folder, {file}: an existing file, {ckpt:NAME}: a checkpoint), fragments)
CASES = [
    ("embed-dim-0", ["train", *_replace(TINY_TRAIN, "--embed-dim", "0")], ["embed_dim=0", "between 1"]),
    ("embed-dim-negative", ["train", *_replace(TINY_TRAIN, "--embed-dim", "-5")], ["embed_dim=-5"]),
    ("hash-size-negative", ["train", *TINY_TRAIN, "--combiner", "param_hashing", "--combiner-opt", "hash_size=-1"],
     ["hash_size=-1", "between 1"]),
    ("relationship-hidden-0", ["train", *TINY_TRAIN, "--combiner", "relationship", "--combiner-opt", "hidden=0"],
     ["hidden=0"]),
    ("attribute-operator-rank-negative",
     ["train", *TINY_TRAIN, "--combiner", "attribute_operator", "--combiner-opt", "rank=-3"], ["rank=-3"]),
    ("mrn-blocks-0", ["train", *TINY_TRAIN, "--combiner", "mrn", "--combiner-opt", "blocks=0"], ["blocks=0"]),
    ("tirg-residual-weight-bool", ["train", *TINY_TRAIN, "--combiner", "tirg", "--combiner-opt", "residual_weight=true"],
     ["residual_weight=True", "float"]),
    ("image-size-0", ["train", *[a.replace("image_size=32", "image_size=0") for a in TINY_TRAIN]], ["image_size=0"]),
    ("skip-unreadable-no", ["train", *TINY_CLI_MODEL, "--dataset", "triplets", "--data-root", "{tmp}",
                            "--dataset-opt", "skip_unreadable=no"], ["skip_unreadable='no'", "true or false"]),
    ("device-foo", ["train", *_replace(TINY_TRAIN, "--device", "foo")], ["unknown device 'foo'"]),
    ("device-cuda", ["train", *_replace(TINY_TRAIN, "--device", "cuda")], ["no CUDA GPU"]),
    ("workers-negative", ["train", *TINY_TRAIN, "--workers", "-1"], ["num_workers=-1"]),
    ("lr-negative", ["train", *TINY_TRAIN, "--lr", "-1"], ["lr=-1"]),
    ("lr-nan", ["train", *TINY_TRAIN, "--lr", "nan"], ["lr=nan", "not a finite number"]),
    ("steps-0", ["train", *_replace(TINY_TRAIN, "--steps", "0")], ["steps=0"]),
    ("batch-size-1", ["train", *_replace(TINY_TRAIN, "--batch-size", "1")], ["batch_size=1"]),
    ("evaluate-batch-size-0", ["evaluate", "{ckpt:good}", "--device", "cpu", "--batch-size", "0"], ["batch_size=0"]),
    ("compare-seeds-0", ["compare", "--combiner", "tirg", "--seeds", "0", "--steps", "2", "--device", "cpu", *TINY_DATA,
                         "--out", "{tmp}"], ["seeds of tirg=0"]),
    ("compare-seeds-for-0", ["compare", "--combiner", "tirg", "--seeds-for", "tirg=0", "--steps", "2", "--device", "cpu",
                             *TINY_DATA, "--out", "{tmp}"], ["seeds of tirg=0"]),
    ("vit-at-32px", ["train", *_replace(TINY_TRAIN, "--backbone", "vit_tiny_patch16_224"), "--steps", "1"],
     ["vit_tiny_patch16_224", "cannot take (32, 32) images"]),
    ("run-dir-is-a-file", ["train", *TINY_TRAIN, "--run-dir", "{file}"], ["is a file, not a folder"]),
    ("evaluate-5000-char-name", ["evaluate", "x" * 5000, "--device", "cpu"], ["x" * 40]),
    ("checkpoint-version-abc", ["evaluate", "{ckpt:version-abc}", "--device", "cpu"], ["malformed format_version 'abc'"]),
    ("checkpoint-model-not-json", ["evaluate", "{ckpt:model-not-json}", "--device", "cpu"], ["'model' is not valid JSON"]),
    ("checkpoint-combiner-without-name", ["evaluate", "{ckpt:combiner-no-name}", "--device", "cpu"],
     ["combiner must be {'name'"]),
    ("checkpoint-embed-dim-big", ["evaluate", "{ckpt:embed-dim-big}", "--device", "cpu"], ["embed_dim='big'"]),
    ("checkpoint-extra-spec-field", ["evaluate", "{ckpt:extra-spec-field}", "--device", "cpu"],
     ["fields this version does not know: colour"]),
    ("checkpoint-extra-metadata-field", ["evaluate", "{ckpt:extra-metadata-field}", "--device", "cpu"],
     ["metadata fields this version does not know (surprise)"]),
]


@pytest.mark.parametrize("args, fragments", [pytest.param(a, f, id=i) for i, a, f in CASES])
def test_bad_value_is_one_line(args, fragments, tmp_path, request):
    if "cuda" in args and torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU: --device cuda is valid here")
    checkpoints = request.getfixturevalue("checkpoints") if any("{ckpt:" in a for a in args) else {}
    a_file = tmp_path / "a-file.txt"
    a_file.write_text("a user's file\n")
    fresh = tmp_path / "fresh"
    fresh.mkdir()

    def fill(arg: str) -> str:
        if arg.startswith("{ckpt:"):
            return str(checkpoints[arg[len("{ckpt:"):-1]])
        return arg.replace("{tmp}", str(fresh)).replace("{file}", str(a_file))

    args = [fill(a) for a in args]
    if args[0] == "train" and "--run-dir" not in args:
        args += ["--run-dir", str(tmp_path / "run")]
    assert_one_line_error(invoke(*args), *fragments)
    assert a_file.read_text() == "a user's file\n"
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_the_good_checkpoint_of_the_fixture_loads(checkpoints):
    """The malformed copies differ from a readable checkpoint only in the edited field."""
    from compose_retrieval.checkpoint import load_checkpoint

    model, meta = load_checkpoint(checkpoints["good"])
    assert model.spec.combiner.name == "tirg" and meta["recipe"]["dataset"] == "css-synthetic"


def test_unexpected_exception_is_one_line_and_debug_shows_it(tmp_path, monkeypatch):
    """A bug (not a library error) is one line that says how to see the traceback; --debug lets it propagate."""
    import compose_retrieval.cli.common
    import compose_retrieval.training

    def broken(*args, **kwargs):
        raise RuntimeError("something broke\nin two lines")

    monkeypatch.setattr(compose_retrieval.training, "train", broken)
    monkeypatch.delenv(compose_retrieval.cli.common.DEBUG_ENV, raising=False)
    line = assert_one_line_error(invoke("train", *TINY_TRAIN, "--run-dir", tmp_path / "a"),
                                 "unexpected RuntimeError: something broke in two lines",
                                 "run with --debug for the traceback")
    assert line.endswith("(run with --debug for the traceback)")

    result = invoke("--debug", "train", *TINY_TRAIN, "--run-dir", tmp_path / "b")
    assert result.exit_code != 0
    assert isinstance(result.exception, RuntimeError) and "something broke" in str(result.exception)
    # --debug is per invocation: the next command without it is one line again
    assert_one_line_error(invoke("train", *TINY_TRAIN, "--run-dir", tmp_path / "c"), "run with --debug")
