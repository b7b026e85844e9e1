"""What a run leaves on disk when something goes wrong: nothing lost, nothing overwritten, nothing half-written."""

from __future__ import annotations

import csv
import json
import os
import shlex
from pathlib import Path

import pytest
from PIL import Image

import compose_retrieval
from compose_retrieval import CheckpointError, ComposeRetrievalError, hookimpl
from compose_retrieval.checkpoint import load_checkpoint, read_metadata, save_checkpoint
from compose_retrieval.rundir import CHECKPOINT_NAME, claim_run_dir, new_run_dir
from compose_retrieval.training import train
from compose_retrieval.zoo import CACHE_ENV, pretrained_info, resolve, sha256_of, zoo_dir

from conftest import TINY_CLI_MODEL, TINY_DATASET, assert_one_line_error, invoke, tiny_config, tiny_model

COLOURS = {"red": (220, 30, 30), "blue": (30, 60, 220), "green": (30, 190, 40)}




def _triplets_with_a_broken_gallery_image(root: Path) -> Path:
    """A triplets folder (train.csv, queries.jsonl, gallery/) whose gallery also holds a zero-byte PNG."""
    def image(path: Path, colour: str, shift: int = 0) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        picture = Image.new("RGB", (40, 40), "white")
        picture.paste(COLOURS[colour], (8 + shift, 8, 30 + shift, 30))
        picture.save(path)

    for colour in COLOURS:
        image(root / "train" / f"{colour}.jpg", colour)
        image(root / "gallery" / f"{colour}.png", colour, shift=3)
    pairs = [(a, b) for a in COLOURS for b in COLOURS if a != b]
    with (root / "train.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["source", "text", "target"])
        writer.writerows([[f"train/{a}.jpg", f"make it {b}", f"train/{b}.jpg"] for a, b in pairs * 2])
    with (root / "queries.jsonl").open("w") as f:
        for a, b in pairs:
            f.write(json.dumps({"source": f"gallery/{a}.png", "text": f"make it {b}", "target": f"gallery/{b}.png"}) + "\n")
    (root / "gallery" / "zz-broken.png").write_bytes(b"")  # a copy that was killed mid-way
    return root


def test_training_saves_before_it_evaluates(tmp_path):
    root = _triplets_with_a_broken_gallery_image(tmp_path / "data")
    run_dir = tmp_path / "run"
    result = invoke("train", *TINY_CLI_MODEL, "--dataset", "triplets", "--data-root", root,
                    "--dataset-opt", "image_size=32", "--run-dir", run_dir)
    line = assert_one_line_error(result, "evaluation failed", "zz-broken.png", "the trained model is saved")
    assert str(run_dir / CHECKPOINT_NAME) in line
    model, meta = load_checkpoint(run_dir / CHECKPOINT_NAME)
    assert meta["metrics"]["step"] == 3 and "recall@1" not in meta["metrics"]
    assert meta["recipe"]["dataset"] == "triplets"

    # once the image is fixed, the command the message gives evaluates the saved model
    (root / "gallery" / "zz-broken.png").unlink()
    command = shlex.split(line.split("evaluate it with `", 1)[1].split("`", 1)[0])
    assert command[:2] == ["compose-retrieval", "evaluate"]
    result = invoke(*command[1:], "--device", "cpu", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["gallery"] == 3


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A tiny finished run: (run_dir, the bytes of its config.json)."""
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    train(tiny_config(steps=2, log_every=1, run_dir=str(run_dir)), progress=False)
    return run_dir, (run_dir / "config.json").read_bytes()


def test_a_second_run_in_the_same_folder_is_refused(finished_run):
    run_dir, config = finished_run
    files = sorted(p.name for p in run_dir.iterdir())
    result = invoke("train", *TINY_CLI_MODEL, *[a for k, v in TINY_DATASET.items() for a in ("--dataset-opt", f"{k}={v}")],
                    "--run-dir", run_dir)
    assert_one_line_error(result, "holds a trained model", "choose a new --run-dir")
    with pytest.raises(ComposeRetrievalError, match="holds a trained model"):
        train(tiny_config(steps=1, run_dir=str(run_dir)), progress=False)
    assert (run_dir / "config.json").read_bytes() == config
    assert sorted(p.name for p in run_dir.iterdir()) == files


def test_claiming_one_folder_twice(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    claim_run_dir(run_dir, tiny_config(seed=1))
    first = (run_dir / "config.json").read_bytes()
    with pytest.raises(ComposeRetrievalError, match="holds another run's files"):
        claim_run_dir(run_dir, tiny_config(seed=2))
    assert (run_dir / "config.json").read_bytes() == first

    class Racing(type(run_dir)):
        """Both runs saw the folder empty: the exclusive create of config.json decides."""

        def iterdir(self):
            return iter(())

    with pytest.raises(ComposeRetrievalError, match="was just taken by another run"):
        claim_run_dir(Racing(run_dir), tiny_config(seed=3))
    assert (run_dir / "config.json").read_bytes() == first
    assert json.loads(first)["seed"] == 1
    assert sorted(p.name for p in run_dir.iterdir()) == ["config.json"]  # no temporary file left


def test_a_folder_holding_a_users_file_is_refused(tmp_path):
    run_dir = tmp_path / "thesis"
    run_dir.mkdir()
    (run_dir / "chapter1.tex").write_text("my thesis\n")
    with pytest.raises(ComposeRetrievalError, match="is not empty"):
        train(tiny_config(steps=1, run_dir=str(run_dir)), progress=False)
    assert sorted(p.name for p in run_dir.iterdir()) == ["chapter1.tex"]
    assert (run_dir / "chapter1.tex").read_text() == "my thesis\n"


def test_a_run_dir_that_is_a_file_is_refused(tmp_path):
    target = tmp_path / "notes.txt"
    target.write_text("notes\n")
    with pytest.raises(ComposeRetrievalError, match="is a file, not a folder"):
        claim_run_dir(target, tiny_config())
    result = invoke("train", *TINY_CLI_MODEL, "--run-dir", target)
    assert_one_line_error(result, "is a file, not a folder")
    assert target.read_text() == "notes\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_default_run_directories_are_unique(tmp_path):
    parent = tmp_path / "runs-parent"
    made = [new_run_dir(parent, "tirg-x") for _ in range(3)]
    assert len(set(made)) == 3
    assert all(d.is_dir() and not any(d.iterdir()) and d.parent == parent and d.name.startswith("tirg-x-") for d in made)
    assert sorted(p.name for p in parent.iterdir()) == sorted(d.name for d in made)


@pytest.mark.parametrize("lr, steps, message", [
    (1e10, 3, r"training diverged: the loss became nan at step \d"),  # the loss goes first
    (1e38, 1, r"training diverged: \d+ weight tensor\(s\) hold nan or inf after 1 steps"),  # the weights go first
])
def test_a_diverged_run_saves_nothing(tmp_path, lr, steps, message):
    run_dir = tmp_path / "run"
    with pytest.raises(ComposeRetrievalError, match=message) as info:
        train(tiny_config(optimizer="sgd", lr=lr, steps=steps, log_every=1, run_dir=str(run_dir)), progress=False)
    assert "nothing was saved" in str(info.value) and "lower --lr" in str(info.value)
    assert not (run_dir / CHECKPOINT_NAME).exists()
    assert not list(run_dir.glob(".*.tmp"))


def test_zoo_export_needs_overwrite(finished_run, tmp_path):
    run_dir, _ = finished_run
    out = tmp_path / "zoo"
    out.mkdir()
    existing = out / "mine.safetensors"
    existing.write_bytes(b"the user's own file")
    result = invoke("zoo", "export", run_dir, existing, "--device", "cpu")
    assert_one_line_error(result, "exists; give --overwrite")
    assert existing.read_bytes() == b"the user's own file"

    result = invoke("zoo", "export", run_dir, existing, "--device", "cpu", "--overwrite")
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["sha256"] == sha256_of(existing)
    assert read_metadata(existing)["metrics"]["recall@1"] == info["metrics"]["recall@1"]
    load_checkpoint(existing)
    assert sorted(p.name for p in out.iterdir()) == ["mine.safetensors"]  # no .tmp left beside it


def test_a_killed_save_leaves_nothing_behind_on_the_next(tmp_path):
    path = tmp_path / CHECKPOINT_NAME
    dead = 999_999
    try:
        os.kill(dead, 0)
        pytest.skip(f"pid {dead} is alive on this machine")
    except ProcessLookupError:
        pass
    except PermissionError:
        pytest.skip(f"pid {dead} is alive on this machine")
    stale = tmp_path / f".{CHECKPOINT_NAME}.{dead}.abc.tmp"
    live = tmp_path / f".{CHECKPOINT_NAME}.{os.getpid()}.abc.tmp"  # a writer of this process, still writing
    other = tmp_path / f".other.safetensors.{dead}.abc.tmp"  # another file's: not this write's to clean
    for p in (stale, live, other):
        p.write_bytes(b"half a checkpoint")
    save_checkpoint(tiny_model(), path)
    assert not stale.exists()
    assert live.read_bytes() == b"half a checkpoint" and other.exists()
    load_checkpoint(path)


@pytest.fixture
def cache(tmp_path, monkeypatch, clean_registry):
    """COMPOSE_RETRIEVAL_CACHE at tmp_path/cache, and a zoo entry with a sha256 and neither a file nor a download."""
    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv(CACHE_ENV, str(cache))
    right = save_checkpoint(tiny_model(), tmp_path / "right.safetensors")
    digest = sha256_of(right)

    class ZooPlugin:
        @hookimpl
        def register_pretrained(self, register):
            register("tiny-made-locally", {"sha256": digest, "command": "compose-retrieval zoo export RUN FILE"})

    compose_retrieval.register_plugin(ZooPlugin(), "test-run-safety-zoo")
    return cache, right


def test_a_tampered_cache_file_is_refused(cache):
    cache, right = cache
    cached = cache / "tiny-made-locally.safetensors"
    save_checkpoint(tiny_model("concat"), cached)  # a valid checkpoint, but not the one the entry records
    with pytest.raises(CheckpointError, match=r"sha256 .*changed or damaged; delete it"):
        compose_retrieval.load_pretrained("tiny-made-locally")
    cached.write_bytes(right.read_bytes())
    model, _ = compose_retrieval.load_pretrained("tiny-made-locally")
    assert model.spec.combiner.name == "tirg"


def test_a_shipped_name_wins_over_the_cache(cache):
    cache, right = cache
    (cache / "tirg-css-synthetic.safetensors").write_bytes(right.read_bytes())  # a different (tiny) model
    entry = pretrained_info("tirg-css-synthetic")
    assert resolve("tirg-css-synthetic") == zoo_dir() / entry.file
    model, preprocessing = compose_retrieval.load_pretrained("tirg-css-synthetic")
    assert preprocessing.image_size == 64 and model.spec.embed_dim != 32
    # `zoo list` says where resolve() takes it from
    result = invoke("zoo", "list", "tirg-css-synthetic")
    assert result.exit_code == 0, result.output
    row = next(line for line in result.stdout.splitlines() if "tirg-css-synthetic" in line)
    assert "shipped" in row and "cached" not in row
    result = invoke("zoo", "list", "tiny-made-locally")
    assert "make it" in result.stdout and "cached" not in result.stdout
    (cache / "tiny-made-locally.safetensors").write_bytes(right.read_bytes())
    assert "cached" in invoke("zoo", "list", "tiny-made-locally").stdout


def test_a_run_that_failed_before_saving_leaves_its_folder_usable(tmp_path):
    run_dir = tmp_path / "run"
    with pytest.raises(ComposeRetrievalError, match="training diverged"):
        train(tiny_config(optimizer="sgd", lr=1e38, steps=1, run_dir=str(run_dir)), progress=False)
    assert not run_dir.exists()  # its config.json and metrics.jsonl are gone with it, and the folder it made
    run_dir.mkdir()  # a folder the user made stays, empty
    with pytest.raises(ComposeRetrievalError, match="training diverged"):
        train(tiny_config(optimizer="sgd", lr=1e38, steps=1, run_dir=str(run_dir)), progress=False)
    assert run_dir.is_dir() and not list(run_dir.iterdir())
    result = train(tiny_config(steps=2, run_dir=str(run_dir)), progress=False)  # the retry the message suggests
    assert (run_dir / CHECKPOINT_NAME).exists() and result.metrics["recall@1"] >= 0


def test_a_write_never_removes_the_temporary_of_another_file(tmp_path):
    target = tmp_path / "out"
    other = tmp_path / ".out.5.999999.abc.tmp"  # a live write of "out.5" would look like this to a loose pattern
    dead = tmp_path / ".out.999999.abc.tmp"  # a killed write of "out" itself
    other.write_bytes(b"x")
    dead.write_bytes(b"x")
    save_checkpoint(tiny_model("tirg"), target)
    assert other.exists() and not dead.exists()


def test_non_finite_metrics_are_saved_as_null_and_the_checkpoint_loads(tmp_path):
    path = save_checkpoint(tiny_model("tirg"), tmp_path / "m.safetensors", metrics={"recall@1": float("nan"), "k": [float("inf"), 1.0]})
    model, meta = load_checkpoint(path)
    assert meta["metrics"] == {"recall@1": None, "k": [None, 1.0]}
