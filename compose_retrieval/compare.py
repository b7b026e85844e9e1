"""Train several combiners under one recipe and several seeds, and tabulate them (Markdown and CSV)."""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import statistics
from pathlib import Path
from typing import Any, Callable, Sequence

from .checkpoint import atomic_write, read_metadata
from .model import ComponentSpec
from .errors import ComposeRetrievalError
from .config import TrainConfig, recipe_of
from .rundir import CHECKPOINT_NAME
from .training import train

__all__ = ["REPORTED", "run_comparison", "summarise", "to_markdown", "to_csv", "write_tables"]

REPORTED = ("recall@1", "recall@5", "recall@10")


def run_comparison(
    base: TrainConfig,
    combiners: Sequence[str],
    seeds: dict[str, Sequence[int]],
    out_dir: str | Path,
    *,
    progress: bool = False,
    on_run: Callable[[str, int, dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Train each combiner with each of its seeds into ``out_dir/NAME-seedS``; return one row per combiner.

    A run whose directory already holds a checkpoint is not trained again: its recorded
    metrics are reused, so an interrupted comparison resumes where it stopped.
    """
    out_dir = Path(out_dir)
    rows = []
    for name in combiners:
        results = []
        for seed in seeds[name]:
            run_dir = out_dir / f"{name}-seed{seed}"
            model = dataclasses.replace(base.model, combiner=ComponentSpec(name, {}))
            config = dataclasses.replace(base, model=model, seed=seed, run_dir=str(run_dir))
            if (run_dir / CHECKPOINT_NAME).exists():
                metrics = _reuse(run_dir / CHECKPOINT_NAME, config)
            else:
                _clear_interrupted(run_dir)
                metrics = train(config, progress=progress).metrics
            results.append(metrics)
            if on_run:
                on_run(name, seed, metrics)
        rows.append(summarise(name, results, base.batch_size * 2))
    return rows


def _clear_interrupted(run_dir: Path) -> None:
    """A run of this comparison that stopped before its checkpoint leaves config.json and metrics.jsonl: it starts
    again from scratch. A folder holding anything else is not the comparison's to clear, and training refuses it."""
    if run_dir.is_dir() and {p.name for p in run_dir.iterdir()} <= {"config.json", "metrics.jsonl"}:
        for name in ("config.json", "metrics.jsonl"):
            (run_dir / name).unlink(missing_ok=True)


def _reuse(checkpoint: Path, config: TrainConfig) -> dict[str, Any]:
    """The metrics of a finished run, if it was trained with this config's recipe."""
    saved = read_metadata(checkpoint)["recipe"] or {}
    # a loss, protocol or batch composition left to the dataset (None) is saved as what it resolved to
    wanted = {k: v for k, v in recipe_of(config).items() if not (k in ("loss", "protocol", "mods_per_source") and v is None)}
    differ = [k for k, v in wanted.items() if saved.get(k) != v]
    if differ:
        k = differ[0]
        raise ComposeRetrievalError(
            f"{checkpoint.parent} was trained with another recipe ({k}: {saved.get(k)!r}, now {wanted[k]!r}); "
            "choose another --out, or remove that run to train it again"
        )
    metrics = read_metadata(checkpoint)["metrics"] or {}
    if "recall@1" not in metrics:  # saved, but its evaluation failed or was interrupted: evaluate it now
        from .evaluation import evaluate_checkpoint

        metrics = {**metrics, **evaluate_checkpoint(checkpoint, data_root=config.data_root, device=config.device)}
    return metrics


def summarise(name: str, results: list[dict[str, Any]], images_per_step: int) -> dict[str, Any]:
    row: dict[str, Any] = {"combiner": name, "seeds": len(results)}
    for key in REPORTED:
        values = [r[key] for r in results]
        row[key] = statistics.mean(values)
        row[f"{key} std"] = statistics.stdev(values) if len(values) > 1 else 0.0
    # a run's speed is known when it recorded a positive training time; none known: None (a blank cell), not
    # nan, which would make a row unequal to itself and the CSV hold a value no spreadsheet reads as missing
    speed = [r["step"] / r["train_seconds"] for r in results if _timed(r)]
    row["steps/s"] = statistics.mean(speed) if speed else None
    row["images/s"] = row["steps/s"] * images_per_step if speed else None
    return row


def _timed(result: dict[str, Any]) -> bool:
    seconds, steps = result.get("train_seconds"), result.get("step")
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in (seconds, steps))
    return numbers and seconds > 0


def to_markdown(rows: list[dict[str, Any]]) -> str:
    head = "| combiner | seeds | " + " | ".join(f"{k} (mean ± std)" for k in REPORTED) + " | train steps/s | images/s |"
    lines = [head, "|---|---:|" + "---:|" * len(REPORTED) + "---:|---:|"]
    for r in sorted(rows, key=lambda r: -r["recall@1"]):
        cells = " | ".join(f"{100 * r[k]:.1f} ± {100 * r[k + ' std']:.1f}" for k in REPORTED)
        speed = "n/a" if r["steps/s"] is None else f"{r['steps/s']:.2f}"
        images = "n/a" if r["images/s"] is None else f"{r['images/s']:.0f}"
        lines.append(f"| {r['combiner']} | {r['seeds']} | {cells} | {speed} | {images} |")
    return "\n".join(lines) + "\n"


def to_csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def write_tables(rows: list[dict[str, Any]], out_dir: str | Path) -> tuple[Path, Path]:
    out_dir = Path(out_dir)
    md, cs = out_dir / "comparison.md", out_dir / "comparison.csv"
    atomic_write(md, lambda tmp: Path(tmp).write_text(to_markdown(rows)))
    atomic_write(cs, lambda tmp: Path(tmp).write_text(to_csv(rows)))
    return md, cs
