"""The search page's HTTP layer (FastAPI's TestClient): search by upload and by indexed path, only indexed image
files served (no traversal, no other suffix), only this server's host names answered (DNS rebinding), uploads
size-limited, decoded in memory (huge ones smaller) and never written, one-line errors without paths of the
machine; and the `serve` command."""

from __future__ import annotations

import io
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image

pytest.importorskip("fastapi", reason='the serve extra: pip install "compose-retrieval[serve]"')
from fastapi.testclient import TestClient  # noqa: E402

from compose_retrieval.errors import ComposeRetrievalError  # noqa: E402
from compose_retrieval.serve import CONTENT_TYPES, create_app  # noqa: E402

from conftest import SAMPLE_TEXTS, assert_one_line_error, invoke, tiny_model  # noqa: E402

COLOURS = {"red.png": (220, 30, 30), "green.png": (30, 200, 30), "sub/blue.png": (30, 30, 220), "sub/white.jpg": (250, 250, 250)}


def client_of(app, host: str = "localhost") -> TestClient:
    """A test client naming the server as a browser on this machine would (TestClient's own "testserver" is refused)."""
    return TestClient(app, base_url=f"http://{host}")


def png_bytes(colour=(10, 20, 30), size=(8, 8), fmt="PNG") -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, fmt)
    return out.getvalue()


@dataclass
class FakeResult:
    paths: list[str]
    scores: list[float]

    def to_dict(self) -> dict:
        return {"results": [{"rank": i + 1, "path": p, "score": s} for i, (p, s) in enumerate(zip(self.paths, self.scores))]}


class FakeIndex:
    """What create_app uses of an Index: paths, file_path (refusing anything not indexed), search -> to_dict()."""

    def __init__(self, folder: Path, paths: list[str]):
        self.folder, self.paths = folder, paths
        self.identity = {"name": "fake-model", "path": "/somewhere/private/fake.safetensors", "sha256": "ab" * 32}
        self.backend, self.skipped = "exact", [{"path": "broken.png", "reason": "unreadable"}]
        self.calls: list[tuple] = []

    def file_path(self, relative: str) -> Path:
        if relative not in self.paths:
            raise ComposeRetrievalError(f"{relative!r} is not a file of the index")
        return self.folder / relative

    def search(self, image=None, text=None, k=10):
        if image is None and text is not None:
            raise ComposeRetrievalError("this model's combiner needs an image: give one")
        self.calls.append((image, text, k))
        ranked = [p for p in reversed(self.paths) if not (isinstance(image, Path) and image == self.folder / p)]
        return FakeResult(ranked[:k], [1.0 - 0.125 * i for i in range(len(ranked[:k]))])


@pytest.fixture
def served(tmp_path):
    folder = tmp_path / "photos"
    for name, colour in COLOURS.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), colour).save(folder / name)
    (folder / "not-indexed.png").write_bytes(png_bytes())
    (tmp_path / "secret.txt").write_text("outside the folder")
    index = FakeIndex(folder, sorted(COLOURS))
    client = client_of(create_app(index, max_upload_bytes=4096, default_k=3))
    return index, client, folder


