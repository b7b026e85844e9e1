"""One training loop for every combiner, encoder, loss and dataset."""

from __future__ import annotations

import contextlib
import json
import math
import os
import shlex
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import torch

from . import distributed, registry
from .batching import endless, training_loader
from .checkpoint import atomic_write, load_checkpoint, save_checkpoint
from .config import RESUMABLE_CHANGES, TrainConfig, recipe_of
from .devices import resolve_device, seed_everything
from .errors import ComposeRetrievalError, DatasetError, OptionError, RunInterrupted
from .evaluation import evaluate
from .model import ComposedRetrievalModel, build_model
from .optim import make_optimizer, make_scheduler
from .progress import TrainingProgress
from .resume import STATE_NAME, has_state, load_state, peek_state, save_state
from .rundir import BEST_NAME, CHECKPOINT_NAME, MetricsLog, claim_run_dir
from .validation import hold_out
from .zoo import resolve

__all__ = ["TrainResult", "train", "resume", "check_finite"]


@dataclass
class TrainResult:
    model: ComposedRetrievalModel
    metrics: dict[str, Any]
    run_dir: Path | None
    config: TrainConfig


def train(
    config: TrainConfig,
    *,
    progress: bool = True,
    on_log: Callable[[dict[str, Any]], None] | None = None,
) -> TrainResult:
    """Train ``config.model`` on ``config.dataset``, evaluate it, save it in ``config.run_dir``.

    Every ``save_every`` steps, at the end and on Ctrl-C, the run directory gets a
    resumable state (``resume(run_dir)`` continues it exactly). A run that stops before it
    has saved anything (a bad option met late, a divergence) removes the files it wrote,
    so the same ``--run-dir`` can be used again.

    Started by torchrun with several processes, every process calls it with the same config
    and they train as one process would with ``config.batch_size`` (the global batch; see
    ``compose_retrieval.distributed``); rank 0 alone writes the run directory and calls
    ``on_log``, and every process returns the result.
    """
    config.validate()
    run_dir = Path(config.run_dir) if config.run_dir else None
    with distributed.session(distributed.device_for(resolve_device(config.device))):
        created = distributed.is_main() and bool(run_dir) and not run_dir.exists()
        if run_dir:
            distributed.on_main(lambda: claim_run_dir(run_dir, config))
        try:
            return _run(config, run_dir, progress, on_log, resuming=False)
        except BaseException:
            if distributed.is_main() and run_dir and not (run_dir / CHECKPOINT_NAME).exists() and not has_state(run_dir):
                for name in ("config.json", "metrics.jsonl"):
                    (run_dir / name).unlink(missing_ok=True)
                if created:  # a folder this run made and left empty goes too
                    with contextlib.suppress(OSError):
                        run_dir.rmdir()
            raise


def resume(run_dir: str | Path, *, progress: bool = True, on_log: Callable[[dict[str, Any]], None] | None = None,
           **changes: Any) -> TrainResult:
    """Continue the run in ``run_dir`` from its last resumable state, with its recorded config.

    ``changes`` may set only what says where or how fast it runs (RESUMABLE_CHANGES: device,
    num_workers, ...); anything else would make it another run, and is refused.
    """
    run_dir = Path(run_dir)
    refused = sorted(k for k, v in changes.items() if k not in RESUMABLE_CHANGES and v is not None)
    if refused:
        raise OptionError(f"--resume continues {run_dir} with the config it recorded; {', '.join(refused)} cannot change "
                          f"(only {', '.join(RESUMABLE_CHANGES)} can); start a new run to change it")
    if not (run_dir / "config.json").is_file():
        raise ComposeRetrievalError(f"{run_dir} is not a run directory (no config.json); give the folder a run wrote")
    if not has_state(run_dir):
        raise ComposeRetrievalError(f"{run_dir} holds no resumable state ({STATE_NAME}); it stopped before its first "
                                    "save: start it again")
    try:
        recorded = TrainConfig.from_dict(json.loads((run_dir / "config.json").read_text()))
    except (ValueError, TypeError, KeyError) as exc:
        raise ComposeRetrievalError(f"{run_dir / 'config.json'} cannot be read ({str(exc)[:200]}); the run cannot be resumed") from None
    config = replace(recorded, run_dir=str(run_dir), **{k: v for k, v in changes.items() if v is not None})
    config.validate()
    with distributed.session(distributed.device_for(resolve_device(config.device))):  # every process loads the state
        return _run(config, run_dir, progress, on_log, resuming=True)


