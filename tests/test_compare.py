"""The comparison runner: one table over combiners and seeds, resumable."""

from __future__ import annotations

import csv
import dataclasses
import io

import pytest
from typer.testing import CliRunner

from compose_retrieval import ComposeRetrievalError
from compose_retrieval.cli import app
from compose_retrieval.compare import REPORTED, run_comparison, summarise, to_csv, to_markdown, write_tables

from conftest import tiny_config


def test_summarise_mean_and_std():
    results = [
        {"recall@1": 0.2, "recall@5": 0.5, "recall@10": 0.6, "step": 10, "train_seconds": 5.0},
        {"recall@1": 0.4, "recall@5": 0.7, "recall@10": 0.8, "step": 10, "train_seconds": 2.5},
    ]
    row = summarise("tirg", results, images_per_step=64)
    assert row["seeds"] == 2
    assert abs(row["recall@1"] - 0.3) < 1e-12 and abs(row["recall@1 std"] - 0.1414213562) < 1e-9
    assert row["steps/s"] == 3.0 and row["images/s"] == 192.0


def test_run_comparison_trains_each_seed_and_resumes(tmp_path):
    base = tiny_config(steps=4, log_every=2)
    seen = []
    rows = run_comparison(base, ["tirg", "image_only"], {"tirg": [0, 1], "image_only": [0]}, tmp_path,
                          on_run=lambda n, s, m: seen.append((n, s)))
    assert seen == [("tirg", 0), ("tirg", 1), ("image_only", 0)]
    assert [r["combiner"] for r in rows] == ["tirg", "image_only"] and [r["seeds"] for r in rows] == [2, 1]
    assert (tmp_path / "tirg-seed1" / "model.safetensors").exists()

    # a second call reuses the finished runs instead of training again
    mtime = (tmp_path / "tirg-seed0" / "model.safetensors").stat().st_mtime_ns
    again = run_comparison(base, ["tirg", "image_only"], {"tirg": [0, 1], "image_only": [0]}, tmp_path)
    assert again == rows
    assert (tmp_path / "tirg-seed0" / "model.safetensors").stat().st_mtime_ns == mtime

    # ... but never mixes runs of another recipe into the table
    with pytest.raises(ComposeRetrievalError, match=r"tirg-seed0 was trained with another recipe \(steps: 4, now 5\)"):
        run_comparison(dataclasses.replace(base, steps=5), ["tirg"], {"tirg": [0]}, tmp_path)

    md, cs = write_tables(rows, tmp_path)
    text = md.read_text()
    assert text.startswith("| combiner | seeds |") and "| tirg | 2 |" in text and "| image_only | 1 |" in text
    parsed = list(csv.DictReader(io.StringIO(cs.read_text())))
    assert [p["combiner"] for p in parsed] == ["tirg", "image_only"]
    assert all(k in parsed[0] for k in REPORTED)
    assert to_markdown(rows) == text and to_csv(rows) == cs.read_text()


def test_compare_cli_rejects_unknown_combiner(tmp_path):
    result = CliRunner().invoke(app, ["compare", "--combiner", "tirgg", "--out", str(tmp_path)])
    assert result.exit_code == 1
    assert "did you mean 'tirg'" in result.output.lower()
    assert not any(tmp_path.iterdir())
