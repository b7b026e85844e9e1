"""The model zoo: shipped checkpoints reproduce their numbers; downloads are checked, cached, and refused offline."""

from __future__ import annotations

import http.server
import threading
from pathlib import Path

import pytest
import torch

import compose_retrieval
from compose_retrieval import CheckpointError, UnknownNameError, hookimpl
from compose_retrieval.checkpoint import read_metadata
from compose_retrieval.evaluation import evaluate_checkpoint
from compose_retrieval.zoo import pretrained_info, resolve, sha256_of, zoo_dir

from conftest import SAMPLE_TEXTS as TEXTS, invoke, tiny_model


def test_shipped_tirg_reproduces_its_recorded_recall():
    """Regenerates the css-synthetic test split from the seed recorded in the file and evaluates the float16 weights."""
    entry = pretrained_info("tirg-css-synthetic")
    path = resolve("tirg-css-synthetic", cache=Path("/nonexistent-cache"))
    assert path == zoo_dir() / entry.file and sha256_of(path) == entry.sha256
    metrics = evaluate_checkpoint("tirg-css-synthetic", device="cpu")
    assert abs(metrics["recall@1"] - entry.metrics["recall@1"]) < 0.005
    assert abs(read_metadata(path)["metrics"]["recall@1"] - entry.metrics["recall@1"]) < 0.005
    model, preprocessing = compose_retrieval.load_pretrained("tirg-css-synthetic")
    assert not model.training and preprocessing.image_size == 64
    assert compose_retrieval.list_pretrained("*-css-synthetic") == ["concat-css-synthetic", "tirg-css-synthetic"]


class _Server:
    """A checkpoint server on 127.0.0.1 that counts its requests."""

    def __init__(self, directory: Path):
        self.requests = 0
        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, directory=str(directory), **kwargs)

            def do_GET(self):
                server.requests += 1
                super().do_GET()

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"


@pytest.fixture
def served(tmp_path, clean_registry):
    """A tiny checkpoint behind a local HTTP server, and zoo entries for it (a right and a wrong sha256)."""
    model = tiny_model("tirg").place("cpu").eval()  # the layout load_pretrained gives, so the arithmetic is the same
    (tmp_path / "www").mkdir()
    path = compose_retrieval.save_pretrained(model, tmp_path / "www" / "tiny.safetensors", metrics={"recall@1": 0.25})
    server = _Server(tmp_path / "www")
    digest = sha256_of(path)

    class ZooPlugin:
        @hookimpl
        def register_pretrained(self, register):
            register("tiny-served", {"description": "a test checkpoint", "url": f"{server.url}/tiny.safetensors", "sha256": digest})
            register("tiny-tampered", {"url": f"{server.url}/tiny.safetensors", "sha256": "0" * 64})
            register("tiny-offline", {"url": f"{server.url}/tiny.safetensors", "sha256": digest,
                                      "command": "compose-retrieval zoo export RUN FILE"})

    compose_retrieval.register_plugin(ZooPlugin(), "test-zoo")
    yield model, server, tmp_path / "cache"
    server.httpd.shutdown()


def test_download_is_checked_cached_and_reused(served):
    model, server, cache = served
    loaded, _ = compose_retrieval.load_pretrained("tiny-served", cache_dir=cache)
    assert server.requests == 1 and (cache / "tiny-served.safetensors").is_file()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.compose(images, TEXTS[:2]), model.compose(images, TEXTS[:2]))
    compose_retrieval.load_pretrained("tiny-served", cache_dir=cache)
    assert server.requests == 1  # the second call is a cache hit
    assert not list(cache.glob(".*.part"))


def test_a_tampered_download_is_refused_and_not_kept(served):
    _, server, cache = served
    with pytest.raises(CheckpointError, match=r"sha256 [0-9a-f]{64}, not the 0{64}.*discarded"):
        compose_retrieval.load_pretrained("tiny-tampered", cache_dir=cache)
    assert server.requests == 1 and not any(cache.iterdir())


def test_offline_a_missing_file_says_how_to_get_it(served, monkeypatch):
    _, server, cache = served
    with pytest.raises(CheckpointError, match=r"downloads are off \(offline\); put the file at .*tiny-offline\.safetensors.*zoo export"):
        compose_retrieval.load_pretrained("tiny-offline", cache_dir=cache, offline=True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError, match="offline"):
        compose_retrieval.load_pretrained("tiny-offline", cache_dir=cache)
    assert server.requests == 0


def test_names_and_paths_that_do_not_exist(tmp_path):
    with pytest.raises(UnknownNameError, match="Did you mean 'tirg-css-synthetic'"):
        compose_retrieval.load_pretrained("tirg-css-synthetc")
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        compose_retrieval.load_pretrained(str(tmp_path / "nothing.safetensors"))


def test_half_precision_storage(tmp_path):
    model = tiny_model("tirg").eval()
    full = compose_retrieval.save_pretrained(model, tmp_path / "full.safetensors")
    half = compose_retrieval.save_pretrained(model, tmp_path / "half.safetensors", half=True)
    assert half.stat().st_size < 0.6 * full.stat().st_size
    loaded, _ = compose_retrieval.load_pretrained(half)
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(loaded.compose(images, TEXTS[:2]), model.compose(images, TEXTS[:2]), atol=0.02)


def test_zoo_cli_lists_and_describes():
    result = invoke("zoo", "list")
    assert result.exit_code == 0 and "tirg-css-synthetic" in result.stdout and "shipped" in result.stdout
    result = invoke("zoo", "info", "concat-css-synthetic")
    assert result.exit_code == 0 and '"dataset": "css-synthetic"' in result.stdout
    result = invoke("zoo", "info", "tirg-css-synthetc")
    assert result.exit_code == 1 and "Did you mean 'tirg-css-synthetic'" in result.stderr
