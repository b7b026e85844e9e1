"""A run survives: stopped at step k (Ctrl-C, or killed while saving) and resumed, it ends with the weights of an
uninterrupted run; a resumed run keeps its config; the best validation model is kept beside the last."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import textwrap

import pytest
import torch

import compose_retrieval
from compose_retrieval import ComposeRetrievalError
from compose_retrieval.checkpoint import load_checkpoint, read_metadata
from compose_retrieval.errors import RunInterrupted
from compose_retrieval.evaluation import evaluate_checkpoint
from compose_retrieval.resume import STATE_NAME, peek_state
from compose_retrieval.rundir import BEST_NAME, CHECKPOINT_NAME
from compose_retrieval.training import resume, train

from conftest import REPO_ROOT, TINY_CLI_MODEL, assert_one_line_error, invoke, tiny_config

STEPS = 30


def weights(run_dir):
    model, _ = load_checkpoint(run_dir / CHECKPOINT_NAME)
    return model.state_dict()


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, first {different[:3]}"


def interrupt_at(step):
    def on_log(record):
        if record["step"] == step:
            raise KeyboardInterrupt

    return on_log


@pytest.fixture(scope="module", params=[2, 1], ids=["same-source-batches", "independent-pairs"])
def uninterrupted(request, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("whole") / "run"
    config = tiny_config(steps=STEPS, save_every=10, mods_per_source=request.param, run_dir=str(run_dir))
    result = train(config, progress=False)
    return config, run_dir, result


def test_ctrl_c_saves_and_a_resumed_run_ends_with_the_same_weights(uninterrupted, tmp_path):
    config, whole, result = uninterrupted
    run_dir = tmp_path / "run"
    with pytest.raises(RunInterrupted, match=f"interrupted at step 20 of {STEPS}.*train --resume {run_dir}"):
        train(dataclasses.replace(config, run_dir=str(run_dir)), progress=False, on_log=interrupt_at(20))
    assert (run_dir / STATE_NAME).is_file() and not (run_dir / CHECKPOINT_NAME).exists()
    resumed = resume(run_dir, progress=False)
    assert_same_weights(weights(whole), weights(run_dir))
    assert resumed.metrics["recall@1"] == result.metrics["recall@1"]
    steps = [json.loads(line).get("step") for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps[:3] == [10, 20, 30]  # each logged step once: the log of the first attempt is continued, not repeated


KILLER = """
import os, signal, sys
sys.path[:0] = [{tests!r}]
import compose_retrieval.resume as resume_module
from conftest import tiny_config
from compose_retrieval.training import train

real = resume_module.save_file
calls = []

def save_then_die(tensors, path, metadata=None):
    calls.append(path)
    if len(calls) == 2:  # the second save: write part of the file, then die as a lost machine would
        with open(path, "wb") as f:
            f.write(b"partial")
        os.kill(os.getpid(), signal.SIGKILL)
    real(tensors, path, metadata=metadata)

resume_module.save_file = save_then_die
train(tiny_config(steps={steps}, save_every=10, mods_per_source={mods}, run_dir={run_dir!r}), progress=False)
"""


def test_a_kill_during_a_save_leaves_the_previous_state_and_resuming_it_gives_the_same_weights(uninterrupted, tmp_path):
    config, whole, _ = uninterrupted
    run_dir = tmp_path / "killed"
    script = KILLER.format(tests=str(REPO_ROOT / "tests"), steps=STEPS, mods=config.mods_per_source, run_dir=str(run_dir))
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True, timeout=300)
    assert done.returncode == -9, done.stderr[-2000:]
    assert peek_state(run_dir / STATE_NAME)[0] == 10  # the first save, whole; the killed second left only a temporary
    resume(run_dir, progress=False)
    assert_same_weights(weights(whole), weights(run_dir))


def test_a_changed_option_on_resume_is_refused_in_one_line(uninterrupted, tmp_path):
    _, whole, _ = uninterrupted
    assert_one_line_error(invoke("train", "--resume", whole, "--lr", "0.5"), "--resume continues", "drop --lr")
    with pytest.raises(ComposeRetrievalError, match="lr cannot change"):
        resume(whole, lr=0.5)
    assert_one_line_error(invoke("train", "--resume", whole, "--device", "cpu", "--no-progress"),
                          f"finished its {STEPS} steps", "compose-retrieval evaluate")
    assert_one_line_error(invoke("train", "--resume", tmp_path), "not a run directory")


def test_the_best_validation_model_is_kept_beside_the_last(tmp_path):
    run_dir = tmp_path / "run"
    result = train(tiny_config(steps=STEPS, eval_every=5, val_pairs=12, run_dir=str(run_dir)), progress=False)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    validations = [(r["step"], r["validation"]["recall@1"]) for r in records if "validation" in r]
    assert [s for s, _ in validations] == [5, 10, 15, 20, 25, 30] and all(r["validation"]["queries"] == 12 for r in records if "validation" in r)
    best_step, best_recall = max(validations, key=lambda v: (v[1], -v[0]))  # the first of the best
    meta = read_metadata(run_dir / BEST_NAME)
    assert meta["metrics"]["step"] == best_step and meta["metrics"]["validation"]["recall@1"] == best_recall
    assert result.metrics["best_validation"] == {"step": best_step, "recall@1": best_recall}
    # both load as checkpoints: evaluate and load_pretrained take either file
    assert evaluate_checkpoint(run_dir / BEST_NAME, device="cpu")["queries"] == result.metrics["queries"]
    model, _ = compose_retrieval.load_pretrained(str(run_dir / BEST_NAME))
    assert model.spec == result.model.spec


def test_a_dataset_that_draws_its_pairs_cannot_hold_any_out(tmp_path):
    """css (SampledPairs) has no fixed pairs to give up: --eval-every says what the dataset needs, in one line."""
    result = invoke("train", *TINY_CLI_MODEL, "--dataset", "css-synthetic", "--eval-every", "2", "--val-pairs", "100000",
                    "--dataset-opt", "image_size=32", "--dataset-opt", "train_scenes=16", "--dataset-opt", "test_scenes=8",
                    "--run-dir", tmp_path / "run")
    assert_one_line_error(result, "cannot hold out 100000", "--val-pairs")


def test_tensorboard_gets_the_numbers_of_the_log(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = tmp_path / "run"
    train(tiny_config(steps=10, log_every=5, eval_every=5, val_pairs=8, tensorboard=True, run_dir=str(run_dir)), progress=False)
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == [5, 10]
    assert [e.step for e in events.Scalars("validation/recall@1")] == [5, 10]
    logged = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert events.Scalars("train/loss")[1].value == pytest.approx(logged[2]["loss"], rel=1e-6)  # step 10's training line
    assert events.Scalars("eval/recall@1")[0].value == pytest.approx(logged[-1]["eval"]["recall@1"], rel=1e-6)
