"""Hostile checkpoints: whatever a file says, loading it is a one-line CheckpointError or a usable model.

A checkpoint is outside data. These tests hand load_checkpoint (and evaluation, and the
CLI) files made to hurt: non-finite or wrongly typed weights, damaged bytes, options that
would make a component read a file or unpickle one, sizes that would exhaust memory,
recorded data roots, and a few hundred random mutations of a valid file's metadata.
"""

from __future__ import annotations

import copy
import json
import pickle
import random
import resource
import struct
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import compose_retrieval
from compose_retrieval import CheckpointError, hookimpl, load_checkpoint, save_checkpoint
from compose_retrieval.checkpoint import tensors_sha256
from compose_retrieval.preprocessing import Preprocessing
from compose_retrieval_combiners.concat import Concat

from conftest import TINY_DATASET, invoke, tiny_model, tiny_spec


# ------------------------------------------------------------------ helpers


def _rewrite(path, tmp_path, *, metadata=None, state=None, rehash=True) -> Path:
    """A copy of checkpoint ``path`` with metadata fields (None: deleted) or tensors (None: deleted) replaced.

    ``rehash``: record the checksum of the new tensors, as someone crafting the file would,
    so that the check under test is the one that answers, not the checksum.
    """
    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata())
    tensors = {**load_file(str(path)), **(state or {})}
    tensors = {k: v for k, v in tensors.items() if v is not None}
    meta.update(metadata or {})
    if rehash and state:
        meta["tensor_sha256"] = tensors_sha256(tensors)
    meta = {k: v for k, v in meta.items() if v is not None}
    out = tmp_path / f"edited-{len(list(tmp_path.iterdir()))}.safetensors"
    save_file(tensors, str(out), metadata=meta)
    return out


def _error(path, **kwargs) -> str:
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def _cli_error(*args) -> str:
    """Run the CLI; it must exit 1 with one line on stderr and no traceback. Returns that line."""
    result = invoke(*args)
    assert result.exit_code == 1, (result.exit_code, result.output)
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), result.exception
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.output and "Traceback" not in result.stderr
    return lines[0]


class _Marker:
    """A pickle whose loading creates ``marker`` (open(marker, "w")): proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def _evil_pickle(path: Path, marker: Path) -> Path:
    path.write_bytes(pickle.dumps(_Marker(marker)))
    # the payload works: unpickling it elsewhere does create a file
    probe = path.parent / f"probe-{path.name}"
    pickle.loads(pickle.dumps(_Marker(probe))).close()
    assert probe.exists()
    probe.unlink()
    return path


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A valid tiny tirg checkpoint (with preprocessing, recipe and metrics) that loads."""
    model = tiny_model("tirg").eval()
    model.preprocessing = Preprocessing(32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    path = tmp_path_factory.mktemp("base") / "model.safetensors"
    save_checkpoint(model, path, recipe={"dataset": "css-synthetic", "dataset_options": dict(TINY_DATASET)},
                    metrics={"recall@1": 0.5, "protocol": "default"})
    load_checkpoint(path)
    return path


# ------------------------------------------------------------------ 1. non-finite weights


def test_nan_weights_and_an_infinite_scale_are_refused(base, tmp_path):
    weight = load_file(str(base))["combiner.gate.2.weight"]
    nan = _rewrite(base, tmp_path, state={"combiner.gate.2.weight": torch.full_like(weight, float("nan"))})
    message = _error(nan)
    assert "non-finite" in message and "combiner 'tirg' gate.2.weight" in message

    one_nan = weight.clone()
    one_nan[3, 5] = float("nan")
    assert "non-finite" in _error(_rewrite(base, tmp_path, state={"combiner.gate.2.weight": one_nan}))

    inf_scale = _rewrite(base, tmp_path, state={"normalization.scale": torch.tensor(float("inf"))})
    message = _error(inf_scale)
    assert "non-finite" in message and "normalization.scale" in message

    line = _cli_error("evaluate", inf_scale, "--device", "cpu")
    assert "non-finite" in line and "normalization.scale" in line
    assert "non-finite" in _cli_error("evaluate", nan, "--device", "cpu")


def test_a_float64_weight_that_overflows_float32_is_refused(base, tmp_path):
    """1e300 is finite as stored (float64) but inf in the float32 model: judged as the model will hold it."""
    weight = load_file(str(base))["combiner.gate.2.weight"]
    huge = _rewrite(base, tmp_path, state={"combiner.gate.2.weight": weight.double().fill_(1e300)})
    message = _error(huge)
    assert "non-finite" in message and "combiner 'tirg' gate.2.weight" in message
    # a float64 file of ordinary values still loads, cast to the model's float32
    model, _ = load_checkpoint(_rewrite(base, tmp_path, state={"combiner.gate.2.weight": weight.double()}))
    assert model.combiner.gate[2].weight.dtype == torch.float32
    assert torch.equal(model.combiner.gate[2].weight, weight)


@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.float8_e5m2, torch.bfloat16])
def test_an_unusual_float_format_loads_or_is_refused_but_never_crashes(base, tmp_path, dtype):
    weight = load_file(str(base))["combiner.gate.2.weight"]
    path = _rewrite(base, tmp_path, state={"combiner.gate.2.weight": weight.to(dtype)})
    model, _ = load_checkpoint(path)  # torch casts them; isfinite is judged on the model's float32
    assert model.combiner.gate[2].weight.dtype == torch.float32
    assert bool(torch.isfinite(model.combiner.gate[2].weight).all())
    nan = torch.full_like(weight, float("nan")).to(dtype)
    assert "non-finite" in _error(_rewrite(base, tmp_path, state={"combiner.gate.2.weight": nan}))


