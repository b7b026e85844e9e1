"""A run's folder: created or claimed exclusively, with its config, metrics log and checkpoint."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .checkpoint import atomic_write
from .errors import ComposeRetrievalError

if TYPE_CHECKING:
    from .config import TrainConfig

__all__ = ["CHECKPOINT_NAME", "BEST_NAME", "new_run_dir", "claim_run_dir", "MetricsLog"]

CHECKPOINT_NAME = "model.safetensors"
BEST_NAME = "best.safetensors"  # the model of the best validation recall@1 (--eval-every)


def new_run_dir(parent: str | os.PathLike, name: str) -> Path:
    """A new, empty folder ``parent/name-YYYYmmdd-HHMMSS`` (with -2, -3, ... when runs start in the same second)."""
    base = Path(parent) / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    base.parent.mkdir(parents=True, exist_ok=True)
    for n in range(1, 10_000):
        candidate = base if n == 1 else base.with_name(f"{base.name}-{n}")
        try:
            candidate.mkdir()  # exclusive: two runs never share one folder
            return candidate
        except FileExistsError:
            continue
    raise ComposeRetrievalError(f"cannot find a free run directory next to {base}; give --run-dir")


def claim_run_dir(run_dir: Path, config: "TrainConfig") -> None:
    """Make ``run_dir`` this run's: it must be new or empty, and config.json is created exclusively in it,
    so a second run given the same folder stops instead of overwriting the first."""
    if run_dir.exists() and not run_dir.is_dir():
        raise ComposeRetrievalError(f"--run-dir {run_dir} is a file, not a folder; choose a new folder for the run")
    if run_dir.is_dir() and any(run_dir.iterdir()):
        what = ("holds a trained model" if (run_dir / CHECKPOINT_NAME).exists()
                else "holds another run's files" if (run_dir / "config.json").exists() else "is not empty")
        raise ComposeRetrievalError(f"run directory {run_dir} {what}; choose a new --run-dir (nothing in it was changed)")
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        atomic_write(run_dir / "config.json", lambda tmp: Path(tmp).write_text(json.dumps(config.to_dict(), indent=2)), exclusive=True)
    except FileExistsError:
        raise ComposeRetrievalError(f"run directory {run_dir} was just taken by another run; choose a new --run-dir") from None


class MetricsLog:
    """metrics.jsonl in the run directory: one JSON object a line, appended and flushed; with ``tensorboard``, the
    same numbers as TensorBoard events in RUN_DIR/tensorboard.

    ``keep_until``: the step a run starts from. A new run (0) starts an empty log; a resumed one keeps the lines of
    the steps it resumes after and drops those of steps it will train again.
    """

    def __init__(self, run_dir: Path | None, *, keep_until: int = 0, tensorboard: bool = False):
        self.path = run_dir / "metrics.jsonl" if run_dir else None
        if self.path:
            kept = []
            if keep_until and self.path.is_file():
                for line in self.path.read_text().splitlines():
                    try:
                        record = json.loads(line)
                    except ValueError:  # a line cut by the interruption
                        continue
                    if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] <= keep_until:
                        kept.append(line + "\n")
            atomic_write(self.path, lambda tmp: Path(tmp).write_text("".join(kept)))
        self.writer = None
        if tensorboard and run_dir:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise ComposeRetrievalError('--tensorboard needs TensorBoard: pip install "compose-retrieval[tensorboard]"') from None
            self.writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=keep_until + 1 if keep_until else None)

    def write(self, record: dict[str, Any]) -> None:
        if self.path:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")
        if self.writer is not None:
            step = record.get("step", (record.get("eval") or {}).get("step"))
            for group in ("", "validation", "eval"):
                values = record if not group else record.get(group) or {}
                for key, value in values.items():
                    if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "step":
                        self.writer.add_scalar(f"{group or 'train'}/{key}", value, step)
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
