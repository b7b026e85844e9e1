"""Time one training step of each combiner against the floor every combiner pays.

The floor is the bare backbone's forward + backward on the same images (the sources
and the targets of a batch, 2 x batch images). A combiner's step is the whole
training step the engine runs: image and text encoders, combiner, normalisation,
loss, backward and the optimizer step. The ratio step / floor is what a combiner
costs on top of the backbone.

    python benchmarks/bench_step.py                      # every registered combiner, the cpu recipe's backbone
    python benchmarks/bench_step.py --combiners tirg concat --backbone resnet18 --device cuda --image-size 224

Each combiner is built and timed on its own, interleaved with the floor, and the
medians of the repeats are reported, so a noisy machine moves both alike; each
timing starts after one untimed step, so it measures a model's steady state (as in
training) rather than the cache misses of switching between models.
"""

from __future__ import annotations

import argparse
import dataclasses
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--combiners", nargs="*", default=None, help="default: every registered combiner")
    parser.add_argument("--backbone", default=None, help="a timm model name (default: the cpu recipe's half-width ResNet-18)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--iters", type=int, default=5, help="steps per timing")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved timings; the median is reported")
    args = parser.parse_args()

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
            floor_times.append(_time(floor, device, args.iters))
            step_times.append(_time(step, device, args.iters))
        step_ms, floor_ms = statistics.median(step_times) * 1000, statistics.median(floor_times) * 1000
        print(f"| {name} | {step_ms:.1f} | {floor_ms:.1f} | {step_ms / floor_ms:.2f} |", flush=True)
        del model, optimizer, step


if __name__ == "__main__":
    main()
