"""Time one training step of each combiner against the floor every combiner pays.

The floor is the bare backbone's forward + backward on the same images (the sources
and the targets of a batch, 2 x batch images). A combiner's step is the whole
training step the engine runs: image and text encoders, combiner, normalisation,
loss, backward and the optimizer step. The ratio step / floor is what a combiner
costs on top of the backbone.

    python benchmarks/bench_step.py                      # every registered combiner, the cpu recipe's backbone
    python benchmarks/bench_step.py --combiners tirg concat --backbone resnet18 --device cuda --image-size 224
    python benchmarks/bench_step.py --combiners tirg --profile        # and where a step's time goes

Each combiner is built and timed on its own, interleaved with the floor, and the
medians of the repeats are reported, so a noisy machine moves both alike; each
timing starts after one untimed step, so it measures a model's steady state (as in
training) rather than the cache misses of switching between models.

``--profile`` adds, for each combiner, the step's parts timed on their own (interleaved
with the whole step and the floor, medians): the image encoder's forward + backward
(the floor plus its pooling head), the text encoder's, the combiner's with the
normalisation and the loss (on fixed encoder outputs), and the optimizer's zero_grad +
step; "rest" is the step less the parts (the model's own glue, autograd's scheduling
across parts). Then torch.profiler's table of the operators with the most time in the
whole step.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import time

import torch

import compose_retrieval as cr
from compose_retrieval.model import ComponentSpec, build_model
from compose_retrieval.config import make_config
from compose_retrieval.optim import make_optimizer

TEXTS = ["make red circle at top-left blue", "add large gray triangle to bottom-right", "remove cyan rectangle"]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _time(fn, device: torch.device, iters: int) -> float:
    fn()  # untimed: the first step after switching models pays for cold caches, not for the model
    _sync(device)
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    _sync(device)
    return (time.perf_counter() - start) / iters


class _Quiet:
    """``--quiet``: a repeat starts when the other processes leave the CPUs idle, and is kept only if they did
    during it (Linux: /proc/stat and /proc/self/stat); so that a busy shared machine gives medians of quiet repeats.
    """

    def __init__(self, wait_s: float, max_other: float = 0.05):
        self.wait_s, self.max_other = wait_s, max_other  # max_other: other processes' CPU time / elapsed, in cores
        self.discarded = self.kept_busy = 0

    @staticmethod
    def _ticks() -> tuple[int, int]:
        """(busy ticks of the whole machine, ticks of this process), both in USER_HZ."""
        with open("/proc/stat") as f:
            user, nice, system, idle, iowait, *rest = (int(x) for x in f.readline().split()[1:])
        with open("/proc/self/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return user + nice + system + sum(rest[:3]), int(fields[11]) + int(fields[12])

    def others(self, since: tuple[int, int, float]) -> float:
        """The other processes' CPU use since ``since`` (from ``mark``), in cores."""
        busy, own = self._ticks()
        elapsed = max(time.perf_counter() - since[2], 1e-3)
        return (busy - since[0] - (own - since[1])) / os.sysconf("SC_CLK_TCK") / elapsed

    def mark(self) -> tuple[int, int, float]:
        return (*self._ticks(), time.perf_counter())

    def wait(self) -> None:
        deadline = time.perf_counter() + self.wait_s
        while time.perf_counter() < deadline:
            start = self.mark()
            time.sleep(1.0)
            if self.others(start) < self.max_other:
                return

    def run(self, timings):
        """``timings()`` once the machine is quiet, again while another process ran during it (at most 20 tries)."""
        for _ in range(20):
            self.wait()
            start = self.mark()
            result = timings()
            if self.others(start) < self.max_other:
                return result
            self.discarded += 1
        self.kept_busy += 1
        return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--combiners", nargs="*", default=None, help="default: every registered combiner")
    parser.add_argument("--backbone", default=None, help="a timm model name (default: the cpu recipe's half-width ResNet-18)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--iters", type=int, default=5, help="steps per timing")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved timings; the median is reported")
    parser.add_argument("--profile", action="store_true", help="time the step's parts and print the profiler's top operators")
    parser.add_argument("--quiet", type=float, default=0, metavar="SECONDS",
                        help="(Linux) start each repeat when other processes leave the CPUs idle, waiting at most SECONDS, "
                             "and redo a repeat during which they used more than 5%% of a core")
    args = parser.parse_args()
    quiet = _Quiet(args.quiet) if args.quiet else None

    device = torch.device(args.device)
    torch.manual_seed(0)
    combiners = args.combiners or cr.list_combiners()
    b, s = args.batch_size, args.image_size
    sources = torch.randn(b, 3, s, s, device=device).contiguous(memory_format=torch.channels_last)
    targets = torch.randn(b, 3, s, s, device=device).contiguous(memory_format=torch.channels_last)
    both = torch.cat([sources, targets])
    texts = [TEXTS[i % len(TEXTS)] for i in range(b)]
    config = make_config("cpu", backbone=args.backbone)
    loss_fn = cr.create("loss", config.loss)
    backbone = config.model.image_encoder.options

    floor_model = build_model(config.model).image_encoder
    floor_model.to(device).to(memory_format=torch.channels_last).train()

    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=config.amp and device.type == "cuda")

    def floor():
        floor_model.zero_grad(set_to_none=True)
        with autocast:
            loss = floor_model.features(both).float().mean()
        loss.backward()

    print(f"device {device}, backbone {backbone}, batch {b} (+{b} targets), images {s}x{s}, "
          f"torch {torch.__version__}, threads {torch.get_num_threads()}\n")
    print("| combiner | step (ms) | floor (ms) | step / floor |")
    print("|---|---:|---:|---:|")
    # One combiner at a time, as in training: with every model alive at once, the big
    # ones (attribute_operator's 134M weights) evict the small ones' caches.
    for name in combiners:
        model = build_model(dataclasses.replace(config.model, combiner=ComponentSpec(name)))
        model.text_encoder.fit(TEXTS)
        model.to(device).to(memory_format=torch.channels_last).train()
        optimizer = make_optimizer(model, config)

        def step():
            with autocast:  # as training does: bfloat16 on CUDA
                queries, target_embeddings = model(sources, texts, targets)
                loss = loss_fn(queries.float(), target_embeddings.float())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        floor_times, step_times = [], []
        for _ in range(args.repeats):
            pair = lambda: (_time(floor, device, args.iters), _time(step, device, args.iters))  # noqa: E731
            floor_time, step_time = quiet.run(pair) if quiet else pair()
            floor_times.append(floor_time)
            step_times.append(step_time)
        step_ms, floor_ms = statistics.median(step_times) * 1000, statistics.median(floor_times) * 1000
        print(f"| {name} | {step_ms:.1f} | {floor_ms:.1f} | {step_ms / floor_ms:.2f} |", flush=True)
        if args.profile:
            _profile(name, model, optimizer, step, floor, sources, targets, texts, loss_fn, autocast, device, args, quiet)
        del model, optimizer, step
    if quiet:
        print(f"\n--quiet: {quiet.discarded} repeats redone (another process used the CPU during them), "
              f"{quiet.kept_busy} kept after 20 tries")