def _run(config: TrainConfig, run_dir: Path | None, progress: bool, on_log, *, resuming: bool) -> TrainResult:
    seed_everything(config.seed)
    device = distributed.device_for(resolve_device(config.device))
    rank, world = distributed.rank(), distributed.world_size()
    main = rank == 0  # the process that writes files, prints and evaluates
    if config.num_workers is None:  # decoding in parallel pays on a GPU; on a CPU it takes the cores from training
        cores = max(1, (os.cpu_count() or 1) // distributed.local_world_size())
        config = replace(config, num_workers=min(4, cores) if device.type == "cuda" else 0)

    dataset = registry.create("dataset", config.dataset, data_root=config.data_root, **config.dataset_options)
    loss_name = config.loss or dataset.default_loss
    if loss_name is None:
        raise OptionError(f"dataset {config.dataset!r} names no default loss; choose one with --loss (see `compose-retrieval list losses`)")
    config = replace(config, loss=loss_name, mods_per_source=config.mods_per_source or getattr(dataset, "mods_per_source", 1))
    if config.init_from and not resuming:
        model, _ = load_checkpoint(resolve(config.init_from))
        model.preprocessing = dataset.preprocessing
        config = replace(config, model=model.spec)  # the model is the checkpoint's, vocabulary included
    else:
        model = build_model(config.model, dataset.preprocessing)
        if not resuming:  # a resumed run's vocabulary comes from its state
            model.text_encoder.fit(dataset.train_texts())
    if run_dir and not resuming and main:  # the resolved config (the loss the dataset chose, the model of --init-from)
        atomic_write(run_dir / "config.json", lambda tmp: Path(tmp).write_text(json.dumps(config.to_dict(), indent=2)))
    loss_fn = registry.create("loss", loss_name, **config.loss_options)
    protocol = dataset.protocol(config.protocol)
    train_set = dataset.train_set(seed=config.seed, protocol=protocol.name)
    validation = None
    if config.eval_every:
        validation = dataset.validation(config.seed, protocol.name)
        if validation is None:
            count = config.val_pairs or max(1, min(500, len(train_set) // 10))
            train_set, validation = hold_out(train_set, count, config.seed)

    state_path = run_dir / STATE_NAME if run_dir else None
    start, best = 0, None
    if resuming:
        state_step, extra = peek_state(state_path)
        model.load_extra_state_metadata(extra.get("model_extra_state") or {})
    model.place(device).train()
    optimizer = make_optimizer(model, config)
    scheduler = make_scheduler(optimizer, config)
    if resuming:
        start, extra = load_state(state_path, model=model, optimizer=optimizer, scheduler=scheduler)
        best = extra.get("best")
        if start >= config.steps:
            raise ComposeRetrievalError(f"{run_dir} finished its {config.steps} steps; evaluate it with "
                                        f"`{_command('evaluate', run_dir, config)}`")

    def save_state_now(step: int, *, together: bool = True) -> None:
        """Rank 0 writes the state. ``together``: every process calls it at this step (their random states join
        the state; a failed write stops them all); else only rank 0 does, touching no collective."""
        ranks_random = distributed.gather_random_states() if together else None

        def write() -> None:
            if state_path:
                extra = {"best": best, "model_extra_state": model.extra_state_metadata()}
                if ranks_random:  # the other processes' dropout streams, for an exact resume with as many processes
                    extra["rank_random"] = ranks_random
                save_state(state_path, model=model, optimizer=optimizer, scheduler=scheduler, step=step, extra=extra)

        if together:
            distributed.on_main(write)
        elif main:
            write()

    loader = training_loader(train_set, config, device, start, rank=rank, world=world)
    log = MetricsLog(run_dir if main else None, keep_until=start, tensorboard=config.tensorboard)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=config.amp and device.type == "cuda")
    forward, restore_batchnorm = distributed.data_parallel(
        model, device, seed=config.seed, step=start, saved_random=extra.get("rank_random") if resuming else None)
    forward = torch.compile(forward) if config.compile else forward
    recipe = {**recipe_of(config), "protocol": protocol.name}

    started = time.perf_counter()
    running, done, stopped_together = 0.0, start, False
    try:
        try:
            with TrainingProgress(config.steps, enabled=progress and main, start=start) as bar, \
                    distributed.StopRequests(device) as stops:
                batches = endless(loader)
                for step in range(start, config.steps):
                    batch = next(batches)
                    lr = scheduler.get_last_lr()[0] / optimizer.param_groups[0]["lr_scale"]
                    sources = batch["source"].to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
                    targets = batch["target"].to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
                    with autocast:
                        queries, target_embeddings = forward(sources, batch["text"], targets)
                        if world > 1:  # the global batch, in rank order: the single process's loss, in every process
                            queries, target_embeddings = _gather_pairs(queries, target_embeddings, world)
                        loss = loss_fn(queries.float(), target_embeddings.float())
                    value = loss.item()  # the step's one host sync
                    if not math.isfinite(value):  # the loss of the global batch: every process stops here
                        raise distributed.everywhere(ComposeRetrievalError(
                            f"training diverged: the loss became {value} at step {step + 1}; lower --lr"
                            + (" (the last resumable state is before it)" if start or step >= config.save_every > 0 else " (nothing was saved)")
                        ))
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    scheduler.step()
                    running += value
                    done = step + 1
                    if done % config.log_every == 0 or done == config.steps:
                        n = min(done - start, done % config.log_every or config.log_every)
                        elapsed = time.perf_counter() - started
                        record = {"step": done, "loss": running / n, "lr": lr, "seconds": round(elapsed, 2),
                                  "images_per_second": round((done - start) * config.batch_size * 2 / elapsed, 1)}
                        running = 0.0
                        log.write(record)
                        if on_log and main:
                            on_log(record)
                    if validation is not None and (done % config.eval_every == 0 or done == config.steps):

                        def validate(done: int = done) -> dict[str, Any] | None:  # on rank 0, the others waiting
                            scores = evaluate(model, validation, batch_size=config.eval_batch_size, device=device,
                                              num_workers=config.num_workers)
                            log.write({"step": done, "validation": scores})
                            if best is None or scores["recall@1"] > best["recall@1"]:
                                if run_dir:
                                    check_finite(model, f"at step {done}")
                                    save_checkpoint(model, run_dir / BEST_NAME, metrics={"step": done, "validation": scores},
                                                    recipe=recipe)
                                return {"step": done, "recall@1": scores["recall@1"]}
                            return best

                        best = distributed.on_main(validate)
                    if config.save_every and done % config.save_every == 0 and done < config.steps:
                        save_state_now(done)
                    bar.advance(value, config.batch_size * 2)
                    # Ctrl-C under torchrun: every process stops at the next logged step (agreeing is an all-reduce
                    # read on the host: on a GPU every step it would wait for each backward and optimizer step)
                    if done % config.log_every == 0 and stops.agreed():
                        stopped_together = True
                        raise KeyboardInterrupt
        finally:  # the model keeps the BatchNorms it was built with (the same tensors), whatever ended the loop
            restore_batchnorm()
    except KeyboardInterrupt:
        # with several processes, one interrupted alone (not through StopRequests) saves without the others
        together = stopped_together or world == 1
        if state_path and done > start:
            save_state_now(done, together=together)
        if state_path and has_state(run_dir) and (together or main):
            raise distributed.everywhere(RunInterrupted(
                f"interrupted at step {done} of {config.steps}; the run is saved: continue it with "
                f"`{_command('train', run_dir, config)}`")) from None
        raise
    train_seconds = time.perf_counter() - started
    check_finite(model, f"after {config.steps} steps")
    save_state_now(config.steps)

    def finish() -> dict[str, Any]:  # on rank 0, the others waiting for its metrics
        # the model is saved before it is evaluated: an evaluation that fails (a broken gallery image) loses nothing
        metrics: dict[str, Any] = {"step": config.steps, "train_seconds": train_seconds}
        if dataset.skipped_images:
            metrics["skipped_images"] = dataset.skipped_images
        if best is not None:
            metrics["best_validation"] = best
        checkpoint = run_dir / CHECKPOINT_NAME if run_dir else None
        if checkpoint:
            save_checkpoint(model, checkpoint, metrics=metrics, recipe=recipe)
        try:
            metrics = {**evaluate(model, protocol, batch_size=config.eval_batch_size, device=device, num_workers=config.num_workers), **metrics}
        except Exception as exc:
            if checkpoint:
                kind = DatasetError if isinstance(exc, DatasetError) else ComposeRetrievalError
                raise kind(f"evaluation failed: {_first_line(exc)} (the trained model is saved: {checkpoint}; "
                           f"evaluate it with `{_command('evaluate', run_dir, config)}` once that is fixed)") from exc
            raise
        metrics["eval_seconds"] = round(time.perf_counter() - started - train_seconds, 1)
        log.write({"eval": metrics})
        log.close()
        if checkpoint:
            save_checkpoint(model, checkpoint, metrics=metrics, recipe=recipe)
        return metrics

    metrics = distributed.on_main(finish)
    model.eval()
    return TrainResult(model, metrics, run_dir, config)


def _gather_pairs(queries: torch.Tensor, targets: torch.Tensor, world: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every process's (queries, targets), concatenated in rank order: one all-gather of both, with gradients."""
    n = queries.shape[0]
    both = distributed.gather(torch.cat([queries, targets])).unflatten(0, (world, 2, n))
    return both[:, 0].flatten(0, 1), both[:, 1].flatten(0, 1)


def _command(what: str, run_dir: Path, config: TrainConfig) -> str:
    """The command that evaluates or resumes ``run_dir``: a checkpoint never chooses the data root, so it is given."""
    words = ["compose-retrieval", "evaluate", str(run_dir)] if what == "evaluate" else ["compose-retrieval", "train", "--resume", str(run_dir)]
    if what == "train" and distributed.active():  # a distributed run continues as it was started
        words[:1] = ["torchrun", "--nproc-per-node", str(distributed.local_world_size()), "-m", "compose_retrieval"]
    if what == "evaluate" and config.data_root is not None:
        words += ["--data-root", str(config.data_root)]
    return shlex.join(words)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[-1] if isinstance(exc, DatasetError) and text else (text.splitlines()[0] if text else type(exc).__name__)


def check_finite(model: torch.nn.Module, when: str) -> None:
    """A model whose weights hold nan or inf is an error, not a result: training diverged."""
    bad = [name for name, p in model.named_parameters() if not bool(torch.isfinite(p).all())]
    if bad:
        raise ComposeRetrievalError(
            f"training diverged: {len(bad)} weight tensor(s) hold nan or inf {when} (first: {bad[0]}); "
            "lower --lr (nothing was saved)"
        )
