"""Import of google/tirg checkpoints: a state dict with the original names and shapes, built from the
reference architecture (google/tirg's img_text_composition_models.py, re-stated here), imports into
a model whose image, text and composed embeddings equal the reference computation."""

from __future__ import annotations

import argparse
import string
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

import compose_retrieval
from compose_retrieval import CheckpointError

from conftest import TINY_DATASET, invoke
from compose_retrieval_css_synthetic.cssfiles import write_css
from compose_retrieval_google_tirg import import_tirg
from compose_retrieval_google_tirg.importer import read_original

E = 16


class ReferenceVocab:
    """google/tirg's SimpleVocab: ids by first appearance, '<UNK>' = 0."""

    def __init__(self, texts):
        self.word2id = {"<UNK>": 0}
        for text in texts:
            for token in self.tokenize(text):
                self.word2id.setdefault(token, len(self.word2id))

    @staticmethod
    def tokenize(text):
        text = text.encode("ascii", "ignore").decode("ascii")
        return text.lower().translate(str.maketrans("", "", string.punctuation)).strip().split()

    def encode(self, text):
        return [self.word2id.get(t, 0) for t in self.tokenize(text)]


class ReferenceTIRG(nn.Module):
    """The parameter layout and forward pass of google/tirg's TIRG / TIRGLastConv (img_text_composition_models.py)."""

    def __init__(self, texts, lastconv: bool):
        super().__init__()
        self.lastconv = lastconv
        self.vocab = ReferenceVocab(texts)
        self.normalization_layer = nn.Module()
        self.normalization_layer.norm_s = nn.Parameter(torch.tensor([4.0]))
        img_model = torchvision.models.resnet18(weights=None)
        img_model.fc = nn.Sequential(nn.Linear(512, E))
        self.img_model = img_model
        self.text_model = nn.Module()
        self.text_model.embedding_layer = nn.Embedding(len(self.vocab.word2id), E)
        self.text_model.lstm = nn.LSTM(E, E)  # sequence-first, as the original
        self.text_model.fc_output = nn.Sequential(nn.Dropout(0.1), nn.Linear(E, E))
        self.a = nn.Parameter(torch.tensor([1.0, 10.0, 1.0, 1.0]))
        if lastconv:
            branch = lambda: nn.Sequential(  # noqa: E731
                nn.BatchNorm2d(512 + E), nn.Conv2d(512 + E, 512 + E, 3, padding=1), nn.ReLU(), nn.Conv2d(512 + E, 512, 3, padding=1))
            self.mod2d, self.mod2d_gate = branch(), branch()
        else:
            self.gated_feature_composer = nn.Sequential(nn.Identity(), nn.BatchNorm1d(2 * E), nn.ReLU(), nn.Linear(2 * E, E))
            self.res_info_composer = nn.Sequential(
                nn.Identity(), nn.BatchNorm1d(2 * E), nn.ReLU(), nn.Linear(2 * E, 2 * E), nn.ReLU(), nn.Linear(2 * E, E))
        with torch.no_grad():  # every parameter and statistic away from its default, so a mix-up shows
            g = torch.Generator().manual_seed(0)
            for p in self.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=g))
            for name, b in self.named_buffers():
                if "running_var" in name:
                    b.uniform_(0.5, 1.5, generator=g)
                elif "running_mean" in name:
                    b.normal_(0, 0.1, generator=g)

    def image(self, x):
        return self.img_model(x)

    def text(self, texts):
        encoded = [self.vocab.encode(t) for t in texts]
        lengths = [len(t) for t in encoded]
        ids = torch.zeros(max(lengths), len(texts), dtype=torch.long)
        for i, t in enumerate(encoded):
            ids[: lengths[i], i] = torch.tensor(t)
        out, _ = self.text_model.lstm(self.text_model.embedding_layer(ids))
        return self.text_model.fc_output(torch.stack([out[lengths[i] - 1, i] for i in range(len(texts))]))

    def compose(self, x, texts):
        t = self.text(texts)
        if not self.lastconv:
            f = self.image(x)
            z = torch.cat([f, t], dim=1)
            return torch.sigmoid(self.gated_feature_composer(z)) * f * self.a[0] + self.res_info_composer(z) * self.a[1]
        m = self.img_model
        x = m.layer4(m.layer3(m.layer2(m.layer1(m.maxpool(m.relu(m.bn1(m.conv1(x))))))))
        z = torch.cat([x, t[:, :, None, None].repeat(1, 1, x.shape[2], x.shape[3])], dim=1)
        x = self.a[0] * torch.sigmoid(self.mod2d_gate(z)) * x + self.a[1] * self.mod2d(z)
        return m.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def _close(ours: torch.Tensor, reference: torch.Tensor) -> bool:
    """Equal up to float32 rounding (an untrained ResNet's features run into the thousands)."""
    return ours.shape == reference.shape and torch.allclose(ours, reference, rtol=1e-4, atol=1e-5 * float(reference.abs().max()))


