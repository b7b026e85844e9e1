"""benchmarks/gpu_check.sh runs here, on the CPU, so that it works the first time it meets a GPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import REPO_ROOT


def test_the_gpu_check_runs_every_mode_on_the_cpu():
    command = ["bash", str(REPO_ROOT / "benchmarks" / "gpu_check.sh"), "--device", "cpu", "--steps", "5", "--json",
               "--dataset-opt", "train_scenes=24", "--dataset-opt", "test_scenes=6", "--dataset-opt", "image_size=32"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=REPO_ROOT,
                          env={**os.environ, "PYTHON": sys.executable})
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert [r["mode"] for r in rows] == ["fp32", "bf16", "bf16+compile"]
    for row in rows:
        assert row["device"] == "cpu" and row["steps"] == 5
        assert row["images_per_second"] > 0 and row["peak_memory_mb"] > 0
        assert 0 <= row["recall@1"] <= row["recall@10"] <= 1
