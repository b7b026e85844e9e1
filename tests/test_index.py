"""Index a folder and search it (compose_retrieval.index): building, incremental re-indexing, unreadable files,
symbolic links, the model's identity, search by image and text against a brute-force ranking, exclusion of the
query itself, corrupt files, path checks, and FAISS flat against exact search."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import compose_retrieval as cr
from compose_retrieval.errors import CheckpointError, ComposeRetrievalError
from compose_retrieval.index import EMBEDDINGS_FILE, INDEX_FILE, Index, SearchResult

from conftest import tiny_model

IMAGE_SIZE = 32
TEXT = "make gray rectangle at middle-center large"


def make_checkpoint(path: Path, combiner: str = "tirg", seed: int = 0) -> Path:
    """A tiny checkpoint with random weights and a resizing preprocessing, as a user's run would have."""
    torch.manual_seed(seed)
    model = tiny_model(combiner)
    model.preprocessing = cr.Preprocessing(IMAGE_SIZE, cr.IMAGENET_MEAN, cr.IMAGENET_STD)
    return cr.save_pretrained(model.eval(), path)


def write_image(path: Path, seed: int, size: tuple[int, int] = (40, 30)) -> Path:
    """A small random picture; the suffix picks the format (PNG, JPEG, WebP)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def write_folder(root: Path, count: int = 9) -> Path:
    """``count`` images in three formats (upper-case suffixes too) across two levels, plus a non-image file."""
    suffixes = [".png", ".jpg", ".webp", ".JPEG", ".PNG"]
    for i in range(count):
        sub = root / ("nested/deeper" if i % 3 == 2 else "nested" if i % 3 == 1 else "")
        write_image(sub / f"img{i}{suffixes[i % len(suffixes)]}", seed=i, size=(28 + 3 * i, 30 + 2 * i))
    (root / "notes.txt").write_text("not an image")
    return root


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("models")
    return {
        "tirg": make_checkpoint(folder / "tirg.safetensors"),
        "other": make_checkpoint(folder / "other.safetensors", seed=1),
        "text_only": make_checkpoint(folder / "text_only.safetensors", "text_only"),
    }


@pytest.fixture(scope="module")
def built(tmp_path_factory, checkpoints):
    """One index of a folder of nine images, shared by the read-only tests."""
    root = tmp_path_factory.mktemp("built")
    folder = write_folder(root / "images")
    return Index.build(folder, checkpoints["tirg"], root / "index", progress=False), folder


def naive_embeddings(model, folder: Path, paths: list[str]) -> torch.Tensor:
    """Each file read and embedded alone, the way a user would do it by hand."""
    rows = [model.embed_images(model.preprocessing(cr.read_image(folder / p))[None]) for p in paths]
    return F.normalize(torch.cat(rows).float(), dim=-1)


def brute_force(queries: torch.Tensor, gallery: torch.Tensor, paths: list[str], k: int, exclude: int = -1):
    scores = (queries @ gallery.T)[0]
    if exclude >= 0:
        scores[exclude] = float("-inf")
    order = torch.sort(scores, descending=True, stable=True).indices[:k]
    return [paths[i] for i in order], scores[order].tolist()


def test_build_walks_the_folder_and_writes_the_index(built, checkpoints):
    index, folder = built
    assert index.paths == sorted(index.paths) and len(index) == 9
    assert "img3.JPEG" in index.paths and "nested/deeper/img2.webp" in index.paths and "notes.txt" not in index.paths
    assert index.stats.embedded == 9 and index.stats.reused == index.stats.dropped == index.stats.skipped == 0
    meta = json.loads((index.directory / INDEX_FILE).read_text())
    assert meta["model"] == {"name": None, "path": str(checkpoints["tirg"].resolve()), "sha256": cr.zoo.sha256_of(checkpoints["tirg"])}
    assert meta["folder"] == str(folder.resolve()) and meta["preprocessing"]["image_size"] == IMAGE_SIZE
    assert [f["path"] for f in meta["files"]] == index.paths and meta["backend"] == "exact"
    assert meta["files"][0]["size"] == (folder / index.paths[0]).stat().st_size
    assert sorted(p.name for p in index.directory.iterdir()) == [EMBEDDINGS_FILE, INDEX_FILE]  # exact: nothing more
    # the stored rows are unit vectors, and each equals the file embedded alone
    naive = naive_embeddings(index.model, folder, index.paths)
    assert torch.allclose(index.embeddings, naive, atol=1e-5)
    assert torch.allclose(index.embeddings.norm(dim=1), torch.ones(9), atol=1e-5)


def test_search_image_and_text_equals_a_brute_force_ranking(built):
    index, folder = built
    gallery = naive_embeddings(index.model, folder, index.paths)
    query_path = folder / "nested/img1.jpg"
    query = F.normalize(index.model.compose(index.model.preprocessing(cr.read_image(query_path))[None], [TEXT]).float(), dim=-1)
    result = index.search(query_path, TEXT, k=5)
    paths, scores = brute_force(query, gallery, index.paths, 5, exclude=index.paths.index("nested/img1.jpg"))
    assert isinstance(result, SearchResult) and result.mode == "composed"
    assert result.paths == paths and np.allclose(result.scores, scores, atol=1e-5)
    assert result.excluded == "nested/img1.jpg" and "nested/img1.jpg" not in result.paths
    assert result.to_dict()["results"][0] == {"rank": 1, "path": paths[0], "score": result.scores[0]}
    # the same query from Python objects: a PIL image and a uint8 tensor (no path: nothing to exclude)
    with Image.open(query_path) as pil:
        from_pil = index.search(pil, TEXT, k=9)
    from_tensor = index.search(cr.read_image(query_path), TEXT, k=9)
    assert from_pil.paths == from_tensor.paths and len(from_pil.paths) == 9 and from_pil.excluded is None
    assert [p for p in from_pil.paths if p != "nested/img1.jpg"][:5] == paths


def test_search_image_only_and_exclude_self(built):
    index, folder = built
    query_path = folder / "img0.png"
    result = index.search(query_path, k=3)
    query = naive_embeddings(index.model, folder, ["img0.png"])
    paths, scores = brute_force(query, index.embeddings, index.paths, 3, exclude=index.paths.index("img0.png"))
    assert result.mode == "image" and result.paths == paths and np.allclose(result.scores, scores, atol=1e-5)
    kept = index.search(query_path, k=3, exclude_self=False)
    assert kept.paths[0] == "img0.png" and kept.scores[0] == pytest.approx(1.0, abs=1e-4) and kept.excluded is None
    # the query given by a relative path or through a path with '..' is the same file
    cwd = os.getcwd()
    try:
        os.chdir(folder / "nested")
        assert index.search(Path("../img0.png"), k=3).paths == paths
    finally:
        os.chdir(cwd)
    # k beyond the index: every other image; an empty text is no text
    assert len(index.search(query_path, k=50).paths) == 8
    assert index.search(query_path, "  ", k=3).mode == "image"


def test_text_alone_needs_a_combiner_that_ignores_the_image(built, checkpoints, tmp_path):
    index, folder = built
    with pytest.raises(ComposeRetrievalError, match="give an image too") as info:
        index.search(None, TEXT)
    assert "\n" not in str(info.value) and not index.accepts_text_only
    with pytest.raises(ComposeRetrievalError, match="needs an image, a text or both"):
        index.search()
    text_index = Index.build(folder, checkpoints["text_only"], tmp_path / "text", progress=False)
    assert text_index.accepts_text_only
    result = text_index.search(text=TEXT, k=4)
    model = text_index.model
    query = F.normalize(model.compose(torch.zeros(1, 3, IMAGE_SIZE, IMAGE_SIZE), [TEXT]).float(), dim=-1)
    paths, scores = brute_force(query, naive_embeddings(model, folder, text_index.paths), text_index.paths, 4)
    assert result.mode == "text" and result.paths == paths and np.allclose(result.scores, scores, atol=1e-5)


def test_incremental_reindex_reads_only_new_and_changed_files(tmp_path, checkpoints):
    folder = write_folder(tmp_path / "images", count=6)
    first = Index.build(folder, checkpoints["tirg"], tmp_path / "index", progress=False)
    assert first.stats.embedded == 6
    again = Index.build(folder, checkpoints["tirg"], tmp_path / "index", progress=False)
    assert (again.stats.embedded, again.stats.reused, again.stats.dropped) == (0, 6, 0)
    assert torch.equal(again.embeddings, first.embeddings)

    write_image(folder / "nested/new.png", seed=100)                         # added
    write_image(folder / "img0.png", seed=101, size=(50, 50))                # changed: other pixels and size
    (folder / "nested/deeper/img5.png").unlink()                             # deleted
    same_size = folder / "img3.JPEG"                                         # touched: same size, new time
    os.utime(same_size, ns=(same_size.stat().st_atime_ns, same_size.stat().st_mtime_ns + 1_000_000))
    updated = Index.build(folder, checkpoints["tirg"], tmp_path / "index", progress=False)
    assert (updated.stats.embedded, updated.stats.reused, updated.stats.dropped, updated.stats.skipped) == (3, 3, 1, 0)
    fresh = Index.build(folder, checkpoints["tirg"], tmp_path / "fresh", progress=False)
    assert updated.paths == fresh.paths and "nested/new.png" in updated.paths and "nested/deeper/img5.png" not in updated.paths
    assert torch.allclose(updated.embeddings, fresh.embeddings, atol=1e-5)
    loaded = Index.load(tmp_path / "index")
    assert loaded.paths == fresh.paths and torch.equal(loaded.embeddings, updated.embeddings)
    assert loaded.search(folder / "img0.png", TEXT, k=3).paths == fresh.search(folder / "img0.png", TEXT, k=3).paths


def test_a_build_stopped_by_ctrl_c_keeps_what_it_embedded_and_the_same_command_continues(tmp_path, checkpoints,
                                                                                          monkeypatch):
    from compose_retrieval.errors import RunInterrupted
    from compose_retrieval.model import ComposedRetrievalModel

    folder = write_folder(tmp_path / "images", count=7)
    embed = ComposedRetrievalModel.embed_images
    calls = []

    def interrupted_on_the_third_batch(self, images):
        calls.append(len(images))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return embed(self, images)

    monkeypatch.setattr(ComposedRetrievalModel, "embed_images", interrupted_on_the_third_batch)
    with pytest.raises(RunInterrupted, match=r"4 of 7 images embedded .* run the same command again") as info:
        Index.build(folder, checkpoints["tirg"], tmp_path / "index", batch_size=2, progress=False)
    assert "\n" not in str(info.value)
    monkeypatch.setattr(ComposedRetrievalModel, "embed_images", embed)
    saved = Index.load(tmp_path / "index")
    assert len(saved) == 4 and saved.skipped == []  # two whole batches; the one stopped counts as not read
    resumed = Index.build(folder, checkpoints["tirg"], tmp_path / "index", batch_size=2, progress=False)
    assert (resumed.stats.embedded, resumed.stats.reused) == (3, 4)
    fresh = Index.build(folder, checkpoints["tirg"], tmp_path / "fresh", batch_size=2, progress=False)
    assert resumed.paths == fresh.paths and torch.allclose(resumed.embeddings, fresh.embeddings, atol=1e-6)


def test_unreadable_files_are_skipped_listed_and_retried_once_changed(tmp_path, checkpoints):
    folder = write_folder(tmp_path / "images", count=3)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    good = (folder / "nested/img1.jpg").read_bytes()
    (folder / "nested/truncated.jpg").write_bytes(good[: len(good) // 2])
    index = Index.build(folder, checkpoints["tirg"], tmp_path / "index", progress=False, num_workers=2, batch_size=2)
    assert index.stats.embedded == 3 and index.stats.skipped == 2
    assert [s["path"] for s in index.skipped] == ["broken.jpg", "nested/truncated.jpg"]
    assert all("cannot decode" in s["reason"] and "\n" not in s["reason"] for s in index.skipped)
    assert "broken.jpg" not in index.paths
    with pytest.raises(ComposeRetrievalError, match="not a file of this index"):
        index.file_path("broken.jpg")
    unchanged = Index.build(folder, checkpoints["tirg"], tmp_path / "index", progress=False)
    assert (unchanged.stats.embedded, unchanged.stats.skipped) == (0, 2)  # not tried again
    write_image(folder / "broken.jpg", seed=7)  # repaired
    repaired = Index.build(folder, checkpoints["tirg"], tmp_path / "index", progress=False)
    assert (repaired.stats.embedded, repaired.stats.reused, repaired.stats.skipped) == (1, 3, 1)
    assert "broken.jpg" in repaired.paths


def test_an_index_of_another_model_or_folder_is_refused(tmp_path, checkpoints):
    folder = write_folder(tmp_path / "images", count=2)
    Index.build(folder, checkpoints["tirg"], tmp_path / "index", progress=False)
    before = (tmp_path / "index" / INDEX_FILE).read_bytes()
    with pytest.raises(ComposeRetrievalError, match=r"another model .* give a new --out, or delete") as info:
        Index.build(folder, checkpoints["other"], tmp_path / "index", progress=False)
    assert "\n" not in str(info.value)
    other_folder = write_folder(tmp_path / "elsewhere", count=2)
    with pytest.raises(ComposeRetrievalError, match="another folder"):
        Index.build(other_folder, checkpoints["tirg"], tmp_path / "index", progress=False)
    assert (tmp_path / "index" / INDEX_FILE).read_bytes() == before
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "thesis.tex").write_text("mine")
    with pytest.raises(ComposeRetrievalError, match="not empty and holds no index"):
        Index.build(folder, checkpoints["tirg"], tmp_path / "busy", progress=False)


def test_symbolic_links_never_lead_out_of_the_folder(tmp_path, checkpoints):
    folder = write_folder(tmp_path / "images", count=2)
    outside = tmp_path / "private"
    write_image(outside / "secret.png", seed=50)
    os.symlink(outside / "secret.png", folder / "leak.png")          # a file link out
    os.symlink(outside, folder / "linked_dir")                        # a directory link out
    os.symlink(folder / "nested", folder / "inner_dir")               # a directory link in: not entered either
    os.symlink(folder / "img0.png", folder / "nested/alias.png")      # a file link in: indexed
    index = Index.build(folder, checkpoints["tirg"], tmp_path / "index", progress=False)
    assert index.paths == ["img0.png", "nested/alias.png", "nested/img1.jpg"]
    assert [(s["path"], "out of the folder" in s["reason"]) for s in index.skipped] == [("leak.png", True)]
    for bad in ["leak.png", "linked_dir/secret.png", "../private/secret.png", str(outside / "secret.png"), "/etc/passwd",
                "nested/../img0.png", "", "IMG0.PNG"]:
        with pytest.raises(ComposeRetrievalError):
            index.file_path(bad)
    assert index.file_path("nested/alias.png") == folder.resolve() / "nested/alias.png"
    # a file that became a link out after indexing is not handed out
    (folder / "img0.png").unlink()
    os.symlink(outside / "secret.png", folder / "img0.png")
    with pytest.raises(ComposeRetrievalError, match="out of the indexed folder"):
        index.file_path("img0.png")


def test_include_patterns(tmp_path, checkpoints):
    folder = write_folder(tmp_path / "images", count=6)
    index = Index.build(folder, checkpoints["tirg"], tmp_path / "index", include=["nested/*", "*.png"], progress=False)
    assert index.paths == ["img0.png", "nested/deeper/img2.webp", "nested/deeper/img5.png", "nested/img1.jpg", "nested/img4.PNG"]
    narrower = Index.build(folder, checkpoints["tirg"], tmp_path / "index", include="nested/deeper/*", progress=False)
    assert narrower.paths == ["nested/deeper/img2.webp", "nested/deeper/img5.png"] and narrower.stats.dropped == 3


def test_a_moved_model_is_given_again_only_when_it_is_the_same(tmp_path, checkpoints):
    folder = write_folder(tmp_path / "images", count=2)
    copy = shutil.copy(checkpoints["tirg"], tmp_path / "copy.safetensors")
    Index.build(folder, copy, tmp_path / "index", progress=False)
    Path(copy).unlink()
    with pytest.raises(CheckpointError, match=r"which is gone; pass model= \(Python\) or --model") as info:
        Index.load(tmp_path / "index")
    assert "\n" not in str(info.value)
    with pytest.raises(CheckpointError, match="is not the model the index"):
        Index.load(tmp_path / "index", model=checkpoints["other"])
    index = Index.load(tmp_path / "index", model=checkpoints["tirg"])  # the same bytes elsewhere
    assert len(index.search(folder / "img0.png", k=1).paths) == 1


def test_a_zoo_name_is_recorded_and_resolved(tmp_path):
    from compose_retrieval.zoo import resolve, sha256_of

    folder = tmp_path / "images"
    for i in range(2):  # the shipped model takes its 64 x 64 images as they are
        write_image(folder / f"scene{i}.png", seed=i, size=(64, 64))
    write_image(folder / "other_size.png", seed=9, size=(80, 60))
    index = Index.build(folder, "tirg-css-synthetic", tmp_path / "index", progress=False)
    assert index.identity == {"name": "tirg-css-synthetic", "path": str(resolve("tirg-css-synthetic").resolve()),
                              "sha256": sha256_of(resolve("tirg-css-synthetic"))}
    assert index.paths == ["scene0.png", "scene1.png"]
    assert [s["path"] for s in index.skipped] == ["other_size.png"]
    assert "80x60 pixels, but this model takes 64x64 images as they are" in index.skipped[0]["reason"]
    assert Index.load(tmp_path / "index").search(folder / "scene0.png", "make it red", k=1).paths == ["scene1.png"]


@pytest.mark.parametrize("damage", ["index_garbage", "index_missing", "index_field", "embeddings_garbage",
                                    "embeddings_missing", "embeddings_other_build", "traversal", "not_an_image",
                                    "relative_folder"])
def test_a_damaged_index_is_one_line(tmp_path, checkpoints, damage):
    folder = write_folder(tmp_path / "images", count=2)
    out = tmp_path / "index"
    Index.build(folder, checkpoints["tirg"], out, progress=False)
    meta = json.loads((out / INDEX_FILE).read_text())
    if damage == "index_garbage":
        (out / INDEX_FILE).write_text("{ not json")
        named = INDEX_FILE
    elif damage == "index_missing":
        (out / INDEX_FILE).unlink()
        named = INDEX_FILE
    elif damage == "index_field":
        meta["files"][0]["size"] = "big"
        (out / INDEX_FILE).write_text(json.dumps(meta))
        named = "'files'"
    elif damage == "embeddings_garbage":
        (out / EMBEDDINGS_FILE).write_bytes(b"\x00" * 40)
        named = EMBEDDINGS_FILE
    elif damage == "embeddings_missing":
        (out / EMBEDDINGS_FILE).unlink()
        named = EMBEDDINGS_FILE
    elif damage == "embeddings_other_build":
        meta["build_id"] = "0" * 16
        (out / INDEX_FILE).write_text(json.dumps(meta))
        named = "interrupted build"
    elif damage == "not_an_image":  # a hand-edited index must not make a file of the folder that is no image servable
        meta["files"][0]["path"] = ".git/config"
        (out / INDEX_FILE).write_text(json.dumps(meta))
        named = "not all images"
    elif damage == "relative_folder":  # it would be resolved against wherever the index is loaded from
        meta["folder"] = "images"
        (out / INDEX_FILE).write_text(json.dumps(meta))
        named = "'folder'"
    else:
        meta["files"][0]["path"] = "../../etc/passwd"
        (out / INDEX_FILE).write_text(json.dumps(meta))
        named = "inside the folder"
    with pytest.raises(ComposeRetrievalError) as info:
        Index.load(out)
    assert named in str(info.value) and "\n" not in str(info.value)
    if damage in ("index_garbage", "index_field", "traversal"):  # building over it says how to start again
        with pytest.raises(ComposeRetrievalError, match=r"delete .* \(or give a new --out\) to build the index again"):
            Index.build(folder, checkpoints["tirg"], out, progress=False)
    if damage.startswith("embeddings"):  # index.json is intact: building again reads every file and repairs it
        repaired = Index.build(folder, checkpoints["tirg"], out, progress=False)
        assert repaired.stats.embedded == 2 and len(Index.load(out)) == 2


def test_faiss_flat_through_the_index_equals_exact(built, tmp_path):
    import faiss  # noqa: F401  (in the dev extra: a missing FAISS fails here, it is not skipped)
    index, folder = built
    flat = Index.build(folder, index.identity["path"], tmp_path / "flat", backend="flat", progress=False)
    assert [p.name for p in (tmp_path / "flat").iterdir() if p.is_dir()][0].startswith("search-")
    loaded = Index.load(tmp_path / "flat")
    assert loaded.backend == "flat"
    for path in index.paths:
        for text in (TEXT, None):
            exact = index.search(folder / path, text, k=5)
            for other in (flat, loaded):
                found = other.search(folder / path, text, k=5)
                assert found.paths == exact.paths and np.allclose(found.scores, exact.scores, atol=1e-5)
    # building again with another backend replaces the search files of the last build
    hnsw = Index.build(folder, index.identity["path"], tmp_path / "flat", backend="hnsw", backend_options={"m": 8}, progress=False)
    assert hnsw.stats.reused == 9 and len([p for p in (tmp_path / "flat").iterdir() if p.is_dir()]) == 1
    assert Index.load(tmp_path / "flat").backend_options["m"] == 8


def test_a_search_index_that_fails_to_build_keeps_the_embeddings(tmp_path, checkpoints):
    folder = write_folder(tmp_path / "images", count=7)
    with pytest.raises(ComposeRetrievalError, match=r"nlist=50 .* the 7 embeddings are saved in .* with exact search, "
                                                    r"and building again reuses them") as info:
        Index.build(folder, checkpoints["tirg"], tmp_path / "index", backend="ivf", backend_options={"nlist": 50},
                    progress=False)
    assert "\n" not in str(info.value)
    saved = Index.load(tmp_path / "index")
    assert len(saved) == 7 and saved.backend == "exact"
    again = Index.build(folder, checkpoints["tirg"], tmp_path / "index", backend="ivf", backend_options={"nlist": 2},
                        progress=False)
    assert (again.stats.embedded, again.stats.reused, again.backend, again.backend_options["nlist"]) == (0, 7, "ivf", 2)


def test_building_again_keeps_the_recorded_backend_and_include(tmp_path, checkpoints):
    folder = write_folder(tmp_path / "images", count=9)
    first = Index.build(folder, checkpoints["tirg"], tmp_path / "index", backend="hnsw", backend_options={"m": 8},
                        include="nested/*", progress=False)
    assert len(first) == 6 and all(p.startswith("nested/") for p in first.paths)
    again = Index.build(folder, checkpoints["tirg"], tmp_path / "index", progress=False)
    assert (again.backend, again.backend_options["m"], again.include, again.paths) == ("hnsw", 8, ["nested/*"], first.paths)
    assert again.stats.reused == 6 and again.stats.embedded == 0
    widened = Index.build(folder, checkpoints["tirg"], tmp_path / "index", backend_options={"ef_search": 99},
                          include="*", progress=False)
    assert widened.backend == "hnsw" and widened.backend_options["ef_search"] == 99 and len(widened) == 9
    exact = Index.build(folder, checkpoints["tirg"], tmp_path / "index", backend="exact", progress=False)
    assert exact.backend == "exact" and Index.load(tmp_path / "index").backend == "exact"


def test_an_undecodable_query_image_is_one_line_that_fits_search(built, tmp_path):
    index, _ = built
    junk = tmp_path / "query.jpg"
    junk.write_bytes(b"not a picture")
    with pytest.raises(ComposeRetrievalError, match=r"cannot decode image .*query\.jpg .*give a JPEG, PNG or WebP image"):
        index.search(junk, TEXT)
