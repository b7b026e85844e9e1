"""The GPU path, measured: tirg with the paper recipe's model on css-synthetic 3D, in fp32, bf16 and bf16 + compile.

For each mode it trains a fixed number of steps and prints images per second (training
only), peak memory and the recall of the trained model; with --nproc 2 (and two GPUs) it
also runs the bf16 mode under DistributedDataParallel through torchrun. benchmarks/gpu_check.sh
is the one command a GPU machine runs; here on the CPU it runs with --device cpu --steps 5
(tests/test_gpu_check.py), so that it works the first time it meets a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

import torch

import compose_retrieval as cr
from compose_retrieval.checkpoint import read_metadata
from compose_retrieval.cli.common import parse_options
from compose_retrieval.devices import resolve_device

MODES = {"fp32": dict(amp=False), "bf16": dict(amp=True), "bf16+compile": dict(amp=True, compile=True)}


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # the process's peak resident size (Linux: KiB)


def run(mode: str, args, out: str) -> dict:
    device = resolve_device(args.device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    config = cr.make_config(
        "paper", combiner="tirg", dataset="css-synthetic", dataset_options=dict(args.dataset_options, style="3d"),
        steps=args.steps, batch_size=args.batch_size, device=args.device, save_every=0, log_every=max(1, args.steps // 4),
        run_dir=os.path.join(out, mode.replace("+", "-")), **MODES[mode],
    )
    started = time.perf_counter()
    result = cr.train(config, progress=False)
    metrics = result.metrics
    return {
        "mode": mode, "device": str(device), "steps": args.steps,
        "images_per_second": round(args.steps * args.batch_size * 2 / metrics["train_seconds"], 1),
        "peak_memory_mb": round(peak_memory_mb(device), 1), "recall@1": round(metrics["recall@1"], 4),
        "recall@10": round(metrics["recall@10"], 4), "wall_seconds": round(time.perf_counter() - started, 1),
    }


def run_ddp(args, out: str) -> dict:
    """bf16 on --nproc GPUs through torchrun (the console script's own command line)."""
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={args.nproc}", "-m", "compose_retrieval",
               "train", "--recipe", "paper", "--combiner", "tirg", "--dataset", "css-synthetic", "--dataset-opt", "style=3d",
               *[f"--dataset-opt={option}" for option in args.dataset_opt],  # as given: the CLI parses them alike
               "--steps", str(args.steps), "--batch-size", str(args.batch_size), "--save-every", "0", "--no-progress",
               "--run-dir", os.path.join(out, "ddp")]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        return {"mode": f"bf16 ddp x{args.nproc}", "error": (done.stderr or done.stdout).strip().splitlines()[-1][:300]}
    meta = read_metadata(os.path.join(out, "ddp", "model.safetensors"))["metrics"]
    return {"mode": f"bf16 ddp x{args.nproc}", "steps": args.steps, "recall@1": round(meta["recall@1"], 4),
            "images_per_second": round(args.steps * args.batch_size * 2 / meta["train_seconds"], 1),
            "wall_seconds": round(time.perf_counter() - started, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--modes", nargs="*", default=list(MODES), choices=list(MODES))
    parser.add_argument("--nproc", type=int, default=0, help="also run bf16 under torchrun on this many GPUs (0: no)")
    parser.add_argument("--dataset-opt", action="append", default=[], help="css-synthetic option KEY=VALUE (repeatable)")
    parser.add_argument("--json", action="store_true", help="print one JSON object per mode instead of a table")
    args = parser.parse_args()
    args.dataset_options = parse_options(args.dataset_opt, "--dataset-opt")  # the CLI's rule: JSON, else a string
    torch.manual_seed(0)
    out = tempfile.mkdtemp(prefix="gpu-check-")
    rows = []
    try:
        for mode in args.modes:
            rows.append(run(mode, args, out))
            print(json.dumps(rows[-1]) if args.json else f"{mode}: {rows[-1]}", flush=True)
        if args.nproc > 1:
            if args.device.startswith("cuda") and torch.cuda.device_count() < args.nproc:
                rows.append({"mode": f"bf16 ddp x{args.nproc}", "error": f"only {torch.cuda.device_count()} GPU(s)"})
            else:
                rows.append(run_ddp(args, out))
            print(json.dumps(rows[-1]) if args.json else f"ddp: {rows[-1]}", flush=True)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    if not args.json:
        print("\n| mode | images/s | peak memory (MB) | recall@1 | recall@10 | wall (s) |\n|---|---:|---:|---:|---:|---:|")
        for r in rows:
            print(f"| {r['mode']} | {r.get('images_per_second', '')} | {r.get('peak_memory_mb', '')} | {r.get('recall@1', '')} "
                  f"| {r.get('recall@10', '')} | {r.get('wall_seconds', r.get('error', ''))} |")


if __name__ == "__main__":
    main()
