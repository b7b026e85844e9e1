"""The index path agrees with the evaluation path: a model trained on files written by make-css, its gallery folder
indexed and searched one query at a time through the CLI's commands, finds at rank 1 exactly what evaluation ranks
first, so the rank-1 share of `search` equals the checkpoint's recall@1 (benchmarks/search_agreement.py, the demo)."""

from __future__ import annotations

import importlib.util
import json

from compose_retrieval.evaluation import evaluate_checkpoint

from conftest import REPO_ROOT, TINY_CLI_MODEL, invoke


def _agreement_module():
    spec = importlib.util.spec_from_file_location("search_agreement", REPO_ROOT / "benchmarks" / "search_agreement.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_search_finds_at_rank_1_what_evaluation_scores(tmp_path):
    root = tmp_path / "CSS"
    result = invoke("data", "make-css", "--out", root, "--train-scenes", 48, "--test-scenes", 16, "--mods-per-scene", 3,
                    "--image-size", 32, "--style", "2d")
    assert result.exit_code == 0, result.output
    result = invoke("train", *TINY_CLI_MODEL, "--dataset", "css", "--data-root", root, "--run-dir", tmp_path / "run")
    assert result.exit_code == 0, result.output
    result = invoke("index", root / "images", "--model", tmp_path / "run", "--out", tmp_path / "index",
                    "--include", "css_test_*", "--no-progress")
    assert result.exit_code == 0, result.output
    recorded = evaluate_checkpoint(tmp_path / "run", data_root=str(root), device="cpu")["recall@1"]

    from compose_retrieval.index import Index

    index = Index.load(tmp_path / "index", device="cpu")
    found = _agreement_module().agreement(index, "css", str(root), "3d", {})
    assert found["queries"] == 48 and found["gallery"] == 16 * 4
    assert found["queries whose rank-1 image differs"] == 0
    assert found["search rank-1 share"] == found["evaluation recall@1"] == recorded
    assert 0 < recorded < 1  # both hits and misses: the counts compared are not both empty or both full

    # the first query through the command line: the same answer, its own source left out
    from compose_retrieval import registry

    protocol = registry.create("dataset", "css", data_root=str(root)).protocol("3d")
    source = protocol.query_images.paths[int(protocol.query_sources[0])]
    result = invoke("search", tmp_path / "index", "--image", source, "--text", protocol.query_texts[0], "-k", 3, "--json")
    assert result.exit_code == 0, result.output
    answer = json.loads(result.output)
    assert [r["path"] for r in answer["results"]] == index.search(source, protocol.query_texts[0], k=3).paths
    assert answer["query"]["excluded"] == source.name and source.name not in [r["path"] for r in answer["results"]]
