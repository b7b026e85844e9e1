"""`compose-retrieval index` and `compose-retrieval search` through the CLI, and the contact sheet and HTML page
(compose_retrieval.sheet)."""

from __future__ import annotations

import json
import re

import pytest
from PIL import Image

import compose_retrieval.cli.search  # noqa: F401  (its commands join the app)
from compose_retrieval.index import Index, SearchResult
from compose_retrieval.sheet import contact_sheet, html_page

from conftest import assert_one_line_error, invoke
from test_index import TEXT, make_checkpoint, write_folder, write_image


@pytest.fixture(scope="module")
def indexed(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    checkpoint = make_checkpoint(root / "model.safetensors")
    folder = write_folder(root / "images", count=7)
    (folder / "bad.webp").write_bytes(b"RIFF\x00\x00\x00\x00WEBPnope")
    result = invoke("index", folder, "--model", checkpoint, "--out", root / "index", "--batch-size", "3", "--no-progress")
    return root, folder, checkpoint, result


def test_index_command_prints_what_it_did(indexed):
    root, folder, checkpoint, result = indexed
    assert result.exit_code == 0, result.output
    assert re.search(r"7 images of .* embedded 7, reused 0, dropped 0, skipped 1 \([\d.]+ images/s\)", result.stdout)
    assert "skipped bad.webp: cannot decode it" in result.stderr
    again = invoke("index", folder, "--model", checkpoint, "--out", root / "index", "--no-progress")
    assert again.exit_code == 0 and "embedded 0, reused 7, dropped 0, skipped 1" in again.stdout


def test_search_command_table_and_json(indexed):
    root, folder, _, _ = indexed
    result = invoke("search", root / "index", "--image", folder / "img0.png", "--text", TEXT, "-k", "3")
    assert result.exit_code == 0, result.output
    expected = Index.load(root / "index").search(folder / "img0.png", TEXT, k=3)
    for path in expected.paths:
        assert path in result.stdout
    assert "image + text" in result.stdout and "img0.png, is left out" in result.stdout
    as_json = invoke("search", root / "index", "--image", folder / "img0.png", "-k", "4", "--json", "--include-query")
    assert as_json.exit_code == 0, as_json.output
    data = json.loads(as_json.stdout)
    assert [r["rank"] for r in data["results"]] == [1, 2, 3, 4] and data["results"][0]["path"] == "img0.png"
    assert data["query"]["mode"] == "image" and data["results"][0]["score"] == pytest.approx(1.0, abs=1e-4)


def test_search_writes_a_contact_sheet_and_a_page(indexed, tmp_path):
    root, folder, _, _ = indexed
    text = 'make it <b>red</b> & "round"'
    sheet, page = tmp_path / "out" / "sheet.png", tmp_path / "page.html"
    result = invoke("search", root / "index", "--image", folder / "nested/img1.jpg", "--text", text, "-k", "5",
                    "--sheet", sheet, "--html", page)
    assert result.exit_code == 0, result.output
    with Image.open(sheet) as picture:
        assert picture.format == "PNG" and picture.size[0] == 6 * (160 + 16)  # the query and 5 results in a row
        assert len(picture.convert("L").getcolors(maxcolors=256) or []) > 50  # pictures, not a blank canvas
    html = page.read_text()
    assert html.count("data:image/jpeg;base64,") == 6 and "src=\"file:" not in html and "http" not in html
    assert "make it &lt;b&gt;red&lt;/b&gt; &amp; &quot;round&quot;" in html and "<b>red</b>" not in html
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["sheet.png"]  # written whole: no temporary left


def test_sheet_for_a_text_alone_and_a_missing_result(tmp_path):
    folder = tmp_path / "images"
    write_image(folder / "a.png", seed=1)
    result = SearchResult(paths=["a.png", "gone.png"], scores=[0.9, 0.5], mode="text", text="red things")
    sheet = contact_sheet(None, "red things", result, folder, tmp_path / "s.png", thumb=64, columns=2)
    with Image.open(sheet) as picture:
        assert picture.size[0] == 2 * (64 + 16) and picture.size[1] > 2 * (64 + 16)  # two rows: query and a, then gone
    page = html_page(None, "red things", result, folder, tmp_path / "p.html", thumb=64).read_text()
    assert page.count("data:image/jpeg;base64,") == 1 and page.count('class="blank"') == 2


def test_cli_errors_are_one_line(indexed, tmp_path):
    root, folder, _, _ = indexed
    other = make_checkpoint(tmp_path / "other.safetensors", seed=3)
    assert_one_line_error(invoke("index", folder, "--model", other, "--out", root / "index", "--no-progress"),
                          "another model", "--out")
    assert_one_line_error(invoke("search", root / "index", "--text", TEXT), "give an image too")
    assert_one_line_error(invoke("search", root / "index"), "an image, a text or both")
    assert_one_line_error(invoke("search", tmp_path / "nowhere", "--image", folder / "img0.png"), "no index")
    assert_one_line_error(invoke("search", root / "index", "--image", tmp_path / "absent.png"), "not found")
    assert_one_line_error(invoke("search", root / "index", "--image", folder / "img0.png", "--model", other),
                          "is not the model the index")
    assert_one_line_error(invoke("index", folder, "--model", other, "--out", tmp_path / "new", "--backend", "flatt"),
                          "did you mean 'flat'")
    assert_one_line_error(invoke("index", folder, "--model", other, "--out", tmp_path / "new", "--backend-opt", "m"),
                          "KEY=VALUE")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "index.json").write_text("[1, 2")
    assert_one_line_error(invoke("search", broken, "--image", folder / "img0.png"), "index.json")


