"""Training on several processes (``torchrun``): the process group, the global batch's embeddings, rank 0's work.

``torchrun --nproc-per-node N -m compose_retrieval train ...`` starts N processes with RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT in their environment; ``session`` joins
them into one process group (NCCL when the run is on CUDA, each process on the GPU of its
local rank; gloo on the CPU). Without torchrun (or with one process) nothing here does
anything, and training is the single-process loop, unchanged.

How N processes x B/N make one process x B, step for step:

- The batch. ``config.batch_size`` is the global batch B. Every process draws the same
  batch (``batching.RunOrder``, ``SameSourceBatches``: seeded, not per process) and takes
  its share, the ``rank``-th of N equal runs; so the shares, in rank order, are exactly
  the single process's batch, in its order.
- The loss. Each process embeds its B/N queries and targets; ``gather`` concatenates every
  process's embeddings in rank order (an all-gather that carries gradients), and every
  process computes the loss over the whole B x B batch: the single process's loss, the same
  value in every process (so the logged loss curve is the single process's, and a
  divergence stops every process at the same step).
- The gradients. All N processes compute the same loss L, so the all-gather's backward,
  which sums over processes the gradients with respect to each process's slice, gives
  process r the gradient N * dL/de_r for its own embeddings e_r. Backpropagated through its
  own B/N items, that is N * (the part of dL/dtheta that flows through e_r).
  DistributedDataParallel then averages the parameter gradients over the N processes:
  (1/N) * sum_r N * dL/dtheta|_(e_r) = sum_r dL/dtheta|_(e_r) = dL/dtheta, the single
  process's gradient. No rescaling is needed; the factors N and 1/N are exact in floating
  point for N a power of two, and the only differences left are the order in which a sum
  over the batch is accumulated (B/N items per process, then the all-reduce's sum) and the
  kernels chosen for a batch of B/N rather than B: float rounding, not a bias. (Every
  parameter is upstream of the embeddings: the losses hold none.)
- What is not batch-equivalent: BatchNorm computes its statistics over the batch it sees.
  On CUDA the training loop makes every BatchNorm a ``torch.nn.SyncBatchNorm`` (statistics
  over the global batch; see ``sync_batchnorm``); torch's SyncBatchNorm refuses CPU tensors,
  so on the CPU (gloo) each process normalises over its own B/N items (and DDP gives every
  process rank 0's running statistics): a model with BatchNorm trains close to, not exactly
  like, one process (the loop warns once). Dropout masks come from each process's own random
  stream (rank 0 keeps the single process's; the others are seeded from (seed, rank, step)
  and saved in the run state), so they are the same in distribution, not the same masks.

Rank 0 alone writes files (config.json, metrics.jsonl, states, checkpoints) and prints;
``on_main`` runs such work on rank 0 while the others wait for its result (or its error,
which every process then raises, so that none waits forever).
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import os
import pickle
import signal
import threading
import warnings
from typing import Any, Callable, Iterator, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from .errors import ComposeRetrievalError, OptionError

__all__ = [
    "launched", "active", "rank", "world_size", "local_rank", "local_world_size", "is_main", "device_for", "session",
    "gather", "on_main", "everywhere", "raised_everywhere", "broadcast", "sync_batchnorm", "has_batchnorm", "data_parallel",
    "random_state", "set_random_state", "gather_random_states", "seed_rank", "StopRequests", "TIMEOUT",
]

T = TypeVar("T")
E = TypeVar("E", bound=BaseException)

# how long a process waits at a collective: rank 0's evaluation (the test protocol, at the end) runs while the others
# wait, and torch's default NCCL timeout (10 minutes) is shorter than a large gallery's evaluation may take
TIMEOUT = datetime.timedelta(minutes=60)


def launched() -> bool:
    """Whether this process is one of several started by torchrun (WORLD_SIZE > 1 in the environment)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        return False


