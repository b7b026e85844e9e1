"""How fast `compose-retrieval index` embeds a folder of photos on this machine.

Writes ``--images`` JPEG photos-like pictures (``--width`` x ``--height``, smooth colour fields
and shapes, so the decoder does the work a camera's file asks of it), saves a ResNet-18 model
(randomly initialised: speed does not depend on the weights) that resizes and centre-crops
to ``--image-size`` as a model trained on photos does, then times ``Index.build`` with each
``--workers`` value (a fresh index each time, interleaved over ``--repeats``; medians), and
an incremental rebuild of the unchanged folder. Images per second count the embedding
(decoding, preprocessing and the model's forward), as `index` prints them; wall seconds
include walking the folder and writing the index.

    python benchmarks/bench_index.py                      # 512 images of 640 x 480, ResNet-18 at 224
    python benchmarks/bench_index.py --images 2000 --workers 0 2
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from compose_retrieval import ComponentSpec, Index, ModelSpec, Preprocessing, build_model, save_pretrained
from compose_retrieval.preprocessing import IMAGENET_MEAN, IMAGENET_STD


def write_photos(folder: Path, count: int, width: int, height: int) -> None:
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    y, x = np.mgrid[0:height, 0:width]
    for i in range(count):
        a, b, c = rng.uniform(0, 1, 3)
        base = np.stack([(x / width * 255 * a), (y / height * 255 * b), np.full_like(x, 255 * c, dtype=float)], -1)
        image = Image.fromarray(base.astype(np.uint8))
        draw = ImageDraw.Draw(image)
        for _ in range(6):
            x0, y0 = int(rng.integers(0, width - 40)), int(rng.integers(0, height - 40))
            size = int(rng.integers(20, min(width, height) // 2))
            draw.ellipse((x0, y0, x0 + size, y0 + size), fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
        image.save(folder / f"photo_{i:05d}.jpg", quality=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        start = time.perf_counter()
        write_photos(tmp / "photos", args.images, args.width, args.height)
        print(f"wrote {args.images} JPEGs of {args.width}x{args.height} in {time.perf_counter() - start:.1f} s")
        spec = ModelSpec(combiner=ComponentSpec("tirg"), image_encoder=ComponentSpec("timm", {"model_name": args.backbone}),
                         text_encoder=ComponentSpec("lstm"))
        model = build_model(spec, Preprocessing(args.image_size, IMAGENET_MEAN, IMAGENET_STD, "resize_center_crop"))
        model.text_encoder.fit(["a placeholder vocabulary"])
        checkpoint = save_pretrained(model.eval(), tmp / "model.safetensors")

        rates: dict[int, list[float]] = {w: [] for w in args.workers}
        walls: dict[int, list[float]] = {w: [] for w in args.workers}
        for _ in range(args.repeats):
            for workers in args.workers:
                out = tmp / f"index-{workers}"
                shutil.rmtree(out, ignore_errors=True)
                start = time.perf_counter()
                index = Index.build(tmp / "photos", checkpoint, out, num_workers=workers, batch_size=args.batch_size,
                                    device="cpu", progress=False)
                walls[workers].append(time.perf_counter() - start)
                rates[workers].append(index.stats.images_per_second)
        start = time.perf_counter()
        again = Index.build(tmp / "photos", checkpoint, tmp / f"index-{args.workers[-1]}", num_workers=args.workers[-1],
                            device="cpu", progress=False)
        unchanged = time.perf_counter() - start
        assert again.stats.reused == args.images and again.stats.embedded == 0

    print(f"\n{args.backbone} at {args.image_size} px, {args.images} JPEGs of {args.width}x{args.height}, batch {args.batch_size}, "
          f"torch threads {torch.get_num_threads()}, cpus {os.cpu_count()}, medians of {args.repeats}\n")
    print("| workers | images/s (embedding) | wall seconds (whole build) |")
    print("|---:|---:|---:|")
    for workers in args.workers:
        print(f"| {workers} | {statistics.median(rates[workers]):.1f} | {statistics.median(walls[workers]):.1f} |")
    print(f"\nrebuilding the unchanged folder (every image reused): {unchanged:.2f} s")


if __name__ == "__main__":
    main()