# ------------------------------------------------------------------ 2. wrong dtypes


@pytest.mark.parametrize("dtype,stored", [(torch.int64, "I64"), (torch.bool, "BOOL"), (torch.uint8, "U8"),
                                          (torch.int32, "I32"), (torch.complex64, "C64")])
def test_integer_and_bool_tensors_where_float_weights_belong_are_refused(base, tmp_path, dtype, stored):
    weight = load_file(str(base))["combiner.gate.2.weight"]
    path = _rewrite(base, tmp_path, state={"combiner.gate.2.weight": torch.ones(weight.shape, dtype=dtype)})
    message = _error(path)
    assert f"wrong dtype combiner 'tirg' gate.2.weight ({stored} in the file, floating point in the model)" in message


def test_a_float_counter_is_refused_and_an_integer_of_another_width_loads(base, tmp_path):
    key = "combiner.gate.0.num_batches_tracked"
    message = _error(_rewrite(base, tmp_path, state={key: torch.tensor(3.0)}))
    assert "wrong dtype combiner 'tirg' gate.0.num_batches_tracked (F32 in the file, integer in the model)" in message
    model, _ = load_checkpoint(_rewrite(base, tmp_path, state={key: torch.tensor(3, dtype=torch.int32)}))
    assert model.state_dict()[key].dtype == torch.int64 and int(model.state_dict()[key]) == 3


def test_a_float16_file_loads_into_the_float32_model(tmp_path):
    model = tiny_model("tirg").eval()
    path = save_checkpoint(model, tmp_path / "half.safetensors", dtype=torch.float16)
    with safe_open(str(path), framework="pt") as f:
        assert f.get_slice("combiner.gate.2.weight").get_dtype() == "F16"
    loaded, _ = load_checkpoint(path)
    for key, value in loaded.state_dict().items():
        assert value.dtype == model.state_dict()[key].dtype
        assert torch.allclose(value, model.state_dict()[key].to(torch.float16).to(value.dtype))


# ------------------------------------------------------------------ 3. damaged bytes, missing checksum


def _data_start(raw: bytes) -> int:
    (n,) = struct.unpack("<Q", raw[:8])
    return 8 + n