def active() -> bool:
    """Whether a process group of more than one process is joined (training is distributed now)."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank: the process group's, else torchrun's RANK, else 0."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    try:
        return int(os.environ.get("RANK", "0")) if launched() else 0
    except ValueError:
        return 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def local_rank() -> int:
    try:
        return int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError:
        return 0


def local_world_size() -> int:
    """How many processes torchrun started on this machine (they share its cores)."""
    try:
        return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))) if launched() else 1
    except ValueError:
        return 1


def is_main() -> bool:
    """Rank 0 (or the only process): the one that writes files and prints."""
    return rank() == 0


def device_for(device: torch.device) -> torch.device:
    """The device of this process: under torchrun a CUDA run takes the GPU of its local rank (cuda:LOCAL_RANK,
    whatever index --device named); anything else is ``device`` itself."""
    if launched() and device.type == "cuda":
        return torch.device("cuda", local_rank())
    return device


@contextlib.contextmanager
def session(device: torch.device) -> Iterator[None]:
    """Within it, this process is in torchrun's process group: NCCL when ``device`` is CUDA, gloo on the CPU.

    Does nothing when the process was not started by torchrun with several processes, or when
    a process group is already joined (the CLI joins before training does; a test may join
    itself): the group is left to whoever made it.
    """
    if not launched() or not dist.is_available() or dist.is_initialized():
        yield
        return
    if device.type == "cuda":
        if local_rank() >= torch.cuda.device_count():
            raise OptionError(f"torchrun started local rank {local_rank()} but this machine has {torch.cuda.device_count()} "
                              "CUDA GPU(s): give --nproc-per-node at most that many")
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", timeout=TIMEOUT, device_id=device)
    elif device.type == "cpu":
        dist.init_process_group("gloo", timeout=TIMEOUT)
    else:
        raise OptionError(f"distributed training runs on CUDA (NCCL) or the CPU (gloo), not on {device.type}; "
                          "use --device cuda or --device cpu under torchrun")
    try:
        yield
    except BaseException:
        dist.destroy_process_group()  # no barrier: the other processes may never reach it
        raise
    # Every process finishes its collectives before any tears the group down: a process that destroys its gloo
    # group while a peer still has work in flight leaves C++ threads holding tensors that die at interpreter exit,
    # an abort ("terminate called without an active exception"), the failure pytorch/pytorch PR 179291 describes.
    dist.barrier()
    dist.destroy_process_group()


class _Gather(torch.autograd.Function):
    """all_gather with a backward: each process's slice gets the sum over processes of the gradients of that slice.

    torch has this as ``torch.distributed.nn.functional.all_gather``, deprecated in torch 2.14 (a FutureWarning at
    every call) for ``torch.distributed._functional_collectives``, a private module; these lines use only the public
    collectives, on any backend (the backward is an all-reduce, which gloo has, not a reduce-scatter, which it
    lacks; the tensors are a batch of embeddings, so the extra traffic does not matter).
    """

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.contiguous()
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor)
        ctx.rows = tensor.shape[0]
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = dist.get_rank() * ctx.rows
        return grad[start : start + ctx.rows]


def gather(tensor: torch.Tensor) -> torch.Tensor:
    """Every process's ``tensor`` concatenated along dim 0 in rank order, with gradients: the backward pass sums, for
    each process's slice, the gradients of all processes (see the module's note on why that needs no rescaling).
    Every process must give a tensor of the same shape. With one process: ``tensor`` itself."""
    if not active():
        return tensor
    return _Gather.apply(tensor)


def broadcast(value: T) -> T:
    """Rank 0's ``value`` (any picklable object), in every process."""
    if not active():
        return value
    box = [value if is_main() else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _portable(exc: BaseException) -> BaseException:
    """``exc`` if it survives pickling (to be raised in the other processes), else a ComposeRetrievalError of its text."""
    try:
        copy = pickle.loads(pickle.dumps(exc))
        return copy if type(copy) is type(exc) and str(copy) == str(exc) else ComposeRetrievalError(str(exc))
    except Exception:
        return ComposeRetrievalError(f"{str(exc) or type(exc).__name__}")


def everywhere(exc: E) -> E:
    """Mark ``exc`` as an error every process raises at the same point (a copy of rank 0's, a divergence of the loss
    they share, a stop they agreed on): the command line prints it from rank 0 alone. Returns ``exc``."""
    with contextlib.suppress(AttributeError, TypeError):
        exc.raised_by_every_process = True  # type: ignore[attr-defined]
    return exc


def raised_everywhere(exc: BaseException) -> bool:
    return bool(getattr(exc, "raised_by_every_process", False))


def on_main(work: Callable[[], T]) -> T:
    """``work()`` on rank 0 alone, the other processes waiting for it; every process returns its result, or raises
    its error (rank 0 the error itself, the others a copy), so that no process waits for one that failed.
    With one process: ``work()``."""
    if not active():
        return work()
    outcome: tuple[bool, Any] = (True, None)
    error: BaseException | None = None
    if is_main():
        try:
            outcome = (True, work())
        except BaseException as exc:  # a KeyboardInterrupt too: the others must not wait for rank 0
            error = exc
            outcome = (False, _portable(exc))
    ok, value = broadcast(outcome)
    if error is not None:
        raise everywhere(error)
    if not ok:
        raise everywhere(value)
    return value


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def sync_batchnorm(model: nn.Module) -> Callable[[], None]:
    """Make every BatchNorm of ``model`` a SyncBatchNorm (its statistics over the global batch, on CUDA) that shares
    the BatchNorm's parameters and buffers; returns the function that puts the BatchNorms back (the trained model is
    then the model the single-process path would have: same modules, same state dict)."""
    swapped: list[tuple[nn.Module, str, nn.Module]] = []
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.modules.batchnorm._BatchNorm) and not isinstance(child, nn.SyncBatchNorm):
                # convert_sync_batchnorm gives the new module the very same weight, bias and statistics tensors
                setattr(parent, name, nn.SyncBatchNorm.convert_sync_batchnorm(child))
                swapped.append((parent, name, child))

    def restore() -> None:
        for parent, name, child in swapped:
            setattr(parent, name, child)

    return restore


