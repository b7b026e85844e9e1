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
  answers ``SearchResult.to_dict()`` with each result's ``url`` added and ``query`` as the request gave it
  (an upload's ``width`` and ``height`` as uploaded, and ``decoded`` [width, height] when it was decoded smaller).
- ``GET /files/{path}`` (and HEAD): an indexed image, only when the path is one of ``index.paths``, ends in
  an image suffix the index reads (``CONTENT_TYPES``) and ``index.file_path`` accepts it (anything else,
  ``..`` or absolute paths, files the index skipped, a ``notes.txt`` a hand-edited index.json lists, is 404).

Every request must name this server in its Host header: ``localhost``, an IP address (``127.0.0.1``,
``[::1]``, the machine's own address when it listens on more than loopback) or a name given in
``allowed_hosts`` (``serve --allow-host NAME``); any other name is refused with 400. That stops DNS
rebinding: a web page whose name an attacker points at 127.0.0.1 would otherwise read the index through
the visitor's browser. An IP address is always accepted because a browser sends one only when the page
itself was opened by that address, never for a page of some other site.

Uploads are never written anywhere: the request body is read in chunks into memory
and refused with 413 as soon as it passes the limit (at once when Content-Length
already says so), then decoded by Pillow from memory; what Pillow cannot read is 400,
and an image of more than 25 million pixels is 413 before its pixels are decoded.
Decoding and searching happen one request at a time on one worker thread of the app, so
memory does not grow with concurrent uploads (on many threads, each thread's malloc arena
would keep the memory of the image it decoded). An upload whose shorter side is at least twice the decode bound
(1024 pixels, or 4x the model's input side when that is larger) is decoded smaller: a
JPEG at 1/2, 1/4 or 1/8 scale (``Image.draft``), then any image reduced by a whole
factor (``Image.reduce``, a box average) to a shorter side between the bound and twice
it. The model then resizes it to its input as always, so the ranking of such a huge
upload can differ slightly from ``index.search`` on the full-size file; an upload
below that size is decoded as it is and searched exactly as the file would be.

Errors are JSON ``{"error": "one line"}`` and never show a path of this machine: an indexed file
that cannot be read any more is named by its relative path, with the remedy (index again).
The index is used only through ``search``, ``paths``, ``file_path`` and
``SearchResult.to_dict`` (and, for ``/api/info`` and the decode bound, what it has of ``identity``,
``backend``, ``skipped``, ``preprocessing`` and its model's combiner).
"""

import asyncio
import io
import ipaddress
from concurrent.futures import ThreadPoolExecutor
import urllib.parse
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Any, Iterable

from .errors import ComposeRetrievalError, DatasetError, UnreadableImage

__all__ = ["create_app", "require_serve_extra", "SERVE_EXTRA_HINT", "CONTENT_TYPES", "LOOPBACK_NAMES"]

SERVE_EXTRA_HINT = 'the web page needs the serve extra: pip install "compose-retrieval[serve]"'

CONTENT_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".webp": "image/webp"}
"""The image suffixes an index reads (``index.INDEX_SUFFIXES``) and their media types: nothing else is served."""

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
"""Host names every app answers to (besides any IP address and its ``allowed_hosts``)."""

_STATIC_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                 ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}
_STATIC_FILES = ("app.js", "style.css", "icon.svg")
_FORM_OVERHEAD = 64 * 1024  # boundaries, part headers and the text fields around the image
_MAX_FIELD_BYTES = 16 * 1024  # a text, a path, k
# 25 million pixels: a 24 MP camera photo (6000x4000) passes; decoding one at the cap holds about 100 MB (RGBA)
# before it is reduced, and a decompression bomb is refused from its header, before its pixels are decoded
_MAX_PIXELS = 25_000_000
_DECODE_SIDE = 1024  # uploads are decoded with a shorter side of at least max(this, 4x the model's input side)
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


def _suffix(relative: str) -> str:
    return PurePosixPath(relative).suffix.lower()


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


def _decode_bound(index: Any) -> int:
    """The shorter side an upload is decoded with at least: comfortably above the model's input side."""
    try:
        side = int(index.preprocessing.image_size)
    except Exception:  # an index without a model's preprocessing: the floor alone
        side = 0
    return max(_DECODE_SIDE, 4 * side)


def _decode_image(data: bytes, filename: str | None, bound: int = _DECODE_SIDE):
    """Bytes -> (an RGB PIL image, the uploaded width and height), decoded in memory; anything Pillow cannot read
    is a 400 with its name, more than ``_MAX_PIXELS`` a 413. An image whose shorter side is at least ``2 * bound``
    is decoded smaller (a JPEG by ``draft``, then ``reduce`` by a whole factor) to a shorter side of at least
    ``bound``; a smaller one is decoded as it is."""
    import warnings

    from PIL import Image, UnidentifiedImageError

    name = f" {filename!r}" if filename else ""
    if not data:
        raise _HTTPError(400, f"the uploaded file{name} is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > _MAX_PIXELS:
                raise _HTTPError(413, f"the uploaded image{name} has {width}x{height} pixels, more than "
                                      f"{_MAX_PIXELS // 10**6} million; scale it down first")
            if min(width, height) >= 2 * bound:
                if image.format == "JPEG":
                    image.draft("RGB", (bound, bound))  # decoded at 1/2, 1/4 or 1/8 scale, never below bound
                image.load()
                factor = min(image.size) // bound
                if factor >= 2:
                    if image.mode not in ("RGB", "RGBA", "L", "LA"):  # reduce takes neither palettes nor 1-bit
                        image = image.convert("RGB")
                    image = image.reduce(factor)
            image.load()
            return image.convert("RGB"), (width, height)
    except _HTTPError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise _HTTPError(400, f"the uploaded file{name} is not an image (JPEG, PNG, WebP, ...) that Pillow can read") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise _HTTPError(400, f"the uploaded image{name} could not be decoded: {' '.join(str(exc).split())[:200]}") from None


def _unreadable_indexed_file(relative: str, path: Path, exc: Exception) -> _HTTPError:
    """The error for an indexed file the index can no longer read: its relative path and the remedy, never ``path``."""
    if not path.is_file() or (isinstance(exc, UnreadableImage) and exc.missing):
        return _HTTPError(404, f"the indexed file {relative!r} is gone from the folder; "
                               "run compose-retrieval index again")
    reason = exc.reason if isinstance(exc, UnreadableImage) else " ".join(str(exc).split())
    reason = reason.replace(str(path), relative)  # Pillow's reason may name the file too
    folder = str(path)[: -len(relative)].rstrip("/\\") if str(path).endswith(relative) else str(path.parent)
    shown = f" ({reason[:300]})" if reason and folder not in reason else ""
    return _HTTPError(400, f"the indexed file {relative!r} cannot be read any more{shown}: it changed since it was "
                           "indexed; run compose-retrieval index again")


def _host_of(header: str | None) -> str | None:
    """The host of a Host header (``name``, ``name:port``, ``[v6]:port``), lower case, without brackets; None if
    there is none."""
    value = (header or "").strip().lower()
    if value.startswith("["):
        host, bracket, port = value[1:].partition("]")
        if not bracket or (port and not (port.startswith(":") and port[1:].isdigit())):
            return None
    else:
        host, _, port = value.partition(":")
        if ":" in port or (port and not port.isdigit()):
            return None
    return host or None


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _allowed_names(allowed_hosts: Iterable[str]) -> frozenset[str]:
    """``LOOPBACK_NAMES`` and ``allowed_hosts`` (names or addresses, ``[v6]`` too), lower case; a bad one is
    a one-line error naming it."""
    if isinstance(allowed_hosts, str):
        allowed_hosts = [allowed_hosts]
    names = set(LOOPBACK_NAMES)
    for given in allowed_hosts:
        name = str(given).strip().lower()
        if name.startswith("[") and name.endswith("]"):
            name = name[1:-1]
        if not name or any(c in name for c in "/*@ \t") or (":" in name and not _is_address(name)):
            raise ComposeRetrievalError(f"{str(given)[:100]!r} is not a host name or address (give it without a "
                                        "scheme, port or wildcard, e.g. --allow-host myhost.lan)")
        names.add(name)
    return frozenset(names)


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


def create_app(index: Any, *, max_upload_bytes: int = 10 * 2**20, default_k: int = 12,
               allowed_hosts: Iterable[str] = ()):
    """The FastAPI app serving ``index``: the page, the JSON API and the index's own images (see the module docstring).

    ``max_upload_bytes`` bounds an uploaded image (the request may carry 64 KB more for the form
    around it); ``default_k`` is the number of results when a request gives no ``k``; ``allowed_hosts``
    are the host names (besides localhost and any IP address) that requests may name in their Host header.
    """
    require_serve_extra()
    from fastapi import FastAPI, Request
    from fastapi.responses import FileResponse, JSONResponse, Response

    if max_upload_bytes < 1:
        raise ComposeRetrievalError(f"max_upload_bytes must be at least 1, not {max_upload_bytes}")
    if default_k < 1:
        raise ComposeRetrievalError(f"default_k must be at least 1, not {default_k}")
    max_body = max_upload_bytes + _FORM_OVERHEAD
    host_names = _allowed_names(allowed_hosts)
    served = frozenset(index.paths)  # an index's files never change while it is served
    # one decode and search at a time, always on the same thread: a decoded upload never waits in memory for the
    # model, the memory of one decode is reused by the next (a pool's threads would each keep their own), and a
    # CPU search uses every core anyway
    worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="compose-retrieval-search")
    app = FastAPI(title="compose-retrieval search", docs_url=None, redoc_url=None, openapi_url=None)

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    @app.middleware("http")
    async def _headers(request: Request, call_next):
        host = _host_of(request.headers.get("host"))
        if host is None:
            response = error(400, "the request has no valid Host header")
        elif host not in host_names and not _is_address(host):
            response = error(400, f"this server does not answer for the host name {host[:100]!r}; start it with "
                                  f"--allow-host {host[:100]} if that name is meant to reach it")
        else:
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

    def indexed_file(relative: str) -> Path | None:
        """The absolute path of ``relative`` when it may be served: a safe relative path, one of the index's, with
        an image suffix, and accepted by ``index.file_path``; else None. Checked here before the index is asked."""
        if not _looks_safe(relative) or relative not in served or _suffix(relative) not in CONTENT_TYPES:
            return None
        try:
            return Path(index.file_path(relative))
        except ComposeRetrievalError:
            return None

    @app.api_route("/files/{relative:path}", methods=["GET", "HEAD"])
    def files(relative: str) -> Response:
        path = indexed_file(relative)
        if path is None:
            return error(404, "not a file of the index")
        if not path.is_file():
            return error(404, "the indexed file is gone from the folder")
        return FileResponse(path, media_type=CONTENT_TYPES[_suffix(relative)], headers={"Cache-Control": "no-cache"})

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
            path: Path | None = None
            if upload is not None:
                query["upload"] = filename or "upload"
            elif relative is not None:
                path = indexed_file(relative)
                if path is None:
                    raise _HTTPError(404, f"{relative[:200]!r} is not an image of the index")
                query.update(path=relative, url=_file_url(relative))
            elif text is None:
                raise _HTTPError(400, "give an image (upload one or pick one of the index), a text, or both")

            def run() -> dict[str, Any]:
                image: Any = path
                if upload is not None:
                    image, (width, height) = _decode_image(upload, filename, _decode_bound(index))
                    query.update(width=width, height=height)
                    if image.size != (width, height):
                        query["decoded"] = list(image.size)
                try:
                    return index.search(image, text, k).to_dict()
                except DatasetError as exc:
                    if path is not None and relative is not None:  # the indexed file, read by the index
                        raise _unreadable_indexed_file(relative, path, exc) from None
                    raise

            try:
                result = await asyncio.get_running_loop().run_in_executor(worker, run)
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