@pytest.mark.parametrize("where", ["end", "middle", "first"])
def test_a_flipped_byte_in_the_tensor_data_is_damage(base, tmp_path, where):
    raw = bytearray(base.read_bytes())
    start = _data_start(raw)
    offset = {"end": len(raw) - 5, "middle": (start + len(raw)) // 2, "first": start}[where]
    raw[offset] ^= 0x10
    damaged = tmp_path / "damaged.safetensors"
    damaged.write_bytes(bytes(raw))
    message = _error(damaged)
    assert "is damaged" in message and "checksum" in message


def test_format_2_needs_its_checksum_and_format_1_loads_without(base, tmp_path):
    message = _error(_rewrite(base, tmp_path, metadata={"tensor_sha256": None}))
    assert "no checksum of its tensors (tensor_sha256)" in message
    old = _rewrite(base, tmp_path, metadata={"tensor_sha256": None, "format_version": "1"})
    model, meta = load_checkpoint(old)  # written before the checksum was recorded
    assert meta["format_version"] == 1 and meta["tensor_sha256"] is None
    assert model.spec.combiner.name == "tirg"
    # an old file that does record a checksum is still held to it
    message = _error(_rewrite(base, tmp_path, metadata={"tensor_sha256": "0" * 64, "format_version": "1"}))
    assert "is damaged" in message


@pytest.mark.parametrize("cut", [0, 4, 8, 40, -1, -100])
def test_a_truncated_file_is_not_a_checkpoint(base, tmp_path, cut):
    raw = base.read_bytes()
    short = tmp_path / "short.safetensors"
    short.write_bytes(raw[:cut] if cut >= 0 else raw[:cut])
    message = _error(short)
    assert "not a readable safetensors checkpoint" in message


def test_a_header_claiming_a_huge_length_or_broken_json_is_not_a_checkpoint(base, tmp_path):
    raw = base.read_bytes()
    for i, header in enumerate([struct.pack("<Q", 2**63) + raw[8:], struct.pack("<Q", len(raw)) + raw[8:],
                                raw[:8] + b"[" + raw[9:], raw[:8] + raw[8:40].replace(b'"', b"'") + raw[40:]]):
        path = tmp_path / f"bad-{i}.safetensors"
        path.write_bytes(header)
        assert "not a readable safetensors checkpoint" in _error(path)


# ------------------------------------------------------------------ 4. options that read files


def _with_model(base, tmp_path, edit) -> Path:
    with safe_open(str(base), framework="pt") as f:
        model = json.loads(f.metadata()["model"])
    edit(model)
    return _rewrite(base, tmp_path, metadata={"model": json.dumps(model)})


@pytest.mark.parametrize("model_kwargs", [
    {"checkpoint_path": "evil.pth"},
    {"Checkpoint_Path": "evil.pth"},
    {"pretrained_cfg_overlay": {"file": "evil.pth"}},
    {"pretrained_cfg": {"file": "evil.pth", "source": "file"}},
    {"cache_dir": "cache"},
    {"checkpoint_path": "./evil.pth"},
    {"checkpoint_path": "/tmp/evil.pth"},
])
@pytest.mark.parametrize("pretrained", [False, True])
def test_timm_model_kwargs_that_read_a_file_never_run_its_pickle(base, tmp_path, monkeypatch, model_kwargs, pretrained):
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "pwned"
    _evil_pickle(tmp_path / "evil.pth", marker)

    def edit(model):
        model["image_encoder"]["options"].update(model_kwargs=model_kwargs, pretrained=pretrained)

    message = _error(_with_model(base, tmp_path, edit))
    assert ("a checkpoint may not set them" in message and "would make timm read files" in message) or \
        "a checkpoint may not choose files to read" in message
    assert not marker.exists()


@pytest.mark.parametrize("model_name", ["hf-hub:evil/model", "hf_hub:evil/model", "local-dir:/tmp/evil",
                                        "/tmp/evil", "timm/resnet18.a1_in1k:x"])
def test_a_timm_model_name_that_names_a_place_is_refused(base, tmp_path, model_name):
    message = _error(_with_model(base, tmp_path, lambda m: m["image_encoder"]["options"].update(model_name=model_name)))
    assert "a checkpoint may not choose files to read" in message
    assert "image encoder 'timm' option 'model_name'" in message


class _Labelled(Concat):
    """A combiner with free-form options, as a third-party plugin might declare them."""

    def __init__(self, image_dim, text_dim, embed_dim, *, label: str = "plain", extra: dict | None = None,
                 names: list | None = None):
        super().__init__(image_dim, text_dim, embed_dim)


class _LabelledPlugin:
    @hookimpl
    def register_combiners(self, register):
        register("labelled_for_test", _Labelled)


@pytest.mark.parametrize("options,found", [
    ({"label": "/etc/passwd"}, "/etc/passwd"),
    ({"label": "http://x"}, "http://x"),
    ({"label": "~/.ssh/id_rsa"}, "~/.ssh/id_rsa"),
    ({"label": "..\\secrets"}, "..\\secrets"),
    ({"label": "C:evil"}, "C:evil"),
    ({"extra": {"deep": ["ok", {"file": "s3://bucket/key"}]}}, "s3://bucket/key"),
    ({"extra": {"./relative": 1}}, "./relative"),
    ({"names": ["a", "b", "file:///etc/shadow"]}, "file:///etc/shadow"),
])
def test_a_string_option_that_looks_like_a_path_or_url_is_refused(tmp_path, clean_registry, options, found):
    compose_retrieval.register_plugin(_LabelledPlugin(), name="labelled")
    path = save_checkpoint(compose_retrieval.build_model(tiny_spec("labelled_for_test", **options)),
                           tmp_path / "labelled.safetensors")  # a user may give these; a checkpoint may not
    message = _error(path)
    assert "a checkpoint may not choose files to read" in message
    assert f"combiner 'labelled_for_test' option {next(iter(options))!r} holds {found!r}" in message
    plain = save_checkpoint(compose_retrieval.build_model(tiny_spec("labelled_for_test", label="just words", names=["a"])),
                            tmp_path / "plain.safetensors")
    assert load_checkpoint(plain)[0].spec.combiner.options["label"] == "just words"


def test_only_a_declared_path_option_may_hold_a_path():
    from compose_retrieval_transformers.encoder import TransformersTextEncoder
    from compose_retrieval_timm.encoder import TimmImageEncoder
    from compose_retrieval_lstm.encoder import LSTMTextEncoder

    assert "model_name" in TransformersTextEncoder.path_options
    assert TimmImageEncoder.path_options == () and LSTMTextEncoder.path_options == ()


# ------------------------------------------------------------------ 5. absurd sizes


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def test_a_huge_embed_dim_is_refused_before_any_allocation(base, tmp_path):
    path = _with_model(base, tmp_path, lambda m: m.update(embed_dim=60000))  # tirg's Linear(2d, 2d): ~57 GB
    before, start = _peak_rss_mb(), time.perf_counter()
    message = _error(path)
    assert time.perf_counter() - start < 10 and _peak_rss_mb() - before < 500
    assert "does not match the model it describes" in message and "shape mismatch" in message

    message = _error(_with_model(base, tmp_path, lambda m: m.update(embed_dim=10**9)))
    assert "embed_dim=1000000000 must be between 1 and 65536" in message


def test_a_huge_lstm_with_a_small_vocabulary_is_refused_before_any_allocation(base, tmp_path):
    def edit(model):
        model["text_encoder"]["options"].update(hidden_dim=16384, word_dim=16384)

    with safe_open(str(base), framework="pt") as f:
        extra = json.loads(f.metadata()["extra_state"])
    extra["text_encoder"]["vocabulary"] = [f"w{i}" for i in range(10)]
    path = _with_model(base, tmp_path, edit)
    path = _rewrite(path, tmp_path, metadata={"extra_state": json.dumps(extra)})
    before, start = _peak_rss_mb(), time.perf_counter()
    message = _error(path)  # LSTM(16384, 16384) alone would be 4 GB
    assert time.perf_counter() - start < 10 and _peak_rss_mb() - before < 500
    assert "shape mismatch text_encoder 'lstm'" in message

    message = _error(_with_model(base, tmp_path, lambda m: m["text_encoder"]["options"].update(hidden_dim=10**6)))
    assert "hidden_dim=1000000 must be between 1 and 16384" in message


# ------------------------------------------------------------------ 6. evaluation reads no path from the checkpoint


def test_evaluation_never_reads_the_data_root_a_checkpoint_records(tmp_path, monkeypatch):
    from compose_retrieval.evaluation import evaluate_checkpoint
    from compose_retrieval_css_synthetic.cssfiles import DATA_FILE

    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "pwned"
    evil_root = tmp_path / "evil-css"
    evil_root.mkdir()
    _evil_pickle(evil_root / DATA_FILE, marker)
    path = save_checkpoint(tiny_model("tirg"), tmp_path / "model.safetensors",
                           recipe={"dataset": "css", "data_root": str(evil_root)})
    with pytest.raises(CheckpointError) as info:
        evaluate_checkpoint(path, device="cpu")
    message = str(info.value)
    assert "\n" not in message and "give --data-root DIR" in message and str(evil_root) in message
    assert not marker.exists()
    assert "give --data-root DIR" in _cli_error("evaluate", path, "--device", "cpu")
    assert not marker.exists()

    # nor through the dataset options it records
    for options in ({"data_root": str(evil_root)}, {"data_root": "evil-css"}):
        sneaky = save_checkpoint(tiny_model("tirg"), tmp_path / "sneaky.safetensors",
                                 recipe={"dataset": "css", "dataset_options": options})
        with pytest.raises(CheckpointError) as info:
            evaluate_checkpoint(sneaky, device="cpu")
        assert "\n" not in str(info.value) and "data_root" in str(info.value)
        assert not marker.exists()


# ------------------------------------------------------------------ 7. fuzzing the metadata

_VALUES: list[Any] = [
    None, True, False, -1, 0, 1, 0.5, 1e9, 1e308, -1e308, 10**30, "", "x" * 5000, "/etc/passwd", "unicode", "ascii",
    "tirg", [], {}, [1, 2], {"a": 1}, [[[]]], ["a"] * 21, {f"w{i}": i for i in range(21)}, float("nan"), float("inf"),
]
_RAW_TEXTS = [
    "NaN", "Infinity", "-Infinity", '{"embed_dim": Infinity}', '{"a": NaN}', "{", "", "null", "[]", "1", '"s"',
    "{}", "[" * 50_000, '{"a": ' * 5_000, "\x00", "\ud800", "2.0", " 2", "-1", "99999999999999999999", "٢",
]
_FIELD_PATHS: dict[str, list[tuple]] = {
    "model": [
        ("combiner",), ("combiner", "name"), ("combiner", "options"), ("combiner", "options", "zzz"),
        ("combiner", "zzz"), ("image_encoder",), ("image_encoder", "name"), ("image_encoder", "options"),
        ("image_encoder", "options", "model_name"), ("image_encoder", "options", "model_kwargs"),
        ("image_encoder", "options", "pretrained"), ("text_encoder", "name"), ("text_encoder", "options"),
        ("text_encoder", "options", "hidden_dim"), ("text_encoder", "options", "word_dim"),
        ("text_encoder", "options", "tokenizer"), ("text_encoder", "options", "max_tokens"),
        ("text_encoder", "options", "dropout"), ("embed_dim",), ("normalization_scale",), ("zzz",),
    ],
    "extra_state": [
        ("text_encoder",), ("text_encoder", "vocabulary"), ("text_encoder", "tokenizer"),
        ("text_encoder", "vocabulary", 0), ("text_encoder", "zzz"), ("image_encoder",), ("combiner",), ("zzz",),
        ("normalization",), ("__class__",), ("spec",),
    ],
    "preprocessing": [("image_size",), ("mean",), ("std",), ("resize",), ("mean", 0), ("std", 2), ("zzz",)],
    "recipe": [("dataset",), ("dataset_options",), ("data_root",), ("zzz",)],
    "metrics": [("recall@1",), ("protocol",), ("zzz",)],
    "plugins": [("combiner",), ("combiner", "package"), ("zzz",)],
}
_TOP_LEVEL = ["format", "format_version", "model", "extra_state", "preprocessing", "recipe", "metrics", "plugins",
              "tensor_sha256"]
_DELETE = object()


def _set(tree: Any, path: tuple, value: Any) -> Any:
    """A copy of ``tree`` with the item at ``path`` replaced (``_DELETE``: removed); a missing step is created."""
    tree = copy.deepcopy(tree)
    node = tree
    for step in path[:-1]:
        if isinstance(node, dict):
            node = node.setdefault(step, {})
        else:
            node = node[step]
    last = path[-1]
    if value is _DELETE:
        if isinstance(node, dict):
            node.pop(last, None)
        else:
            del node[last]
    else:
        node[last] = value
    return tree


def _mutations(raw: dict[str, str]) -> list[tuple[str, dict[str, str]]]:
    """(description, mutated metadata) for one change each of a valid checkpoint's metadata."""
    out: list[tuple[str, dict[str, str]]] = []
    for key in _TOP_LEVEL:
        out.append((f"delete {key}", {k: v for k, v in raw.items() if k != key}))
        for text in _RAW_TEXTS:
            out.append((f"{key} = {text[:30]!r}", {**raw, key: text}))
        for value in _VALUES:
            out.append((f"{key} = json {str(value)[:30]}", {**raw, key: json.dumps(value)}))
    out.append(("unknown top-level key", {**raw, "zzz": "{}"}))
    for field, paths in _FIELD_PATHS.items():
        tree = json.loads(raw[field])
        for path in paths:
            try:
                out.append((f"delete {field}{list(path)}", {**raw, field: json.dumps(_set(tree, path, _DELETE))}))
            except (KeyError, IndexError, TypeError):
                pass
            for value in _VALUES:
                try:
                    mutated = _set(tree, path, value)
                except (KeyError, IndexError, TypeError):
                    continue
                out.append((f"{field}{list(path)} = {str(value)[:30]}", {**raw, field: json.dumps(mutated)}))
    deep = json.loads(raw["model"])
    nested: Any = "leaf"
    for _ in range(900):
        nested = [nested]
    deep["image_encoder"]["options"]["model_kwargs"] = {"nest": nested}
    out.append(("model_kwargs nested 900 deep", {**raw, "model": json.dumps(deep)}))
    both = json.loads(raw["model"])
    both["combiner"]["name"] = "gone_for_test"
    out.append(("unknown combiner, odd provenance", {**raw, "model": json.dumps(both), "plugins": json.dumps(
        {"combiner": {"plugin": [1], "package": {"a": 1}}, "image_encoder": None, "text_encoder": "x"})}))
    return out


def _with_metadata(data: bytes, header: dict, metadata: dict[str, str], path: Path) -> Path:
    """The file ``path``: ``data`` (a checkpoint's tensor bytes) under ``header`` with ``metadata``."""
    header = {**header, "__metadata__": metadata}
    text = json.dumps(header, ensure_ascii=False).encode("utf-8", "surrogatepass")
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)
    return path


