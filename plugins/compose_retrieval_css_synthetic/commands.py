"""`compose-retrieval data make-css`: css-synthetic written in the original CSS layout."""

from __future__ import annotations

from pathlib import Path

import typer


def make_css(
    out: Path = typer.Option(..., help="A new (or empty) folder for the CSS files."),
    seed: int = typer.Option(0, help="css-synthetic's seed."),
    train_scenes: int = typer.Option(2400, help="Source scenes of the train split."),
    test_scenes: int = typer.Option(400, help="Source scenes of the test split."),
    mods_per_scene: int = typer.Option(5, help="Modifications (and targets) per source scene."),
    image_size: int = typer.Option(64, help="Side of the rendered PNGs in pixels."),
    style: str = typer.Option("3d", help="3d: rendered in CLEVR's manner, as CSS's PNGs are; 2d: flat drawings."),
) -> None:
    """Write css-synthetic as css_toy_dataset_novel2_small.dup.npy plus images/css_<split>_<idx>.png."""
    from compose_retrieval.cli import console, errors_as_exit

    from .cssfiles import write_css
    from .dataset import CSSSynthetic

    with errors_as_exit():
        dataset = CSSSynthetic(
            seed=seed, train_scenes=train_scenes, test_scenes=test_scenes, mods_per_scene=mods_per_scene, image_size=image_size, style=style
        )
        write_css(dataset, out)
    counts = ", ".join(f"{name} {len(s.scenes)} images / {len(s.texts)} pairs" for name, s in dataset.splits.items())
    console.print(f"wrote {out}: {counts}")