def listing(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*")}


def test_the_page_and_its_files_are_served(served):
    _, client, _ = served
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'src="/static/app.js"' in page.text and 'href="/static/style.css"' in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert client.get("/static/app.js").headers["content-type"].startswith("text/javascript")
    assert client.get("/static/style.css").headers["content-type"].startswith("text/css")
    assert client.get("/static/index.html").status_code == 404  # only the named files
    assert client.get("/static/..%2Fserve.py").status_code == 404


def test_info_says_what_the_index_holds(served):
    index, client, _ = served
    info = client.get("/api/info").json()
    assert info["size"] == 4 and info["backend"] == "exact" and info["skipped"] == 1
    assert info["model"] == {"name": "fake-model", "path": "fake.safetensors", "sha256": "ab" * 32}  # no local folder
    assert info["image_alone"] and info["image_and_text"] and info["text_alone"] is False  # unknown -> image needed
    assert info["max_upload_bytes"] == 4096 and info["default_k"] == 3


def test_info_allows_text_only_when_the_combiner_ignores_the_image(served):
    index, client, _ = served

    class Combiner:
        uses_image = False

    index.model = type("Model", (), {"combiner": Combiner()})()
    assert client.get("/api/info").json()["text_alone"] is True


def test_sample_spreads_over_the_index(served):
    index, client, _ = served
    body = client.get("/api/sample", params={"n": 2}).json()
    assert body["total"] == 4
    assert [s["path"] for s in body["samples"]] == [index.paths[0], index.paths[2]]
    assert all(s["url"] == "/files/" + s["path"] for s in body["samples"])
    assert len(client.get("/api/sample", params={"n": 50}).json()["samples"]) == 4


def test_search_by_path_returns_the_index_results_with_urls(served):
    index, client, folder = served
    response = client.post("/api/search", data={"path": "sub/blue.png", "text": "make it red", "k": "2"})
    assert response.status_code == 200, response.text
    body = response.json()
    expected = index.search(folder / "sub/blue.png", "make it red", 2).to_dict()["results"]
    assert [{k: r[k] for k in ("rank", "path", "score")} for r in body["results"]] == expected
    assert [r["url"] for r in body["results"]] == ["/files/sub/white.jpg", "/files/red.png"]
    assert body["query"] == {"text": "make it red", "k": 2, "path": "sub/blue.png", "url": "/files/sub/blue.png"}
    image, text, k = index.calls[0]
    assert image == folder / "sub" / "blue.png" and text == "make it red" and k == 2
    # also as a url-encoded form, and default k
    assert len(client.post("/api/search", content=b"path=red.png&text=x",
                           headers={"content-type": "application/x-www-form-urlencoded"}).json()["results"]) == 3


def test_search_by_upload_decodes_in_memory_and_writes_nothing(served, monkeypatch):
    index, client, folder = served
    before = listing(folder)

    def no_disk(*args, **kwargs):
        raise AssertionError("the upload went to a temporary file")

    for name in ("SpooledTemporaryFile", "TemporaryFile", "NamedTemporaryFile", "mkstemp"):
        monkeypatch.setattr(tempfile, name, no_disk)
    upload = png_bytes((200, 10, 10), (12, 9))
    response = client.post("/api/search", files={"image": ("query.png", upload, "image/png")},
                           data={"text": "make it blue", "k": "4"})
    assert response.status_code == 200, response.text
    assert [r["path"] for r in response.json()["results"]] == list(reversed(index.paths))
    assert response.json()["query"] == {"text": "make it blue", "k": 4, "upload": "query.png", "width": 12, "height": 9}
    image, text, k = index.calls[-1]
    assert isinstance(image, Image.Image) and image.mode == "RGB" and image.size == (12, 9)
    assert image.getpixel((0, 0)) == (200, 10, 10) and text == "make it blue" and k == 4
    assert listing(folder) == before  # nothing new or changed in the indexed folder
    # image only (no text) and JPEG work too
    response = client.post("/api/search", files={"image": ("q.jpg", png_bytes(fmt="JPEG"), "image/jpeg")})
    assert response.status_code == 200 and index.calls[-1][1] is None and index.calls[-1][2] == 3


def test_oversized_uploads_are_413(served):
    index, client, folder = served
    big = png_bytes(size=(8, 8)) + b"\0" * 5000  # a readable PNG with trailing bytes, over the 4096-byte limit
    response = client.post("/api/search", files={"image": ("big.png", big, "image/png")}, data={"text": "x"})
    assert response.status_code == 413 and "larger than 4 KB" in response.json()["error"]
    # a declared Content-Length over the limit is refused before the body is read
    declared = client.post("/api/search", content=b"x" * 10, headers={
        "content-type": "multipart/form-data; boundary=b", "content-length": str(10 * 2**20)})
    assert declared.status_code == 413
    # a chunked body (no Content-Length) is cut off while it is read
    chunked = client.post("/api/search", content=iter([b"--b\r\n"] + [b"y" * 8192] * 20),
                          headers={"content-type": "multipart/form-data; boundary=b"})
    assert chunked.status_code == 413
    # the image itself within the form limit but over the file limit
    response = client.post("/api/search", files={"image": ("big.png", png_bytes() + b"\0" * 4100, "image/png")})
    assert response.status_code == 413
    assert index.calls == [] and "big.png" not in listing(folder)


def test_a_non_image_upload_is_400_with_a_clear_message(served):
    index, client, _ = served
    response = client.post("/api/search", files={"image": ("notes.txt", b"hello, not an image", "text/plain")},
                           data={"text": "x"})
    assert response.status_code == 400
    assert response.json() == {"error": "the uploaded file 'notes.txt' is not an image (JPEG, PNG, WebP, ...) that Pillow can read"}
    truncated = png_bytes(size=(64, 64))[:60]
    assert client.post("/api/search", files={"image": ("cut.png", truncated, "image/png")}).status_code == 400
    assert client.post("/api/search", files={"image": ("empty.png", b"", "image/png")}).json()["error"] == \
        "the uploaded file 'empty.png' is empty"
    assert index.calls == []


@pytest.mark.parametrize("form, status, fragment", [
    ({}, 400, "give an image"),
    ({"text": "   "}, 400, "give an image"),
    ({"path": "red.png", "k": "zero"}, 400, "k must be a whole number"),
    ({"path": "red.png", "k": "0"}, 400, "k must be at least 1"),
    ({"path": "not-indexed.png"}, 404, "not an image of the index"),
    ({"path": "../secret.txt"}, 404, "not an image of the index"),
    ({"path": "/etc/passwd"}, 404, "not an image of the index"),
    ({"text": "only a text"}, 400, "needs an image"),  # the index's own error, as one line
])
def test_bad_queries_are_one_line_errors(served, form, status, fragment):
    _, client, _ = served
    response = client.post("/api/search", data=form)
    assert response.status_code == status
    assert fragment in response.json()["error"] and "\n" not in response.json()["error"]


def test_upload_and_path_together_are_refused(served):
    _, client, _ = served
    response = client.post("/api/search", files={"image": ("q.png", png_bytes(), "image/png")}, data={"path": "red.png"})
    assert response.status_code == 400 and "not both" in response.json()["error"]


def test_an_unsupported_body_is_415(served):
    _, client, _ = served
    assert client.post("/api/search", json={"path": "red.png"}).status_code == 415


def test_only_files_of_the_index_are_served(served):
    _, client, folder = served
    ok = client.get("/files/sub/blue.png")
    assert ok.status_code == 200 and ok.headers["content-type"] == "image/png" and ok.content == (folder / "sub/blue.png").read_bytes()
    assert client.get("/files/sub/white.jpg").headers["content-type"] == "image/jpeg"
    assert ok.headers["x-content-type-options"] == "nosniff"
    head = client.head("/files/sub/blue.png")
    assert head.status_code == 200 and head.headers["content-type"] == "image/png" and head.content == b""
    assert client.head("/files/not-indexed.png").status_code == 404
    for url in [
        "/files/not-indexed.png",  # in the folder, not in the index
        "/files/missing.png",
        "/files/../secret.txt",  # normalised away by the client: /secret.txt
        "/files/%2e%2e/secret.txt",
        "/files/sub/%2e%2e/%2e%2e/secret.txt",
        "/files/..%2fsecret.txt",
        "/files/%2fetc%2fpasswd",
        "/files//etc/passwd",
        f"/files/{folder}/red.png",  # an absolute path to an indexed file
        "/files/sub%5c..%5c..%5csecret.txt",
        "/files/red.png%00.txt",
        "/files/%2e/red.png",
        "/files/sub//blue.png",
    ]:
        response = client.get(url)
        assert response.status_code == 404, url
        assert response.content != (folder.parent / "secret.txt").read_bytes()


def test_traversal_is_refused_even_when_file_path_would_allow_it(served):
    """Defence in depth: the server checks the path itself (relative, no '..', in index.paths) before file_path."""
    index, client, folder = served
    index.file_path = lambda relative: folder / relative  # a careless index
    for url in ["/files/%2e%2e/secret.txt", "/files/sub/%2e%2e/%2e%2e/secret.txt", f"/files/{folder.parent}/secret.txt",
                "/files/not-indexed.png"]:
        assert client.get(url).status_code == 404, url
    assert client.post("/api/search", data={"path": "../secret.txt"}).status_code == 404
    assert index.calls == []


def test_a_file_removed_since_indexing_is_404(served):
    _, client, folder = served
    (folder / "red.png").unlink()
    assert client.get("/files/red.png").status_code == 404


def test_only_image_files_are_served_even_when_the_index_lists_others(tmp_path):
    """A hand-edited index.json could list any file of the folder: only the image suffixes an index reads are served."""
    from compose_retrieval.index import INDEX_SUFFIXES

    assert sorted(CONTENT_TYPES) == sorted(INDEX_SUFFIXES)
    folder = tmp_path / "photos"
    (folder / ".git").mkdir(parents=True)
    (folder / "notes.txt").write_text("private notes")
    (folder / ".git" / "config").write_text("[remote]")
    (folder / "old.gif").write_bytes(png_bytes(fmt="GIF"))
    (folder / "red.PNG").write_bytes(png_bytes((220, 30, 30)))
    index = FakeIndex(folder, ["notes.txt", ".git/config", "old.gif", "red.PNG"])
    client = client_of(create_app(index))
    for relative in ("notes.txt", ".git/config", "old.gif"):
        assert client.get("/files/" + relative).status_code == 404, relative
        assert client.head("/files/" + relative).status_code == 404, relative
        assert client.post("/api/search", data={"path": relative}).status_code == 404, relative
    ok = client.get("/files/red.PNG")  # the suffix in any case, as the index reads it
    assert ok.status_code == 200 and ok.headers["content-type"] == "image/png"
    assert index.calls == []


@pytest.mark.parametrize("host", ["localhost", "localhost:8765", "LOCALHOST:80", "127.0.0.1", "127.0.0.1:8765",
                                  "[::1]", "[::1]:8765", "192.168.1.5:8000", "myhost.lan:8765"])
def test_requests_naming_this_server_are_answered(served, host):
    index, _, _ = served
    client = client_of(create_app(index, allowed_hosts=["MyHost.lan"]), host)
    assert client.get("/files/red.png").status_code == 200
    assert client.get("/api/info").status_code == 200


@pytest.mark.parametrize("host", ["attacker.example", "attacker.example:8765", "localhost.attacker.example",
                                  "127.0.0.1.nip.io:8765", "testserver", "[::1", "localhost:http", ""])
def test_other_host_names_are_refused_against_dns_rebinding(served, host):
    """A page of attacker.example whose name now resolves to 127.0.0.1 must not read the index through the browser."""
    index, client, _ = served
    for url in ("/files/red.png", "/api/info", "/api/sample", "/"):
        response = client.get(url, headers={"host": host})
        assert response.status_code == 400, (host, url)
        assert "\n" not in response.json()["error"] and response.headers["x-content-type-options"] == "nosniff"
    refused = client.post("/api/search", data={"path": "red.png", "text": "x"}, headers={"host": host})
    assert refused.status_code == 400 and index.calls == []
    if host.startswith("attacker"):
        assert "--allow-host attacker.example" in refused.json()["error"]


def test_allowed_hosts_must_be_names_or_addresses(served):
    index, _, _ = served
    for bad in ["http://x.example", "x.example:8000", "*.example", "", "a b"]:
        with pytest.raises(ComposeRetrievalError, match="is not a host name or address"):
            create_app(index, allowed_hosts=[bad])
    create_app(index, allowed_hosts=["::", "0.0.0.0", "[fd00::1]", "box.local"])


def solid(size, fmt="PNG", colour=(40, 90, 200)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return out.getvalue()


def test_huge_uploads_are_decoded_smaller_or_refused(tmp_path, monkeypatch):
    """Memory: a small file may hold a huge image. Over the pixel cap it is refused from its header; a large one
    under it reaches the search reduced (JPEG at a smaller scale by draft) to a shorter side of at least the bound
    (1024, or 4x the model's input side), and a normal one as it is, so it searches exactly as the file does."""
    from PIL import JpegImagePlugin

    folder = tmp_path / "photos"
    folder.mkdir()
    index = FakeIndex(folder, [])
    client = client_of(create_app(index, max_upload_bytes=2**20))
    drafts: list[tuple] = []
    real_draft = JpegImagePlugin.JpegImageFile.draft
    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft",
                        lambda self, mode, size: drafts.append((self.size, size)) or real_draft(self, mode, size))

    def upload(name: str, data: bytes):
        assert len(data) < 2**20  # tiny on disk
        return client.post("/api/search", files={"image": (name, data)}, data={"text": "make it red"})

    over = upload("huge.png", solid((6000, 6000)))  # 36 million pixels
    assert over.status_code == 413
    assert over.json()["error"] == ("the uploaded image 'huge.png' has 6000x6000 pixels, more than 25 million; "
                                    "scale it down first")
    assert index.calls == []

    big = upload("big.png", solid((4800, 4000)))  # 19.2 million pixels: reduced by 3
    assert big.status_code == 200, big.text
    assert index.calls[-1][0].size == (1600, 1334) and index.calls[-1][0].mode == "RGB"
    assert big.json()["query"] == {"text": "make it red", "k": 12, "upload": "big.png", "width": 4800, "height": 4000,
                                   "decoded": [1600, 1334]}
    assert index.calls[-1][0].getpixel((800, 600)) == (40, 90, 200)

    photo = upload("photo.jpg", solid((4800, 3600), "JPEG"))  # decoded at half scale by the JPEG decoder itself
    assert photo.status_code == 200, photo.text
    assert drafts == [((4800, 3600), (1024, 1024))] and index.calls[-1][0].size == (2400, 1800)
    assert photo.json()["query"]["decoded"] == [2400, 1800]

    normal = upload("normal.png", solid((3000, 2047)))  # shorter side under 2 x 1024: decoded as it is
    assert normal.status_code == 200 and index.calls[-1][0].size == (3000, 2047)
    assert "decoded" not in normal.json()["query"]

    # the bound follows the model's input side: 4 x 512 = 2048, so 4800x4000 is reduced by 1 (not at all)
    index.preprocessing = type("Preprocessing", (), {"image_size": 512})()
    assert upload("big.png", solid((4800, 4000))).status_code == 200 and index.calls[-1][0].size == (4800, 4000)
    assert upload("bigger.png", solid((4800, 4800))).status_code == 200 and index.calls[-1][0].size == (2400, 2400)


def test_uploads_are_decoded_and_searched_one_at_a_time(served, monkeypatch):
    """Concurrent requests never hold two decoded uploads at once, and all decode on one thread (whose malloc
    arena then reuses the memory; a pool's threads would each keep their own)."""
    import asyncio
    import threading
    import time

    import httpx

    import compose_retrieval.serve as serve

    index, _, _ = served
    guard, active, peak, threads = threading.Lock(), [0], [0], set()

    def exclusive(work):
        def wrapped(*args, **kwargs):
            with guard:
                active[0] += 1
                peak[0] = max(peak[0], active[0])
                threads.add(threading.get_ident())
            try:
                time.sleep(0.02)
                return work(*args, **kwargs)
            finally:
                with guard:
                    active[0] -= 1
        return wrapped

    monkeypatch.setattr(serve, "_decode_image", exclusive(serve._decode_image))
    index.search = exclusive(index.search)
    app = create_app(index, max_upload_bytes=4096)

    async def burst():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
            uploads = [client.post("/api/search", files={"image": (f"q{i}.png", png_bytes((i, i, i)), "image/png")})
                       for i in range(6)]
            picks = [client.post("/api/search", data={"path": "red.png"}) for _ in range(2)]
            return await asyncio.gather(*uploads, *picks)

    responses = asyncio.run(burst())
    assert [r.status_code for r in responses] == [200] * 8
    assert peak[0] == 1 and len(index.calls) == 8 and len(threads) == 1


def test_the_serve_extra_missing_is_one_line(monkeypatch):
    import builtins

    import compose_retrieval.serve as serve

    real_import = builtins.__import__

    def without_fastapi(name, *args, **kwargs):
        if name.split(".")[0] == "fastapi":
            raise ImportError("No module named 'fastapi'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", without_fastapi)
    with pytest.raises(ComposeRetrievalError, match=r'pip install "compose-retrieval\[serve\]"'):
        serve.create_app(object())


def test_loopback_hosts():
    from compose_retrieval.cli.serve import is_loopback

    assert all(map(is_loopback, ["127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost"]))
    assert not any(map(is_loopback, ["0.0.0.0", "::", "192.168.1.5", "example.org"]))


# ------------------------------------------------------------------ a real tiny index


def make_tiny_index(tmp_path: Path, n: int = 12):
    """A folder of n small drawn images (PNG, a JPEG and a WebP, one in a subfolder) indexed with a randomly
    initialised tiny tirg checkpoint."""
    import compose_retrieval
    from PIL import ImageDraw

    from compose_retrieval.index import Index
    from compose_retrieval.preprocessing import Preprocessing

    folder = tmp_path / "images"
    (folder / "more").mkdir(parents=True)
    colours = [(220, 40, 40), (40, 180, 60), (40, 70, 220), (230, 200, 40), (160, 60, 200), (40, 200, 200)]
    for i in range(n):
        image = Image.new("RGB", (40, 32), (245, 245, 245))
        draw = ImageDraw.Draw(image)
        box = [4 + 3 * (i % 4), 4 + 2 * (i % 3), 24 + 2 * (i % 5), 26]
        (draw.ellipse if i % 2 else draw.rectangle)(box, fill=colours[i % len(colours)])
        name = f"more/shape-{i:02d}.png" if i % 5 == 4 else f"shape-{i:02d}." + {0: "jpg", 7: "webp"}.get(i, "png")
        image.save(folder / name)
    model = tiny_model("tirg").eval()
    model.preprocessing = Preprocessing(32, compose_retrieval.IMAGENET_MEAN, compose_retrieval.IMAGENET_STD)
    checkpoint = compose_retrieval.save_pretrained(model, tmp_path / "tiny.safetensors")
    return Index.build(folder, checkpoint, tmp_path / "index", device="cpu", progress=False)


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    index = make_tiny_index(tmp_path_factory.mktemp("real"))
    return index, client_of(create_app(index, max_upload_bytes=2**20, default_k=5))


def test_a_real_index_answers_as_index_search(real):
    index, client = real
    text = SAMPLE_TEXTS[0]
    query = index.paths[3]
    body = client.post("/api/search", data={"path": query, "text": text, "k": "4"}).json()
    expected = index.search(index.file_path(query), text, 4)
    assert [r["path"] for r in body["results"]] == expected.paths and query not in expected.paths  # itself excluded
    assert [r["score"] for r in body["results"]] == pytest.approx(expected.scores)
    assert body["query"]["mode"] == "composed" and body["query"]["excluded"] == query
    # an upload of the same pixels ranks the same (itself included: it is not a file of the index)
    upload = index.file_path(query).read_bytes()
    body = client.post("/api/search", files={"image": ("mine" + index.file_path(query).suffix, upload)},
                       data={"text": text, "k": "4"}).json()
    with Image.open(index.file_path(query)) as image:
        expected = index.search(image.convert("RGB"), text, 4)
    assert [r["path"] for r in body["results"]] == expected.paths
    assert [r["score"] for r in body["results"]] == pytest.approx(expected.scores)
    # image alone
    body = client.post("/api/search", data={"path": query}).json()
    assert [r["path"] for r in body["results"]] == index.search(index.file_path(query), None, 5).paths
    assert body["query"]["mode"] == "image"


def test_a_real_index_serves_its_files_and_info(real):
    index, client = real
    info = client.get("/api/info").json()
    assert info["size"] == len(index.paths) == 12 and info["text_alone"] is False
    assert info["model"]["sha256"] == index.identity["sha256"] and info["model"]["path"] == "tiny.safetensors"
    types = {"shape-00.jpg": "image/jpeg", "shape-07.webp": "image/webp", "more/shape-04.png": "image/png"}
    for relative, kind in types.items():
        response = client.get("/files/" + relative)
        assert response.status_code == 200 and response.headers["content-type"] == kind
        assert response.content == index.file_path(relative).read_bytes()
    assert client.get("/files/%2e%2e/tiny.safetensors").status_code == 404
    assert client.get("/files/%2e%2e/index/index.json").status_code == 404
    assert client.post("/api/search", data={"text": "make it red"}).json()["error"].startswith("this model composes")


def test_an_indexed_file_that_changed_is_named_by_its_relative_path(tmp_path):
    """The index reads a picked file itself; when it changed since indexing, the error names the relative path,
    says to index again and never shows where the folder is on this machine, nor a remedy for datasets."""
    index = make_tiny_index(tmp_path, n=6)
    client = client_of(create_app(index))
    index.file_path("shape-00.jpg").write_bytes(b"not a JPEG any more")
    response = client.post("/api/search", data={"path": "shape-00.jpg", "text": SAMPLE_TEXTS[0]})
    assert response.status_code == 400
    message = response.json()["error"]
    assert message.startswith("the indexed file 'shape-00.jpg' cannot be read any more (cannot identify image file")
    assert message.endswith("it changed since it was indexed; run compose-retrieval index again")
    assert str(tmp_path) not in message and "dataset-opt" not in message and "\n" not in message
    index.file_path("more/shape-04.png").unlink()
    response = client.post("/api/search", data={"path": "more/shape-04.png"})
    assert response.status_code == 404 and response.json()["error"] == (
        "the indexed file 'more/shape-04.png' is gone from the folder; run compose-retrieval index again")
    # the other files still answer
    assert client.post("/api/search", data={"path": "shape-01.png"}).status_code == 200


def test_serve_command_errors_are_one_line(tmp_path):
    import compose_retrieval.cli.serve  # noqa: F401  (registers the command until cli/__init__ imports it)

    assert_one_line_error(invoke("serve", tmp_path / "nowhere"), "nowhere")


def test_serve_command_loads_the_index_and_warns_off_loopback(real, monkeypatch):
    import uvicorn

    import compose_retrieval.cli.serve  # noqa: F401

    index, _ = real
    seen = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, host, port, **kw: seen.update(app=app, host=host, port=port))
    result = invoke("serve", index.directory, "--max-upload-mb", "0.5", "-k", "7", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert (seen["host"], seen["port"]) == ("127.0.0.1", 8000) and "warning" not in result.stderr
    assert "12 images; open http://127.0.0.1:8000/" in result.stderr
    info = client_of(seen["app"], "127.0.0.1:8000").get("/api/info").json()
    assert info["max_upload_bytes"] == 2**19 and info["default_k"] == 7 and info["size"] == 12
    result = invoke("serve", index.directory, "--host", "0.0.0.0", "--port", "8123", "--device", "cpu")
    assert result.exit_code == 0 and (seen["host"], seen["port"]) == ("0.0.0.0", 8123)
    assert "warning: listening on 0.0.0.0" in " ".join(result.stderr.split())
    assert "--allow-host NAME" in " ".join(result.stderr.split())
    # the names given with --allow-host (and --host) are answered, others refused
    result = invoke("serve", index.directory, "--host", "myhost.lan", "--allow-host", "search.example",
                    "--allow-host", "[fd00::5]", "--device", "cpu")
    assert result.exit_code == 0, result.output
    for name, status in [("myhost.lan:8000", 200), ("search.example", 200), ("[fd00::5]:8000", 200),
                         ("192.168.1.5:8000", 200), ("attacker.example", 400)]:
        assert client_of(seen["app"], name).get("/api/info").status_code == status, name
    bad = invoke("serve", index.directory, "--allow-host", "http://x.example:80", "--device", "cpu")
    assert_one_line_error(bad, "http://x.example:80")
