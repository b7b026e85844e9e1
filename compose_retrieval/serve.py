"""The search page: a small web app over an :class:`~compose_retrieval.index.Index` (``compose-retrieval serve``).

Why FastAPI and a static page, not Gradio: the ``serve`` extra is three small packages
(fastapi, uvicorn, python-multipart) where Gradio brings a large front-end bundle and
dozens of dependencies; the JSON API (``POST /api/search``) is one that other tools
can call with ``curl`` or ``requests``; and the page is one HTML file with a little
plain JavaScript and CSS (``compose_retrieval/static/``, no CDN, no build step) that
we control, serve under a strict Content-Security-Policy and test in a real browser.

Routes:

- ``GET /``: the page (a link may carry a query: ``/?path=...&text=...&k=...``); ``GET /static/{name}``: its
  script, style sheet and icon.
- ``GET /api/info``: the index's size, its model's identity, what queries it accepts.
- ``GET /api/sample?n=12``: a few indexed paths (evenly spread) to pick a query from.
- ``POST /api/search``: multipart form (or url-encoded without a file): ``image`` (an
  uploaded file) or ``path`` (the relative path of an indexed image), ``text``, ``k``;
  answers ``SearchResult.to_dict()`` with each result's ``url`` added and ``query`` as the request gave it.
- ``GET /files/{path}`` (and HEAD): an indexed image, only when ``index.file_path`` accepts the
  path (anything else, ``..`` or absolute paths or files the index skipped, is 404).

Uploads are never written anywhere: the request body is read in chunks into memory
and refused with 413 as soon as it passes the limit (at once when Content-Length
already says so), then decoded by Pillow from memory; what Pillow cannot read is 400.
The index is used only through ``search``, ``paths``, ``file_path`` and
``SearchResult.to_dict`` (and, for ``/api/info``, what it has of ``identity``,
``backend``, ``skipped`` and its model's combiner).
"""

import asyncio
import io
import threading
import urllib.parse
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Any

from .errors import ComposeRetrievalError

__all__ = ["create_app", "require_serve_extra", "SERVE_EXTRA_HINT", "CONTENT_TYPES"]

SERVE_EXTRA_HINT = 'the web page needs the serve extra: pip install "compose-retrieval[serve]"'

CONTENT_TYPES = {
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".png": "image/png",
    ".webp": "image/webp",
    ".gif": "image/gif",
    ".bmp": "image/bmp",
    ".tif": "image/tiff",
    ".tiff": "image/tiff",
}

_STATIC_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                 ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}
_STATIC_FILES = ("app.js", "style.css", "icon.svg")
_FORM_OVERHEAD = 64 * 1024  # boundaries, part headers and the text fields around the image
_MAX_FIELD_BYTES = 16 * 1024  # a text, a path, k
_MAX_PIXELS = 64 * 2**20  # a decompression bomb is refused before it is decoded
_MAX_K = 1000
_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; connect-src 'self'; "
        "form-action 'self'; base-uri 'none'; frame-ancestors 'none'")


def require_serve_extra() -> None:
    """A one-line error naming the extra when fastapi, uvicorn or python-multipart is missing."""
    try:
        import fastapi  # noqa: F401
        import python_multipart  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise ComposeRetrievalError(SERVE_EXTRA_HINT) from None


class _HTTPError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def _static_text(name: str) -> str:
    return resources.files(__package__).joinpath("static", name).read_text(encoding="utf-8")


def _file_url(relative: str) -> str:
    return "/files/" + urllib.parse.quote(relative, safe="/")


def _looks_safe(relative: str) -> bool:
    """A relative posix path with no empty, '.' or '..' part, no backslash, no NUL: checked before the index is asked."""
    if not relative or "\x00" in relative or "\\" in relative or relative.startswith("/"):
        return False
    parts = PurePosixPath(relative).parts
    return bool(parts) and not any(p in ("", ".", "..") for p in parts)


