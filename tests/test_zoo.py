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
    assert [p.name for p in cache.iterdir()] == ["tiny-served.safetensors"]  # no temporary left behind


def test_a_tampered_download_is_refused_and_not_kept(served):
    _, server, cache = served
    with pytest.raises(CheckpointError, match=r"sha256 [0-9a-f]{64}, not the 0{64}.*discarded"):
        compose_retrieval.load_pretrained("tiny-tampered", cache_dir=cache)
    assert server.requests == 1 and not any(cache.iterdir())


@pytest.fixture
def file_zoo(tmp_path, clean_registry, monkeypatch):
    """A tiny checkpoint reachable by file:// URLs: as a plain URL and as a Hugging Face id under HF_ENDPOINT."""
    hub = tmp_path / "hub"
    folder = hub / "owner" / "repo" / "resolve" / "main" / "sub"
    folder.mkdir(parents=True)
    path = compose_retrieval.save_pretrained(tiny_model("concat").eval(), folder / "tiny.safetensors")
    monkeypatch.setenv("HF_ENDPOINT", hub.as_uri())
    digest = sha256_of(path)

    class ZooPlugin:
        @hookimpl
        def register_pretrained(self, register):
            register("tiny-file", {"url": path.as_uri(), "sha256": digest})
            register("tiny-hub", {"hf_hub_id": "owner/repo/sub/tiny.safetensors", "sha256": digest})
            register("tiny-absent", {"url": (tmp_path / "absent.safetensors").as_uri(), "sha256": digest})
            register("tiny-bad-id", {"hf_hub_id": "no-repo", "sha256": digest})

    compose_retrieval.register_plugin(ZooPlugin(), "test-file-zoo")
    return path, tmp_path / "cache"


@pytest.mark.parametrize("name", ["tiny-file", "tiny-hub"])
def test_file_urls_and_hub_ids_download_the_same_bytes(file_zoo, name):
    """torch.hub fetches file:// as http://; a Hub id is its public address (no huggingface_hub), here under HF_ENDPOINT."""
    original, cache = file_zoo
    assert resolve(name, cache=cache) == cache / f"{name}.safetensors"
    assert (cache / f"{name}.safetensors").read_bytes() == original.read_bytes()
    assert [p.name for p in cache.iterdir()] == [f"{name}.safetensors"]  # no temporary left behind


def test_the_final_name_appears_only_once_checked(file_zoo, monkeypatch):
    from compose_retrieval import zoo

    _, cache = file_zoo
    seen = []

    def spy(path):
        seen.append((Path(path).name, (cache / "tiny-file.safetensors").exists()))
        return sha256_of(path)

    monkeypatch.setattr(zoo, "sha256_of", spy)
    resolve("tiny-file", cache=cache)
    assert len(seen) == 1 and seen[0][0].startswith(".tiny-file.safetensors.") and seen[0][1] is False
    assert (cache / "tiny-file.safetensors").is_file()


def test_a_failed_download_is_one_line_and_leaves_nothing(file_zoo):
    _, cache = file_zoo
    with pytest.raises(CheckpointError, match=r"cannot download 'tiny-absent' from file://.*absent\.safetensors: ") as info:
        resolve("tiny-absent", cache=cache)
    assert "\n" not in str(info.value) and not any(cache.iterdir())
    with pytest.raises(CheckpointError, match="hf_hub_id 'no-repo'.*must be owner/repo/path/in/repo") as info:
        resolve("tiny-bad-id", cache=cache)
    assert "\n" not in str(info.value)


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


def test_a_plugin_cannot_replace_a_manifest_entry(clean_registry):
    """A shipped name keeps its meaning: a plugin registering it is a warning, and the manifest's entry is used."""
    from compose_retrieval.zoo import pretrained_info

    class Impostor:
        @hookimpl
        def register_pretrained(self, register):
            register("tirg-css-synthetic", {"url": "https://example.invalid/other.safetensors", "sha256": "0" * 64})

    compose_retrieval.register_plugin(Impostor(), "impostor-zoo")
    with pytest.warns(RuntimeWarning, match="'impostor-zoo' registers the zoo name 'tirg-css-synthetic', which the manifest"):
        entry = pretrained_info("tirg-css-synthetic")
    assert entry.file == "tirg-css-synthetic.safetensors" and entry.url is None