@pytest.fixture(scope="module")
def css_root(tmp_path_factory):
    synthetic = compose_retrieval.create("dataset", "css-synthetic", **TINY_DATASET)
    return write_css(synthetic, tmp_path_factory.mktemp("css") / "CSS")


def _save_original(model: ReferenceTIRG, path: Path) -> Path:
    opt = argparse.Namespace(dataset="css3d", model="tirg", embed_dim=E, learning_rate=1e-2)
    torch.save({"it": 160000, "opt": opt, "model_state_dict": model.state_dict()}, path)
    return path


@pytest.mark.parametrize("lastconv", [False, True], ids=["tirg", "tirg_lastconv"])
def test_imported_model_computes_what_the_original_did(tmp_path, css_root, lastconv):
    texts = compose_retrieval.create("dataset", "css", data_root=str(css_root)).train_texts()
    reference = ReferenceTIRG(texts, lastconv).eval()
    original = _save_original(reference, tmp_path / "checkpoint_css3d.pth")
    out = import_tirg(original, "css", css_root, cache_dir=tmp_path / "cache")
    assert out == tmp_path / "cache" / "tirg-css3d.safetensors"
    model, preprocessing = compose_retrieval.load_pretrained("tirg-css3d", cache_dir=tmp_path / "cache")
    assert model.spec.combiner.name == ("tirg_lastconv" if lastconv else "tirg")
    assert (preprocessing.resize, preprocessing.image_size) == ("none", TINY_DATASET["image_size"])
    # word ids in first-appearance order, as google/tirg's SimpleVocab: not sorted
    words = model.text_encoder.vocabulary.words
    assert ["<UNK>", *words] == list(reference.vocab.word2id) and words != sorted(words)
    images = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    queries = ["add red circle to middle-center", "remove blue triangle", "make yellow square small"]
    with torch.no_grad():
        assert _close(model.image_encoder(images).pooled, reference.image(images))
        assert _close(model.text_encoder(queries).sentence, reference.text(queries))
        scale = reference.normalization_layer.norm_s  # perturbed like every parameter
        assert _close(model.compose(images, queries), scale * nn.functional.normalize(reference.compose(images, queries)))
        assert _close(model.embed_images(images), scale * nn.functional.normalize(reference.image(images)))
    meta = compose_retrieval.load_checkpoint(out)[1]
    assert meta["recipe"]["dataset"] == "css" and meta["recipe"]["release"].endswith("checkpoint_css3d.pth")
    # the text encoder was asked, through its options, for google/tirg's words and their order
    assert {"tokenizer": "ascii", "vocabulary_order": "first_seen"}.items() <= meta["model"]["text_encoder"]["options"].items()


def test_the_importer_imports_no_other_plugin():
    """It builds the lstm text encoder through the registry and its public options, not by importing its classes."""
    import ast

    import compose_retrieval_google_tirg.importer as importer

    tree = ast.parse(Path(importer.__file__).read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module and not node.level}
    plugins = {name.split(".")[0] for name in imported if name.startswith("compose_retrieval_")}
    assert plugins <= {"compose_retrieval_google_tirg"}, plugins