class _InMemoryForm:
    """Multipart form fields and at most one file, parsed from chunks into memory with hard limits."""

    def __init__(self, boundary: bytes, max_file_bytes: int):
        from python_multipart.multipart import MultipartParser

        self.fields: dict[str, str] = {}
        self.file: bytes | None = None
        self.filename: str | None = None
        self._max_file_bytes = max_file_bytes
        self._header_name = b""
        self._header_value = b""
        self._disposition = b""
        self._name: str | None = None
        self._is_file = False
        self._data = bytearray()
        self.parser = MultipartParser(boundary, callbacks={
            "on_part_begin": self._part_begin, "on_part_data": self._part_data, "on_part_end": self._part_end,
            "on_header_field": self._header_field, "on_header_value": self._header_val,
            "on_header_end": self._header_end, "on_headers_finished": self._headers_finished,
        })

    def _part_begin(self) -> None:
        self._disposition, self._name, self._is_file, self._data = b"", None, False, bytearray()

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _header_val(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _header_end(self) -> None:
        if self._header_name.lower() == b"content-disposition":
            self._disposition = self._header_value
        self._header_name, self._header_value = b"", b""

    def _headers_finished(self) -> None:
        from python_multipart.multipart import parse_options_header

        _, options = parse_options_header(self._disposition)
        if b"name" not in options:
            raise _HTTPError(400, "a form part has no name")
        self._name = options[b"name"].decode("utf-8", "replace")
        self._is_file = b"filename" in options
        if self._is_file:
            if self.file is not None:
                raise _HTTPError(400, "upload one image at a time")
            self.filename = options[b"filename"].decode("utf-8", "replace")

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        limit = self._max_file_bytes if self._is_file else _MAX_FIELD_BYTES
        if len(self._data) + (end - start) > limit:
            if self._is_file:
                raise _HTTPError(413, f"the uploaded image is larger than {_size(self._max_file_bytes)}")
            raise _HTTPError(413, f"the form field {self._name!r} is longer than {_size(_MAX_FIELD_BYTES)}")
        self._data += data[start:end]

    def _part_end(self) -> None:
        if self._is_file:
            if self._name == "image" and (self._data or self.filename):
                self.file = bytes(self._data)
            elif self._data:
                raise _HTTPError(400, f"unexpected file field {self._name!r}; send the image as 'image'")
        elif self._name is not None:
            self.fields[self._name] = self._data.decode("utf-8", "replace")


def _size(n: int) -> str:
    return f"{n / 2**20:.3g} MB" if n >= 2**20 else f"{n / 1024:.3g} KB" if n >= 1024 else f"{n} bytes"


def _decode_image(data: bytes, filename: str | None):
    """Bytes -> an RGB PIL image, decoded in memory; anything Pillow cannot read is a 400 with its name."""
    import warnings

    from PIL import Image, UnidentifiedImageError

    name = f" {filename!r}" if filename else ""
    if not data:
        raise _HTTPError(400, f"the uploaded file{name} is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            if image.width * image.height > _MAX_PIXELS:
                raise _HTTPError(413, f"the uploaded image{name} has {image.width}x{image.height} pixels, more than "
                                      f"{_MAX_PIXELS // 2**20} million")
            image.load()
            return image.convert("RGB")
    except _HTTPError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise _HTTPError(400, f"the uploaded file{name} is not an image (JPEG, PNG, WebP, ...) that Pillow can read") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise _HTTPError(400, f"the uploaded image{name} could not be decoded: {' '.join(str(exc).split())[:200]}") from None


def _parse_k(value: str | None, default_k: int) -> int:
    if value is None or not value.strip():
        return default_k
    try:
        k = int(value)
    except ValueError:
        raise _HTTPError(400, f"k must be a whole number, not {value[:40]!r}") from None
    if k < 1:
        raise _HTTPError(400, f"k must be at least 1, not {k}")
    return min(k, _MAX_K)


def _uses_image(index: Any) -> bool:
    """Whether the index's combiner reads the image (text-only queries need it not to); True when unknown."""
    try:
        if hasattr(index, "accepts_text_only"):
            return not index.accepts_text_only
        return bool(index.model.combiner.uses_image)
    except Exception:  # an index without a model attribute, or one that fails to load: search will say why
        return True


def _public_identity(index: Any) -> dict[str, Any]:
    identity = dict(getattr(index, "identity", None) or {})
    if identity.get("path"):
        identity["path"] = Path(str(identity["path"])).name  # the file's name, not where it lives on this machine
    return identity


def create_app(index: Any, *, max_upload_bytes: int = 10 * 2**20, default_k: int = 12):
    """The FastAPI app serving ``index``: the page, the JSON API and the index's own images (see the module docstring).

    ``max_upload_bytes`` bounds an uploaded image (the request may carry 64 KB more for the form
    around it); ``default_k`` is the number of results when a request gives no ``k``.
    """
    require_serve_extra()
    from fastapi import FastAPI, Request
    from fastapi.concurrency import run_in_threadpool
    from fastapi.responses import FileResponse, JSONResponse, Response

    if max_upload_bytes < 1:
        raise ComposeRetrievalError(f"max_upload_bytes must be at least 1, not {max_upload_bytes}")
    if default_k < 1:
        raise ComposeRetrievalError(f"default_k must be at least 1, not {default_k}")
    max_body = max_upload_bytes + _FORM_OVERHEAD
    lock = threading.Lock()  # one search at a time: the model is loaded lazily and a CPU search uses every core anyway
    app = FastAPI(title="compose-retrieval search", docs_url=None, redoc_url=None, openapi_url=None)

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    @app.middleware("http")
    async def _headers(request: Request, call_next):
        response = await call_next(request)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        response.headers.setdefault("Content-Security-Policy", _CSP)
        return response

    @app.get("/", include_in_schema=False)
    def page() -> Response:
        return Response(_static_text("index.html"), media_type=_STATIC_TYPES[".html"],
                        headers={"Cache-Control": "no-cache"})

    @app.get("/static/{name}", include_in_schema=False)
    def static(name: str) -> Response:
        if name not in _STATIC_FILES:
            return error(404, "not found")
        return Response(_static_text(name), media_type=_STATIC_TYPES[Path(name).suffix],
                        headers={"Cache-Control": "no-cache"})

    @app.get("/api/info")
    def info() -> dict[str, Any]:
        image_needed = _uses_image(index)
        return {
            "size": len(index.paths),
            "model": _public_identity(index),
            "backend": getattr(index, "backend", None),
            "skipped": len(getattr(index, "skipped", None) or []),
            "image_and_text": True,
            "image_alone": True,
            "text_alone": not image_needed,
            "max_upload_bytes": max_upload_bytes,
            "default_k": default_k,
        }

    @app.get("/api/sample")
    def sample(n: int = 12) -> dict[str, Any]:
        paths = list(index.paths)
        n = max(0, min(n, 100, len(paths)))
        picked = [paths[(i * len(paths)) // n] for i in range(n)] if n else []
        return {"total": len(paths), "samples": [{"path": p, "url": _file_url(p)} for p in picked]}

    @app.api_route("/files/{relative:path}", methods=["GET", "HEAD"])
    def files(relative: str) -> Response:
        if not _looks_safe(relative) or relative not in _path_set():
            return error(404, "not a file of the index")
        try:
            path = Path(index.file_path(relative))
        except ComposeRetrievalError:
            return error(404, "not a file of the index")
        if not path.is_file():
            return error(404, "the indexed file is gone from the folder")
        media_type = CONTENT_TYPES.get(path.suffix.lower(), "application/octet-stream")
        return FileResponse(path, media_type=media_type, headers={"Cache-Control": "no-cache"})

    path_cache: dict[str, Any] = {}

    def _path_set() -> frozenset[str]:
        paths = index.paths
        if path_cache.get("source") is not paths or path_cache.get("length") != len(paths):
            path_cache.update(source=paths, length=len(paths), set=frozenset(paths))
        return path_cache["set"]

    async def read_form(request: Request) -> tuple[dict[str, str], bytes | None, str | None]:
        from python_multipart.multipart import parse_options_header

        declared = request.headers.get("content-length")
        if declared is not None:
            try:
                if int(declared) > max_body:
                    raise _HTTPError(413, f"the upload is larger than {_size(max_upload_bytes)}")
            except ValueError:
                raise _HTTPError(400, "Content-Length is not a number") from None
        kind, options = parse_options_header(request.headers.get("content-type", ""))
        received = 0

        async def chunks():
            nonlocal received
            async for chunk in request.stream():
                received += len(chunk)
                if received > max_body:
                    raise _HTTPError(413, f"the upload is larger than {_size(max_upload_bytes)}")
                yield chunk

        if kind == b"multipart/form-data":
            if b"boundary" not in options:
                raise _HTTPError(400, "multipart form without a boundary")
            form = _InMemoryForm(options[b"boundary"], max_upload_bytes)
            async for chunk in chunks():
                try:
                    form.parser.write(chunk)
                except _HTTPError:
                    raise
                except Exception as exc:
                    raise _HTTPError(400, f"malformed multipart form: {' '.join(str(exc).split())[:200]}") from None
            try:
                form.parser.finalize()
            except Exception as exc:
                raise _HTTPError(400, f"malformed multipart form: {' '.join(str(exc).split())[:200]}") from None
            return form.fields, form.file, form.filename
        if kind in (b"application/x-www-form-urlencoded", b""):
            body = bytearray()
            async for chunk in chunks():
                if len(body) + len(chunk) > _MAX_FIELD_BYTES * 4:
                    raise _HTTPError(413, "the form is too long (send an image as multipart/form-data)")
                body += chunk
            pairs = urllib.parse.parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True)
            return dict(pairs), None, None
        raise _HTTPError(415, "send the query as multipart/form-data (fields image or path, text, k)")

    @app.post("/api/search")
    async def search(request: Request) -> Response:
        try:
            fields, upload, filename = await read_form(request)
            text = (fields.get("text") or "").strip() or None
            k = _parse_k(fields.get("k"), default_k)
            relative = (fields.get("path") or "").strip() or None
            if upload is not None and relative is not None:
                raise _HTTPError(400, "give either an uploaded image or the path of an indexed image, not both")
            query: dict[str, Any] = {"text": text, "k": k}
            image: Any = None
            if upload is not None:
                image = await run_in_threadpool(_decode_image, upload, filename)
                query.update(upload=filename or "upload", width=image.width, height=image.height)
            elif relative is not None:
                if not _looks_safe(relative) or relative not in _path_set():
                    raise _HTTPError(404, f"{relative[:200]!r} is not an image of the index")
                try:
                    image = Path(index.file_path(relative))
                except ComposeRetrievalError:
                    raise _HTTPError(404, f"{relative[:200]!r} is not an image of the index") from None
                query.update(path=relative, url=_file_url(relative))
            if image is None and text is None:
                raise _HTTPError(400, "give an image (upload one or pick one of the index), a text, or both")

            def run() -> dict[str, Any]:
                with lock:
                    return index.search(image, text, k).to_dict()

            try:
                result = await run_in_threadpool(run)
            except ComposeRetrievalError as exc:
                raise _HTTPError(400, str(exc)) from None
        except _HTTPError as exc:
            return error(exc.status, exc.message)
        except asyncio.CancelledError:
            raise
        for item in result.get("results", []):
            item["url"] = _file_url(item["path"])
        said = result.get("query") if isinstance(result.get("query"), dict) else {}
        # what the page shows: the query as the request gave it (never a path on this machine), how it was searched
        result["query"] = {**query, **{key: said[key] for key in ("mode", "excluded") if key in said}}
        return JSONResponse(result)

    return app