def test_search_opt_widens_an_approximate_search_and_refuses_a_build_option(indexed, tmp_path):
    root, folder, checkpoint, _ = indexed
    # one image a list: probing one list finds one image; probing all of them is exact search
    built = invoke("index", folder, "--model", checkpoint, "--out", tmp_path / "ivf", "--backend", "ivf",
                   "--backend-opt", "nlist=7", "--backend-opt", "nprobe=1", "--no-progress")
    assert built.exit_code == 0, built.output
    exact = Index.load(root / "index").search(folder / "img0.png", TEXT, k=6)

    def found(*options):
        result = invoke("search", tmp_path / "ivf", "--image", folder / "img0.png", "--text", TEXT, "-k", "6", "--json",
                        *options)
        assert result.exit_code == 0, result.output
        return [r["path"] for r in json.loads(result.stdout)["results"]]

    narrow, wide = found(), found("--search-opt", "nprobe=7")
    assert len(narrow) < 6 and wide == exact.paths
    refused = invoke("search", tmp_path / "ivf", "--image", folder / "img0.png", "--search-opt", "nlist=2")
    assert_one_line_error(refused, "nlist", "rebuild the index")


def test_a_sheet_that_cannot_be_written_is_one_line_after_the_results(indexed, tmp_path):
    root, folder, _, _ = indexed
    result = invoke("search", root / "index", "--image", folder / "img0.png", "--text", TEXT, "--sheet", tmp_path)
    assert_one_line_error(result, "cannot write", "it is a folder")
    assert "rank" in result.stdout  # the results were printed before


def test_an_empty_folder_is_indexed_with_a_warning(tmp_path):
    root = tmp_path
    (root / "empty").mkdir()
    (root / "empty" / "a.gif").write_bytes(b"GIF89a")
    checkpoint = make_checkpoint(root / "model.safetensors")
    result = invoke("index", root / "empty", "--model", checkpoint, "--out", root / "index", "--no-progress")
    assert result.exit_code == 0, result.output
    assert "no image found" in result.stderr and ".jpg .jpeg .png .webp" in result.stderr
