"""Pictures of a search: a contact sheet (PNG) and a self-contained HTML page.

Both show the query (its image, or a blank cell for a text alone, and its text), then the results with their rank,
score and file name. ``folder_or_index`` says where the result paths are: an ``Index`` (its ``file_path``, so only
its files are read) or the indexed folder. A result image that cannot be read is drawn as a grey cell. Both files
are written whole or not at all.
"""

from __future__ import annotations

import base64
import html
import io
import os
import textwrap
from pathlib import Path
from typing import Any

from .checkpoint import atomic_write
from .errors import ComposeRetrievalError

__all__ = ["contact_sheet", "html_page"]

_BACKGROUND = (255, 255, 255)
_BLANK = (225, 225, 225)
_INK = (20, 20, 20)
_QUERY_INK = (170, 30, 30)


def _image_of(source: Any):
    """A PIL RGB image from a path, a PIL image or a (3, H, W) uint8 tensor; None when it cannot be read."""
    from PIL import Image

    if source is None:
        return None
    if isinstance(source, Image.Image):
        return source.convert("RGB")
    if isinstance(source, (str, os.PathLike)):
        try:
            with Image.open(source) as image:
                return image.convert("RGB")
        except (OSError, ValueError, Image.DecompressionBombError):
            return None
    try:
        import torch

        if isinstance(source, torch.Tensor) and source.dtype == torch.uint8 and source.dim() == 3 and source.shape[0] == 3:
            return Image.fromarray(source.permute(1, 2, 0).contiguous().cpu().numpy())
    except ImportError:  # pragma: no cover
        pass
    raise ComposeRetrievalError(f"a query image is a path, a PIL image or a (3, H, W) uint8 tensor, not {type(source).__name__}")