def test_fuzzed_metadata_loads_or_is_one_checkpoint_error(base, tmp_path):
    raw_file = base.read_bytes()
    start = _data_start(raw_file)
    header = json.loads(raw_file[8:start])
    raw_meta = header.pop("__metadata__")
    mutations = _mutations(raw_meta)
    rng = random.Random(0)
    chosen = rng.sample(mutations, min(len(mutations), 450))
    loaded, refused, began = [], [], time.perf_counter()
    for i, (what, metadata) in enumerate(chosen):
        path = _with_metadata(raw_file[start:], header, metadata, tmp_path / f"fuzz-{i}.safetensors")
        try:
            model, _ = load_checkpoint(path)
        except CheckpointError as exc:
            assert "\n" not in str(exc) and len(str(exc)) < 1000, (what, str(exc)[:300])
            refused.append(what)
        except Exception as exc:  # noqa: BLE001 - any other type is the bug this test looks for
            pytest.fail(f"{what}: {type(exc).__name__}: {str(exc)[:300]}")
        else:
            bad = [k for k, t in model.state_dict().items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
            assert not bad, (what, bad)
            loaded.append(what)
        path.unlink()
    print(f"\nfuzzed {len(chosen)} of {len(mutations)} mutations: {len(loaded)} loaded, {len(refused)} refused "
          f"in {time.perf_counter() - began:.1f} s")
    assert refused and loaded  # both outcomes happen: the fuzzer reaches past the first check
    assert not {"delete format", "delete format_version", "delete model", "delete tensor_sha256"} & set(loaded)
