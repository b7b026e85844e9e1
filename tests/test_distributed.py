"""Two processes train as one: 2 processes x B/2 (gloo, CPU) give the loss curve and weights of 1 process x B, and only
rank 0 writes; ``torchrun -m compose_retrieval train`` runs the command line in every process."""

from __future__ import annotations

import itertools
import json
import os
import socket
import subprocess
import sys
import warnings

import pytest
import torch
import torch.multiprocessing as mp

from compose_retrieval import ComposeRetrievalError, distributed
from compose_retrieval.batching import RunOrder, SameSourceBatches
from compose_retrieval.checkpoint import load_checkpoint
from compose_retrieval.model import ComponentSpec, ModelSpec
from compose_retrieval.resume import STATE_NAME, peek_state
from compose_retrieval.rundir import CHECKPOINT_NAME
from compose_retrieval.training import train

from conftest import EMBED_DIM, REPO_ROOT, TINY_DATASET, tiny_config

STEPS = 4
BATCH = 8
MODES = {"same-source-batches": 2, "independent-pairs": 1}

# Batch-equivalent on the CPU: no BatchNorm (torch's SyncBatchNorm refuses CPU tensors, so with gloo each process would
# normalise over its own half; see compose_retrieval.distributed) and no dropout (each process draws its own masks).
# test_efficientnet_ln normalises each image by itself (LayerNorm), mrn has no normalisation, the LSTM runs without dropout.
SPEC = ModelSpec(
    combiner=ComponentSpec("mrn", {}),
    image_encoder=ComponentSpec("timm", {"model_name": "test_efficientnet_ln"}),
    text_encoder=ComponentSpec("lstm", {"word_dim": 16, "hidden_dim": 16, "dropout": 0.0}),
    embed_dim=EMBED_DIM,
)

# Float tolerance. The two runs do the same arithmetic in another order: each process sums a weight's gradient over
# its 4 pairs and the all-reduce adds the two halves (one process sums 8 at once), and a CPU kernel may block a batch
# of 4 otherwise than a batch of 8: float32 rounding, ~1e-7 relative, which the loss's logits (up to the learned scale
# squared, 16) magnify. Measured over these 4 steps: losses (0.7 to 2.1) within 8e-6 (1e-5 relative), weights within
# 1e-6. The tolerances leave 10x or more to that. Getting the distribution wrong is far outside them: with the
# all-gather's backward not summing over processes (half the gradient), the loss at step 2 moves by 0.13.
# SGD, not AdamW: Adam divides each gradient by the root of its second moment, so a weight whose gradient is a near
# cancellation (|g| ~ eps) turns that rounding into a step of up to lr (measured: 1.7e-5 on one weight in 4 AdamW
# steps), a property of Adam and not of the distribution; SGD keeps the comparison at the rounding's own size.
LOSS_TOLERANCE = dict(rtol=1e-4, atol=1e-5)
WEIGHT_TOLERANCE = dict(rtol=1e-4, atol=2e-5)


def config_for(run_dir, mods):
    return tiny_config(model=SPEC, optimizer="sgd", lr=0.01, steps=STEPS, batch_size=BATCH, log_every=1, save_every=2,
                       mods_per_source=mods, dataset_options={**TINY_DATASET, "train_scenes": 32, "test_scenes": 8},
                       run_dir=str(run_dir))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


WRITING = ("open", "os.rename", "os.replace", "os.mkdir", "os.remove", "os.rmdir", "os.link", "os.symlink", "os.truncate",
           "shutil.rmtree", "shutil.move", "shutil.copyfile")


