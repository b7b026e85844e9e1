"""triplets: the user's own images, described by (source image, text, target image) rows."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Annotated

from compose_retrieval import IMAGE_SUFFIXES, DatasetError, FileDataset, ImageFiles, Range, RetrievalProtocol, Triplets

LAYOUT = (
    "DATA_ROOT/train.csv (or train.jsonl) with columns source,text,target; queries.csv (or .jsonl) with the "
    "same columns; and the gallery as gallery.csv (or .jsonl) with a column image and an optional label, "
    "or as a folder gallery/ of images; image paths relative to DATA_ROOT"
)


def _find(root: Path, stem: str) -> Path | None:
    for suffix in (".csv", ".jsonl"):
        if (root / f"{stem}{suffix}").is_file():
            return root / f"{stem}{suffix}"
    return None


def read_manifest(path: Path, columns: tuple[str, ...], optional: tuple[str, ...] = ()) -> list[dict[str, str]]:
    """Rows of a CSV (with a header) or JSON-lines file, each with ``columns`` present and non-empty.

    A column (or JSON key) outside ``columns`` and ``optional``, or a CSV row with more
    fields than its header, is an error: a silently dropped field would change the data.
    """
    known = (*columns, *optional)
    takes = ",".join(columns) + "".join(f"[,{c}]" for c in optional)
    rows: list[dict[str, str]] = []
    with path.open(newline="", encoding="utf-8-sig") as f:  # -sig: spreadsheets often write a byte-order mark
        if path.suffix == ".csv":
            reader = csv.DictReader(f)
            unknown = [c for c in reader.fieldnames or () if c not in known]
            if unknown:
                raise DatasetError(f"{path} has unknown column(s) {', '.join(map(repr, unknown))}; this file takes the columns {takes}")
            records = ((reader.line_num, record) for record in reader)  # line_num: the line the record ends on
        else:
            records = []
            for line_number, line in enumerate(f, start=1):
                if line.strip():
                    try:
                        records.append((line_number, json.loads(line)))
                    except json.JSONDecodeError as exc:
                        raise DatasetError(f"{path} line {line_number} is not JSON ({exc.msg})") from None
                    if not isinstance(records[-1][1], dict):
                        raise DatasetError(f"{path} line {line_number} is not a JSON object; write one {{\"{columns[0]}\": ...}} object a line")
                    unknown = [k for k in records[-1][1] if k not in known]
                    if unknown:
                        raise DatasetError(f"{path} line {line_number} has unknown key(s) {', '.join(map(repr, unknown))}; "
                                           f"this file takes the keys {takes}")
        for line_number, record in records:
            if None in record:  # csv.DictReader's place for the fields beyond the header's
                fields = len(reader.fieldnames) + len(record[None])
                raise DatasetError(f"{path} line {line_number} has {fields} fields but the header has {len(reader.fieldnames)}; "
                                   f"put a field that holds a comma in double quotes, e.g. \"make it red, then blue\"")
            missing = [c for c in columns if not str(record.get(c) or "").strip()]
            if missing:
                raise DatasetError(
                    f"{path} line {line_number} has no {', '.join(repr(c) for c in missing)}; "
                    f"every row needs {', '.join(columns)}"
                )
            rows.append({c: str(record[c]).strip() for c in known if record.get(c) not in (None, "")})
    if not rows:
        raise DatasetError(f"{path} has no rows; every row needs {', '.join(columns)}")
    return rows


class UserTriplets(FileDataset):
    """Your own images: training and query rows (source image, text, target image), and a gallery.

    The layout under ``--data-root`` (paths in the files are relative to it)::

        train.csv      source,text,target       (or train.jsonl: {"source": ..., "text": ..., "target": ...})
        queries.csv    source,text,target       the test queries; every target must be in the gallery
        gallery.csv    image[,label]            or a folder gallery/ holding the gallery images

    A retrieved gallery image is a hit when it is the query's listed target or, when
    the gallery has a ``label`` column, any image with the target's label (duplicates,
    other photos of the same product). A query's own source image, when it is in the
    gallery, is not ranked. Images are decoded with Pillow, resized (shorter side)
    and centre-cropped to ``image_size``, normalised with ImageNet statistics.
    Options: ``image_size`` (224), ``skip_unreadable`` (drop rows whose images do not
    decode, and say how many, instead of failing), ``allow_outside_root`` (accept image
    paths in the files that are absolute or climb out of DATA_ROOT with ``..``; refused by
    default, so that a file from elsewhere cannot point the loader at any file on the
    machine; symbolic links under DATA_ROOT are followed either way).
    """

    name = "triplets"
    layout = LAYOUT
    protocol_names = ("queries",)
    default_loss = "batch_softmax"

    def __init__(self, data_root: str | None = None, image_size: Annotated[int, Range(8, 4096)] = 224,
                 skip_unreadable: bool = False, allow_outside_root: bool = False):
        """``allow_outside_root``: accept absolute image paths and paths with ``..`` leaving the data root."""
        self.allow_outside_root = allow_outside_root
        super().__init__(data_root, image_size, skip_unreadable)

    def read(self) -> None:
        self.train_rows = self._rows("train")
        self.query_rows = self._rows("queries")
        self.gallery_paths, self.gallery_keys = self._gallery()
        self._skip_unreadable()
        self._check_targets()

    def _image(self, file: Path, row: int, name: str) -> Path:
        """An image path from row ``row`` of ``file``: under the data root (unless allowed otherwise), and a file."""
        outside = Path(name).is_absolute() or Path(os.path.normpath(name)).parts[:1] == ("..",)
        if outside and not self.allow_outside_root:
            raise DatasetError(f"{file} row {row}: the image path {name} is outside the data root {self.root}; move the image "
                               f"under it, or give --dataset-opt allow_outside_root=true if you trust this file")
        path = (self.root / name).resolve()
        if not path.is_file():
            raise DatasetError(f"{file} row {row}: image not found: {path}")
        return path

    def _rows(self, stem: str) -> list[dict]:
        path = _find(self.root, stem)
        if path is None:
            raise DatasetError(f"triplets: no {stem}.csv or {stem}.jsonl in {self.root}; expected {LAYOUT}")
        rows = read_manifest(path, ("source", "text", "target"))
        for i, row in enumerate(rows):
            for column in ("source", "target"):
                row[column] = self._image(path, i + 1, row[column])
        return rows

    def _gallery(self) -> tuple[list[Path], list[str]]:
        path = _find(self.root, "gallery")
        if path is not None:
            rows = read_manifest(path, ("image",), optional=("label",))
            paths = [self._image(path, i + 1, r["image"]) for i, r in enumerate(rows)]
            return paths, [r.get("label", str(p)) for r, p in zip(rows, paths)]
        folder = self.root / "gallery"
        if not folder.is_dir():
            raise DatasetError(f"triplets: no gallery.csv, gallery.jsonl or gallery/ folder in {self.root}; expected {LAYOUT}")
        paths = sorted(p.resolve() for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not paths:
            raise DatasetError(f"triplets: the folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        return paths, [str(p) for p in paths]

    def _skip_unreadable(self) -> None:
        rows = self.train_rows + self.query_rows
        bad = self.find_unreadable([p for r in rows for p in (r["source"], r["target"])] + self.gallery_paths)
        if not bad:
            return
        unreadable, before = set(bad), len(rows) + len(self.gallery_paths)
        self.train_rows = [r for r in self.train_rows if r["source"] not in unreadable and r["target"] not in unreadable]
        self.query_rows = [r for r in self.query_rows if r["source"] not in unreadable and r["target"] not in unreadable]
        kept = [(p, k) for p, k in zip(self.gallery_paths, self.gallery_keys) if p not in unreadable]
        self.gallery_paths, self.gallery_keys = [p for p, _ in kept], [k for _, k in kept]
        self.warn_skipped("triplets", bad, before - len(self.train_rows) - len(self.query_rows) - len(self.gallery_paths))
        for what, left in (("training rows", self.train_rows), ("queries", self.query_rows), ("gallery images", self.gallery_paths)):
            if not left:
                raise DatasetError(f"triplets: no {what} left after skipping {len(bad)} unreadable image(s)")

    def _check_targets(self) -> None:
        index = {p: i for i, p in enumerate(self.gallery_paths)}
        for i, row in enumerate(self.query_rows):
            if row["target"] not in index:
                raise DatasetError(f"triplets: query {i + 1}'s target {row['target']} is not in the gallery; add it there")

    def train_set(self, seed: int = 0, protocol: str | None = None) -> Triplets:
        images = sorted({p for r in self.train_rows for p in (r["source"], r["target"])})
        index = {p: i for i, p in enumerate(images)}
        return Triplets(
            ImageFiles(images, self.preprocessing),
            [index[r["source"]] for r in self.train_rows],
            [r["text"] for r in self.train_rows],
            [index[r["target"]] for r in self.train_rows],
        )

    def train_texts(self) -> list[str]:
        return [r["text"] for r in self.train_rows]

    def build_protocol(self, name: str) -> RetrievalProtocol:
        gallery_index = {p: i for i, p in enumerate(self.gallery_paths)}
        sources = sorted({r["source"] for r in self.query_rows})  # the query images, the gallery's or not
        source_index = {p: i for i, p in enumerate(sources)}
        return RetrievalProtocol.from_queries(
            name,
            ImageFiles(self.gallery_paths, self.preprocessing),
            self.gallery_keys,
            [(source_index[r["source"]], r["text"], gallery_index[r["target"]]) for r in self.query_rows],
            targets="index",
            query_images=ImageFiles(sources, self.preprocessing),
            query_image_in_gallery=[gallery_index.get(p, -1) for p in sources],
        )
