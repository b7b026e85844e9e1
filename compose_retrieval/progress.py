"""Rich progress bars: training (step, loss, speed) and a count of items (images embedded, pairs scored)."""

from __future__ import annotations

import time

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


__all__ = ["TrainingProgress", "CountProgress"]


class TrainingProgress:
    """Context manager; ``advance(loss, images)`` after each step. Disabled: does nothing."""

    def __init__(self, total: int, enabled: bool = True, start: int = 0):
        self.enabled = enabled
        self.total = total
        self.start = start  # the steps a resumed run had done
        self._progress = Progress(
            TextColumn("[bold]train"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f}"),
            TextColumn("{task.fields[speed]:.1f} it/s, {task.fields[images]:.0f} img/s"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            disable=not enabled,
        )
        self._ema: float | None = None

    def __enter__(self) -> "TrainingProgress":
        self._progress.__enter__()
        self._task = self._progress.add_task("train", total=self.total, completed=self.start, loss=float("nan"), speed=0.0,
                                            images=0.0)
        self._start = time.perf_counter()
        self._steps = 0
        self._images = 0
        return self

    def advance(self, loss: float, images: int) -> None:
        self._ema = loss if self._ema is None else 0.95 * self._ema + 0.05 * loss
        self._steps += 1
        self._images += images
        elapsed = max(time.perf_counter() - self._start, 1e-9)
        self._progress.update(self._task, advance=1, loss=self._ema, speed=self._steps / elapsed, images=self._images / elapsed)

    def __exit__(self, *exc) -> None:
        self._progress.__exit__(*exc)


class CountProgress:
    """Context manager over ``total`` items: ``advance(n)`` after each n; shows done / total, items a second, elapsed
    and remaining time. ``stderr``: draw on stderr (a command whose stdout is its result). Disabled: does nothing."""

    def __init__(self, description: str, total: int, enabled: bool = True, *, unit: str = "items", stderr: bool = False):
        from rich.console import Console

        self.total = total
        self._done = 0
        self._progress = Progress(
            TextColumn(f"[bold]{description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn(f"{{task.fields[speed]:.1f}} {unit}/s"), TimeElapsedColumn(), TimeRemainingColumn(),
            console=Console(stderr=True) if stderr else None, disable=not enabled,
        )

    def __enter__(self) -> "CountProgress":
        self._progress.__enter__()
        self._task = self._progress.add_task("", total=self.total, speed=0.0)
        self._start = time.perf_counter()
        return self

    def advance(self, n: int = 1) -> None:
        self._done += n
        speed = self._done / max(time.perf_counter() - self._start, 1e-9)
        self._progress.update(self._task, advance=n, speed=speed)

    def __exit__(self, *exc) -> None:
        self._progress.__exit__(*exc)