def _worker(rank: int, world: int, port: int, root: str) -> None:
    """One of the processes torchrun would start: its environment, then train() as every process calls it."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    watched = os.path.join(root, "runs")
    writes: list[str] = []

    def audit(event, args):  # every file this process creates, opens for writing, moves or removes under runs/
        if event not in WRITING or not args:
            return
        if event == "open":
            path, mode, flags = args
            if not (isinstance(path, (str, bytes, os.PathLike)) and (any(c in str(mode or "") for c in "wax+")
                                                                     or (flags or 0) & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))):
                return
        if any(str(os.fsdecode(a) if isinstance(a, bytes) else a).startswith(watched) for a in args[:2]
               if isinstance(a, (str, bytes, os.PathLike))):
            writes.append(f"{event} {args[0]}")

    sys.addaudithook(audit)
    losses = {}
    with distributed.session(torch.device("cpu")):
        for name, mods in MODES.items():
            records: list[dict] = []
            result = train(config_for(os.path.join(watched, name), mods), progress=False, on_log=records.append)
            losses[name] = {"on_log": [r["loss"] for r in records], "recall@1": result.metrics["recall@1"]}
    with open(os.path.join(root, f"rank{rank}.json"), "w") as f:
        json.dump({"writes": writes, "losses": losses}, f)


def losses_of(run_dir):
    return [r["loss"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    try:
        mp.spawn(_worker, args=(2, free_port(), str(root)), nprocs=2, join=True)
    except mp.ProcessExitedException as exc:
        # Seen in 2 of 4 full-suite runs on a loaded 2-core machine: a worker aborts ("terminate called without an active
        # exception", gloo's threads at interpreter exit) after it has written its results. A worker that died before
        # finishing its work has written no result file, and the test fails on that as before.
        if not all((root / f"rank{r}.json").is_file() for r in range(2)):
            raise
        warnings.warn(f"a DDP worker ended abnormally after writing its results: {exc}", RuntimeWarning)
    return root


@pytest.mark.parametrize("mode", MODES)
def test_two_processes_with_half_batches_train_like_one_with_the_whole_batch(two_processes, tmp_path, mode):
    root = two_processes
    train(config_for(tmp_path / "one", MODES[mode]), progress=False)
    two = root / "runs" / mode
    expected, got = torch.tensor(losses_of(tmp_path / "one")), torch.tensor(losses_of(two))
    assert len(got) == STEPS and len(expected) == STEPS
    assert expected[-1] < expected[0] - 0.3  # the runs learn: equal curves are not two models standing still
    torch.testing.assert_close(got, expected, **LOSS_TOLERANCE)
    a, _ = load_checkpoint(tmp_path / "one" / CHECKPOINT_NAME)
    b, _ = load_checkpoint(two / CHECKPOINT_NAME)
    a, b = a.state_dict(), b.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], **WEIGHT_TOLERANCE, msg=lambda m, key=key: f"{key}: {m}")
    # the state rank 0 wrote holds every process's random stream (an exact resume with two processes)
    step, extra = peek_state(two / STATE_NAME)
    assert step == STEPS and len(extra["rank_random"]) == 2


def test_only_rank_0_writes_and_calls_on_log(two_processes):
    root = two_processes
    rank0, rank1 = (json.loads((root / f"rank{r}.json").read_text()) for r in (0, 1))
    assert rank1["writes"] == [], rank1["writes"][:5]
    written = " ".join(rank0["writes"])
    for name in ("config.json", "metrics.jsonl", STATE_NAME, CHECKPOINT_NAME):  # the hook does see rank 0 write
        assert name in written, name
    for mode in MODES:
        assert len(rank0["losses"][mode]["on_log"]) == STEPS and rank1["losses"][mode]["on_log"] == []
        assert rank0["losses"][mode]["recall@1"] == rank1["losses"][mode]["recall@1"]  # every process gets the metrics
    assert sorted(p.name for p in (root / "runs").iterdir()) == sorted(MODES)


def test_each_rank_takes_a_disjoint_share_and_the_shares_make_the_batch(tiny_dataset):
    train_set = tiny_dataset.train_set(seed=0)
    steps = 2 * len(train_set) // 8 + 3  # into the third epoch
    whole = RunOrder(len(train_set), 8, seed=3, start=5)
    quarters = [RunOrder(len(train_set), 8, seed=3, start=5, rank=r, world=4) for r in range(4)]
    for batch, *parts in itertools.islice(zip(whole, *quarters), steps):
        assert [i for part in parts for i in part] == batch and all(len(part) == 2 for part in parts)
    batches = SameSourceBatches(train_set, 8, 2, seed=1)
    halves = [SameSourceBatches(train_set, 8, 2, seed=1, rank=r, world=2) for r in range(2)]
    for index in (0, 5, 123):
        assert halves[0].share(index) + halves[1].share(index) == batches.triplets(index)
        for half in halves:  # whole groups: a source's two texts stay in one process
            sources = [s for s, _, _ in half.share(index)]
            assert sources[::2] == sources[1::2]
        assert halves[1][index]["text"] == [t for _, t, _ in halves[1].share(index)]
    with pytest.raises(ComposeRetrievalError, match="multiple of 4"):
        RunOrder(len(train_set), 6, seed=0, rank=0, world=4)
    with pytest.raises(ComposeRetrievalError, match="multiple of 8"):
        SameSourceBatches(train_set, 12, 2, seed=0, rank=0, world=4)


def test_torchrun_runs_the_command_line_in_every_process(tmp_path):
    """`torchrun -m compose_retrieval train`: one run directory (rank 0 names it), the result printed once."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "compose_retrieval", "train", "--steps", "2", "--batch-size", "8", "--backbone", "test_efficientnet_ln",
               "--combiner", "mrn", "--embed-dim", "32", "--text-encoder-opt", "word_dim=16", "--text-encoder-opt",
               "hidden_dim=16", "--dataset", "css-synthetic", "--dataset-opt", "image_size=32", "--dataset-opt",
               "train_scenes=16", "--dataset-opt", "test_scenes=8", "--device", "cpu", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200", "PYTHONPATH": str(REPO_ROOT)}
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    runs = list((tmp_path / "runs").iterdir())
    assert len(runs) == 1 and (runs[0] / CHECKPOINT_NAME).is_file(), runs
    assert done.stdout.count("run directory:") == 1 and "on 2 processes" in done.stdout, done.stdout