def _thumbnail(image, size: int):
    """``image`` fitted into a size x size square on the background (None: a blank square)."""
    from PIL import Image, ImageOps

    cell = Image.new("RGB", (size, size), _BLANK if image is None else _BACKGROUND)
    if image is not None:
        fitted = ImageOps.contain(image, (size, size), Image.Resampling.LANCZOS)
        cell.paste(fitted, ((size - fitted.width) // 2, (size - fitted.height) // 2))
    return cell


def _resolver(folder_or_index: Any):
    """relative path -> the file to read: an Index's ``file_path`` (refuses what it did not index), or folder / path."""
    if hasattr(folder_or_index, "file_path"):
        return folder_or_index.file_path
    folder = Path(folder_or_index)
    return lambda relative: folder / relative


def _results(result: Any, folder_or_index: Any) -> list[tuple[int, str, float, Any]]:
    """(rank, path, score, PIL image or None) of every result."""
    where = _resolver(folder_or_index)
    rows = []
    for rank, (path, score) in enumerate(zip(result.paths, result.scores), start=1):
        try:
            image = _image_of(where(path))
        except ComposeRetrievalError:
            image = None
        rows.append((rank, path, float(score), image))
    return rows


def _fit(text: str, font, width: int) -> str:
    """``text`` cut with an ellipsis to fit ``width`` pixels."""
    if font.getlength(text) <= width:
        return text
    while text and font.getlength(text + "…") > width:
        text = text[:-1]
    return text + "…"


def _wrap(text: str, font, width: int, lines: int) -> list[str]:
    chars = max(4, int(width / max(font.getlength("n"), 1)))
    wrapped = textwrap.wrap(text, chars) or [""]
    if len(wrapped) > lines:
        wrapped = wrapped[: lines - 1] + [" ".join(wrapped[lines - 1 :])]
    return [_fit(line, font, width) for line in wrapped]


def _write(out_path: Path, write) -> None:
    """``atomic_write``, with a file that cannot be written (a folder in the way, no permission) named in one line."""
    if Path(out_path).is_dir():
        raise ComposeRetrievalError(f"cannot write {out_path}: it is a folder; give a file name")
    try:
        atomic_write(out_path, write)
    except OSError as exc:
        raise ComposeRetrievalError(f"cannot write {out_path}: {exc.strerror or exc}") from None


def contact_sheet(query_image: Any, text: str | None, result: Any, folder_or_index: Any, out_path: str | os.PathLike,
                  thumb: int = 160, columns: int = 6) -> Path:
    """Write a PNG: the query (image and text) in the first cell, then the results in rank order with
    "#rank score" and the file name under each, ``columns`` cells a row, each image fitted in ``thumb`` pixels."""
    from PIL import Image, ImageDraw, ImageFont

    if isinstance(thumb, bool) or not isinstance(thumb, int) or not 16 <= thumb <= 2048:
        raise ComposeRetrievalError(f"thumb must be a whole number of pixels from 16 to 2048, not {thumb!r}")
    font = ImageFont.load_default(size=14)  # Pillow's own FreeType font (the bitmap one draws spaces a pixel wide)
    line = int(font.getbbox("Hg")[3]) + 4
    text_lines = 3
    pad = 8
    rows_data = _results(result, folder_or_index)
    cells = 1 + len(rows_data)
    cols = max(1, min(columns, cells))
    rows = -(-cells // cols)
    cell_w, cell_h = thumb + 2 * pad, thumb + pad + text_lines * line + pad
    sheet = Image.new("RGB", (cols * cell_w, rows * cell_h), _BACKGROUND)
    draw = ImageDraw.Draw(sheet)

    def place(i: int, image, lines: list[tuple[str, tuple[int, int, int]]]) -> None:
        x, y = (i % cols) * cell_w + pad, (i // cols) * cell_h + pad
        sheet.paste(_thumbnail(image, thumb), (x, y))
        draw.rectangle((x - 1, y - 1, x + thumb, y + thumb), outline=_BLANK)
        for j, (words, ink) in enumerate(lines[:text_lines]):
            draw.text((x, y + thumb + 2 + j * line), words, fill=ink, font=font)

    query = _image_of(query_image)
    label = "query" if query_image is not None else "query (text only)"
    place(0, query, [(label, _QUERY_INK)] + [(w, _INK) for w in _wrap(text or "(no text)", font, thumb, text_lines - 1)])
    for i, (rank, path, score, image) in enumerate(rows_data, start=1):
        name = path.rsplit("/", 1)[-1]
        place(i, image, [(f"#{rank}  {score:.3f}", _INK), (_fit(name, font, thumb), _INK)])
    out_path = Path(out_path)
    _write(out_path, lambda tmp: sheet.save(tmp, format="PNG"))
    return out_path


def _data_uri(image, size: int) -> str | None:
    if image is None:
        return None
    from PIL import Image, ImageOps

    buffer = io.BytesIO()
    ImageOps.contain(image, (size, size), Image.Resampling.LANCZOS).save(buffer, format="JPEG", quality=88)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }}
.grid {{ display: flex; flex-wrap: wrap; gap: 12px; }}
figure {{ margin: 0; width: {thumb}px; }}
figure img, .blank {{ width: {thumb}px; height: {thumb}px; object-fit: contain; background: #eee; display: block; }}
figcaption {{ font-size: 13px; overflow-wrap: anywhere; }}
.query figcaption {{ color: #a11; }}
.score {{ font-variant-numeric: tabular-nums; }}
</style></head><body>
<h1>{title}</h1>
<div class="grid">
{cells}
</div>
</body></html>
"""


def _figure(uri: str | None, caption: str, css: str = "") -> str:
    picture = f'<img src="{uri}" alt="">' if uri else '<div class="blank"></div>'
    return f'<figure class="{css}">{picture}<figcaption>{caption}</figcaption></figure>'


def html_page(query_image: Any, text: str | None, result: Any, folder_or_index: Any, out_path: str | os.PathLike,
              thumb: int = 200) -> Path:
    """Write one self-contained HTML page (every image inlined as a data: URI, every text escaped): the query, then
    the results with rank, score and path."""
    if isinstance(thumb, bool) or not isinstance(thumb, int) or not 16 <= thumb <= 2048:
        raise ComposeRetrievalError(f"thumb must be a whole number of pixels from 16 to 2048, not {thumb!r}")
    escape = html.escape
    query_caption = f"<b>query</b><br>{escape(text) if text else '(no text)'}"
    cells = [_figure(_data_uri(_image_of(query_image), thumb), query_caption, "query")]
    for rank, path, score, image in _results(result, folder_or_index):
        caption = f'#{rank} <span class="score">{score:.4f}</span><br>{escape(path)}'
        cells.append(_figure(_data_uri(image, thumb), caption))
    title = "search: " + (text if text else "an image")
    page = _PAGE.format(title=escape(title), thumb=thumb, cells="\n".join(cells))
    out_path = Path(out_path)
    _write(out_path, lambda tmp: Path(tmp).write_text(page, encoding="utf-8"))
    return out_path