def _profile(name, model, optimizer, step, floor, sources, targets, texts, loss_fn, autocast, device, args, quiet) -> None:
    """The parts of ``step`` timed on their own (interleaved, medians), then the profiler's top operators."""
    both = torch.cat([sources, targets])
    n = sources.shape[0]
    combiner = model.combiner
    parts = {"step": step, "floor (backbone)": floor}
    if combiner.uses_image:
        def image():
            model.zero_grad(set_to_none=True)
            with autocast:
                loss = model.image_encoder(both).pooled.float().mean()
            loss.backward()
        parts["image encoder"] = image
    if combiner.uses_text:
        def text():
            model.zero_grad(set_to_none=True)
            with autocast:
                loss = model.text_encoder(texts).sentence.float().mean()
            loss.backward()
        parts["text encoder"] = text
    if not combiner.conditions_image_encoder:
        with torch.no_grad(), autocast:  # fixed encoder outputs, leaves of the combiner's part
            features = model.image_encoder(both) if combiner.uses_image else None
            text_features = model.text_encoder(texts) if combiner.uses_text else None
            target_pooled = features.pooled[n:] if features is not None else model.image_encoder(targets).pooled

        def leaf(t):
            return t.detach().clone().requires_grad_(t.is_floating_point())

        def head():
            model.zero_grad(set_to_none=True)
            with autocast:
                image_leaf = cr.ImageFeatures(*(leaf(f[:n]) for f in features)) if features is not None else None
                text_leaf = cr.TextFeatures(*(leaf(t) for t in text_features)) if text_features is not None else None
                queries = model._compose(image_leaf, text_leaf)
                gallery = model.normalization(leaf(target_pooled))
                loss = loss_fn(queries.float(), gallery.float())
            loss.backward()
        parts["combiner + normalisation + loss"] = head
    step()  # gradients for the optimizer's part
    # kept aside: the other parts set the gradients to None (zero_grad), and AdamW skips a parameter without one, so
    # timing optimizer.step after them would time the combiner's parameters alone
    gradients = [(p, p.grad) for group in optimizer.param_groups for p in group["params"] if p.grad is not None]

    def optimizer_step():
        for p, g in gradients:
            p.grad = g
        optimizer.step()

    parts["optimizer"] = optimizer_step  # on the step's gradients: the same work as in training

    times = {part: [] for part in parts}
    for _ in range(args.repeats):
        each = lambda: {part: _time(fn, device, args.iters) for part, fn in parts.items()}  # noqa: E731
        for part, t in (quiet.run(each) if quiet else each()).items():
            times[part].append(t)
    ms = {part: statistics.median(t) * 1000 for part, t in times.items()}
    shown = [p for p in parts if p not in ("step", "floor (backbone)")]
    print(f"\n{name}: the step's parts, each timed on its own (median of {args.repeats} x {args.iters} steps)\n")
    print("| part | ms | of the step |")
    print("|---|---:|---:|")
    floor_ms = ms["floor (backbone)"]
    print(f"| floor: backbone forward + backward | {floor_ms:.1f} | {floor_ms / ms['step']:.0%} |")
    for part in shown:
        value = ms[part] - (floor_ms if part == "image encoder" else 0.0)
        label = "image encoder beyond the floor (its head)" if part == "image encoder" else part
        print(f"| {label} | {value:.1f} | {value / ms['step']:.0%} |")
    rest = ms["step"] - sum(ms[p] for p in shown)
    print(f"| rest (glue, scheduling) | {rest:.1f} | {rest / ms['step']:.0%} |")
    print(f"| **step** | {ms['step']:.1f} | 100% |\n")

    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(args.iters):
            step()
        _sync(device)
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=sort, row_limit=20))


if __name__ == "__main__":
    main()