def test_import_refuses_code_and_names_what_differs(tmp_path, css_root):
    texts = compose_retrieval.create("dataset", "css", data_root=str(css_root)).train_texts()
    state = ReferenceTIRG(texts, lastconv=False).state_dict()
    # a pickle that would run code when loaded is refused, and runs nothing
    marker = tmp_path / "ran"
    evil = tmp_path / "evil.pth"
    torch.save({"model_state_dict": state, "opt": _Exploit(str(marker))}, evil)
    with pytest.raises(CheckpointError, match="weights-only") as info:
        read_original(evil)
    assert not marker.exists() and "\n" not in str(info.value)
    # a vocabulary that does not match the dataset's training texts
    wrong = dict(state, **{"text_model.embedding_layer.weight": torch.zeros(7, E)})
    torch.save({"model_state_dict": wrong}, tmp_path / "vocab.pth")
    with pytest.raises(CheckpointError, match="embeds 7 words but the css training texts"):
        import_tirg(tmp_path / "vocab.pth", "css", css_root, cache_dir=tmp_path)
    # a parameter of another shape is named with both shapes
    wrong = dict(state, **{"res_info_composer.3.weight": torch.zeros(E, 2 * E)})
    torch.save(wrong, tmp_path / "shape.pth")  # a bare state dict is accepted too
    with pytest.raises(CheckpointError, match=r"shape mismatch res_info_composer.3.weight \(file \(16, 32\), model \(32, 32\)\)"):
        import_tirg(tmp_path / "shape.pth", "css", css_root, cache_dir=tmp_path)
    missing = {k: v for k, v in state.items() if not k.startswith("text_model.lstm.")}
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(CheckpointError, match=r"does not fit google/tirg's model as rebuilt here: missing text_encoder.lstm"):
        import_tirg(tmp_path / "missing.pth", "css", css_root, cache_dir=tmp_path)
    concat = {k: v for k, v in state.items() if "composer" not in k and k != "a"} | {"composer.m.2.weight": torch.zeros(1)}
    torch.save(concat, tmp_path / "concat.pth")
    with pytest.raises(CheckpointError, match="not a TIRG model .its composer is composer"):
        import_tirg(tmp_path / "concat.pth", "css", css_root, cache_dir=tmp_path)
    with pytest.raises(CheckpointError, match="not found"):
        import_tirg(tmp_path / "absent.pth", "css", css_root, cache_dir=tmp_path)


class _Exploit:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_cli_import_and_the_missing_file_message(tmp_path, css_root, monkeypatch):
    texts = compose_retrieval.create("dataset", "css", data_root=str(css_root)).train_texts()
    original = _save_original(ReferenceTIRG(texts, lastconv=True).eval(), tmp_path / "checkpoint_css3d.pth")
    monkeypatch.setenv("COMPOSE_RETRIEVAL_CACHE", str(tmp_path / "cache"))
    with pytest.raises(CheckpointError) as info:  # before the import: the exact commands that make it
        compose_retrieval.load_pretrained("tirg-css3d")
    message = str(info.value)
    assert "checkpoint_css3d.pth https://storage.googleapis.com/image_retrieval_css/pretrained_models/checkpoint_css3d.pth" in message
    assert "compose-retrieval zoo import-tirg checkpoint_css3d.pth --dataset css --data-root" in message
    result = invoke("zoo", "import-tirg", original, "--dataset", "css", "--data-root", css_root)
    assert result.exit_code == 0, result.output
    assert f"compose-retrieval evaluate tirg-css3d --data-root {css_root}" in " ".join(result.output.split())
    result = invoke("evaluate", "tirg-css3d", "--json", "--device", "cpu")  # the recorded data root is not read
    assert result.exit_code == 1 and "give --data-root DIR" in result.stderr and str(css_root) in " ".join(result.stderr.split())
    result = invoke("evaluate", "tirg-css3d", "--json", "--device", "cpu", "--data-root", css_root)
    assert result.exit_code == 0 and "recall@1" in result.output, result.output
    result = invoke("zoo", "import-tirg", original, "--dataset", "fashion", "--data-root", css_root)
    assert result.exit_code == 1 and "fashion200k" in result.stderr