def random_state() -> dict[str, str]:
    """This process's torch random state (and its GPU's, when it uses one), as base64 text for a run state's JSON."""
    states = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state()
    return {k: base64.b64encode(v.numpy().tobytes()).decode("ascii") for k, v in states.items()}


def set_random_state(states: dict[str, str]) -> None:
    """Restore what ``random_state`` gave (in the same process of a resumed run)."""

    def tensor(text: str) -> torch.Tensor:
        return torch.from_numpy(np.frombuffer(base64.b64decode(text), dtype=np.uint8).copy())

    try:
        torch.set_rng_state(tensor(states["cpu"]))
        if "cuda" in states and torch.cuda.is_available():
            torch.cuda.set_rng_state(tensor(states["cuda"]))
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise ComposeRetrievalError(f"the run state's random state of rank {rank()} cannot be read ({str(exc)[:100]})") from None


def gather_random_states() -> list[dict[str, str]] | None:
    """Every process's ``random_state``, in rank order (a collective: every process calls it); None with one."""
    if not active():
        return None
    states: list[Any] = [None] * world_size()
    dist.all_gather_object(states, random_state())
    return states


def seed_rank(seed: int, step: int) -> None:
    """Give a process other than rank 0 a random stream of its own (dropout masks), from (seed, rank, step);
    rank 0 keeps the stream the single process would have."""
    if rank() != 0:
        torch.manual_seed(int(np.random.SeedSequence((seed, rank(), step)).generate_state(1)[0]))


def data_parallel(model: nn.Module, device: torch.device, *, seed: int, step: int,
                  saved_random: list[dict[str, str]] | None = None) -> tuple[nn.Module, Callable[[], None]]:
    """What runs a training step on several processes: this process's random stream (the one a resumed run saved
    for it, else ``seed_rank``), SyncBatchNorm on CUDA (a warning on the CPU, where torch has none), and ``model``
    wrapped in DistributedDataParallel. Returns the module to call and the function that puts the BatchNorms back
    (which does nothing when none was swapped). With one process: ``model`` itself."""
    if world_size() == 1:
        return model, lambda: None
    if saved_random and len(saved_random) == world_size():
        if rank():
            set_random_state(saved_random[rank()])
    else:
        seed_rank(seed, step)
    restore: Callable[[], None] = lambda: None  # noqa: E731
    if device.type == "cuda":  # statistics over the global batch, as one process computes them
        restore = sync_batchnorm(model)
    elif is_main() and has_batchnorm(model):
        warnings.warn("on the CPU each process computes BatchNorm statistics over its own share of the batch "
                      "(SyncBatchNorm needs a GPU): this model trains close to, not exactly as, one process with "
                      "the whole batch", RuntimeWarning, stacklevel=4)
    # static_graph: the same parameters take part at every step, and a combiner that leaves an encoder unused needs
    # no find_unused_parameters traversal
    wrapped = nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None, static_graph=True)
    return wrapped, restore


class StopRequests:
    """Ctrl-C under torchrun: torchrun passes SIGINT to every process, each at another point of its step; a
    KeyboardInterrupt in the middle of a collective would leave the others waiting. Within this context each process
    only notes the signal, and ``agreed()`` (a collective, once per step) tells every process at the same step
    whether any of them got one, so all stop together and rank 0 saves. With one process it does nothing (the
    KeyboardInterrupt is raised where it lands, as always)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.requested = False
        self._previous: Any = None
        self._installed = False

    def _note(self, signum, frame) -> None:
        self.requested = True

    def __enter__(self) -> "StopRequests":
        if active() and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._note)
            self._installed = True
        return self

    def __exit__(self, *exc) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._previous)
            self._installed = False

    def agreed(self) -> bool:
        """Whether any process was interrupted (a 1-element all-reduce; every process calls it at the same step)."""
        if not active():
            return False
        flag = torch.tensor([1.0 if self.requested else 0.0], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())
