"""The comparison runner: one table over combiners and seeds, resumable."""

from __future__ import annotations

import csv
import dataclasses
import io
import json

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


def _result(seconds, recall=0.5, step=10):
    return {"recall@1": recall, "recall@5": recall, "recall@10": recall, "step": step, "train_seconds": seconds}


def test_a_run_too_fast_to_time_never_gives_nan():
    """A run that recorded no positive training time has no speed: it is left out of the mean, and when no run
    of a combiner has one its speed is None (blank in the CSV, n/a in the table), never nan."""
    row = summarise("tirg", [_result(0.0), _result(1e-6)], images_per_step=4)
    assert row["steps/s"] == pytest.approx(10 / 1e-6) and row["images/s"] == pytest.approx(4 * 10 / 1e-6)

    unknown = [_result(0.0), _result(-1.0), _result(float("inf")), {k: v for k, v in _result(1.0).items() if k != "train_seconds"}]
    row = summarise("tirg", unknown, images_per_step=4)
    assert row["steps/s"] is None and row["images/s"] is None
    assert row == summarise("tirg", unknown, images_per_step=4)  # nan would make a row unequal to itself
    assert "| tirg | 4 |" in to_markdown([row]) and "| n/a | n/a |" in to_markdown([row])
    parsed = next(csv.DictReader(io.StringIO(to_csv([row]))))
    assert parsed["steps/s"] == "" and parsed["images/s"] == ""
    assert "nan" not in to_markdown([row]).lower() and "nan" not in to_csv([row]).lower()


def test_an_interrupted_run_is_retrained_but_a_users_folder_is_refused(tmp_path):
    base = tiny_config(steps=2, log_every=1)
    # stopped before its checkpoint: config.json and metrics.jsonl only
    interrupted = tmp_path / "tirg-seed0"
    interrupted.mkdir()
    (interrupted / "config.json").write_text('{"steps": 2}')
    (interrupted / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0, "stale": true}\n')
    rows = run_comparison(base, ["tirg"], {"tirg": [0]}, tmp_path)
    assert rows[0]["seeds"] == 1 and rows[0]["steps/s"] > 0
    assert (interrupted / "model.safetensors").is_file()
    assert json.loads((interrupted / "config.json").read_text())["model"]["combiner"]["name"] == "tirg"
    assert "stale" not in (interrupted / "metrics.jsonl").read_text()

    # the same layout plus a file the comparison did not write: not its to clear
    users = tmp_path / "concat-seed0"
    users.mkdir()
    for name, text in (("config.json", "{}"), ("metrics.jsonl", ""), ("notes.txt", "my notes\n")):
        (users / name).write_text(text)
    with pytest.raises(ComposeRetrievalError, match=r"concat-seed0 holds another run.s files; choose a new --run-dir \(nothing in it was changed\)"):
        run_comparison(base, ["concat"], {"concat": [0]}, tmp_path)
    assert sorted(p.name for p in users.iterdir()) == ["config.json", "metrics.jsonl", "notes.txt"]
    assert (users / "notes.txt").read_text() == "my notes\n" and (users / "config.json").read_text() == "{}"


def test_a_saved_run_whose_evaluation_failed_is_evaluated_when_the_comparison_resumes(tmp_path):
    from compose_retrieval.checkpoint import load_checkpoint, save_checkpoint

    base = tiny_config(steps=2, log_every=1)
    run_comparison(base, ["tirg"], {"tirg": [0]}, tmp_path)
    checkpoint = tmp_path / "tirg-seed0" / "model.safetensors"
    model, meta = load_checkpoint(checkpoint)
    # as train() leaves it when the evaluation after its save fails: the model and recipe, no recall yet
    save_checkpoint(model, checkpoint, metrics={"step": 2, "train_seconds": 1.0}, recipe=meta["recipe"])
    rows = run_comparison(base, ["tirg"], {"tirg": [0]}, tmp_path)
    assert 0 <= rows[0]["recall@1"] <= 1 and rows[0]["steps/s"] == 2.0
