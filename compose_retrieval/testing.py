"""Contract checks for plugin authors: run them from your own test suite.

As scikit-learn ships ``check_estimator``, compose-retrieval ships the checks its own
test suite runs over every registered component. Each takes the class (or any factory)
your plugin registers, builds it on tiny sizes as the engine builds it, exercises it and
raises ``AssertionError`` with a one-line message that names the rule that failed and
how to fix it. Call them from pytest in your plugin's repository::

    # tests/test_contract.py
    from compose_retrieval.testing import check_combiner, check_dataset, check_loss

    from my_plugin import MyCombiner, MyDataset, MyLoss


    def test_my_combiner_keeps_the_contract():
        check_combiner(MyCombiner, hidden=16)  # your options, as users give them


    def test_my_loss_keeps_the_contract():
        check_loss(MyLoss, margin=0.2)


    def test_my_dataset_keeps_the_contract(tmp_path):
        root = write_a_tiny_layout(tmp_path)  # a few images in your dataset's layout
        check_dataset(MyDataset(data_root=str(root), image_size=32))

Every component check also checks ``config()`` as a checkpoint will use it: JSON-able,
naming only options the factory takes (never the sizes the engine passes), each value
of its annotated type, a path or URL only in an option ``path_options`` declares; a
fresh instance built from it must load the ``state_dict`` and give the same output.

Keep the options small (narrow layers, a few dozen images): the checks build the
component once or twice and run it on batches of four. They seed their own random
numbers and restore torch's generator afterwards. Every check runs on the CPU.

``check_combiner``, ``check_loss``, ``check_image_encoder`` and ``check_text_encoder``
take ``factory`` plus the component's options (``**options``); besides those they
accept a few keyword arguments of their own, named after the sizes the engine passes
(``embed_dim``, ``out_dim``), which are never component options. ``check_dataset``
takes a dataset factory with its options, or an instance you built already (most
datasets need a ``data_root``).
"""

from __future__ import annotations

import contextlib
import inspect
import json
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .components import Combiner, Component, ImageEncoder, Loss, TextEncoder
from .datasets import Dataset
from .errors import DatasetError
from .features import ImageFeatures, TextFeatures
from .options import annotations_of, check_value
from .preprocessing import Preprocessing
from .protocol import RetrievalProtocol
from .registry import ENGINE_ARGUMENTS

__all__ = ["check_combiner", "check_loss", "check_dataset", "check_image_encoder", "check_text_encoder"]

BATCH = 4
EMBED_DIM = 16
TOKEN_DIM = 12
TOKENS = 5
TINY_IMAGE_SIZE = 12
LOSS_DIM = 16
SCALE = 4.0
"""The engine hands a loss L2-normalised embeddings times a learned scale that starts at 4."""

FIT_TEXTS = [
    "add small red circle to top-left",
    "remove blue triangle",
    "make gray rectangle at middle-center large",
    "turn green circle into a triangle",
    "make yellow triangle cyan",
]
TEXTS = FIT_TEXTS[:BATCH]  # different lengths, so a batch is padded
ODD_TEXTS = ["", "zyzzyva quokka xylograph", "red", "   "]  # empty, unknown words, one word, white space


# ----------------------------------------------------------------------------- helpers


def _name(factory: Any) -> str:
    return getattr(factory, "__qualname__", None) or type(factory).__name__


def _line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:300]}" if text else type(exc).__name__


def _require(condition: Any, message: str) -> None:
    if not condition:
        raise AssertionError(message)


@contextlib.contextmanager
def _step(subject: str, what: str, fix: str) -> Iterator[None]:
    """Turn an exception the component raises during ``what`` into one AssertionError line (the cause is chained)."""
    try:
        yield
    except AssertionError:
        raise
    except Exception as exc:
        raise AssertionError(f"{subject}: {what} raised {_line(exc)}; {fix}") from exc


@contextlib.contextmanager
def _seeded(seed: int = 0) -> Iterator[None]:
    """Fixed random numbers inside, the caller's torch generator state restored afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _close(a: Tensor, b: Tensor, rtol: float = 1e-4, atol: float = 1e-5) -> bool:
    return a.shape == b.shape and bool(torch.allclose(a, b, rtol=rtol, atol=atol))


def _max_difference(a: Tensor, b: Tensor) -> str:
    return f"{(a - b).abs().max().item():.3g}" if a.shape == b.shape else f"shapes {tuple(a.shape)} and {tuple(b.shape)}"


class _BuildFailure(AssertionError):
    """The factory raised when built as the engine builds it (the project's own tests skip an unknown third-party
    component that cannot be built without options; an author's test fails on it like on any other rule)."""


def _build(subject: str, factory: Callable[..., Any], args: Sequence[Any], kwargs: dict[str, Any], base: type,
           *, from_config: bool = False) -> Any:
    """``factory(*args, **kwargs)`` as the registry calls it (``from_config``: as a checkpoint rebuilds it)."""
    shown = ", ".join([*(repr(a) for a in args), *(f"{k}={v!r}" for k, v in kwargs.items())])
    try:
        built = factory(*args, **kwargs)
    except Exception as exc:
        if from_config:
            raise AssertionError(f"{subject}: rebuilding it from config() as a checkpoint does, {_name(factory)}"
                                 f"({shown[:200]}), raised {_line(exc)}; config() must return options the factory "
                                 "accepts (after JSON: tuples become lists)") from exc
        raise _BuildFailure(f"{subject}: building it as the engine does, {_name(factory)}({shown[:200]}), raised "
                            f"{_line(exc)}; accept the arguments the engine passes (see compose_retrieval.{base.__name__}) "
                            "and give the check the options it needs") from exc
    _require(isinstance(built, base), f"{subject}: the factory returned a {type(built).__name__}, not a "
             f"compose_retrieval.{base.__name__}; subclass compose_retrieval.{base.__name__}, whose methods the engine calls")
    return built


def _remember(component: Any, options: dict[str, Any]) -> None:
    try:
        component._options = dict(options)  # as registry.create does: config() returns them
    except AttributeError:  # pragma: no cover - an immutable object
        pass


def _json(subject: str, what: str, value: Any) -> Any:
    """``value`` after a trip through JSON, as a checkpoint stores it."""
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise AssertionError(f"{subject}: {what} is not JSON-serialisable ({_line(exc)}); return only str, numbers, "
                             "bools, None, lists and dicts with str keys: a checkpoint stores it as JSON") from exc


def _loadable_options(subject: str, factory: Any, config: Any) -> dict[str, Any]:
    """config() as a checkpoint records and checks it: JSON, declared option names, values that fit their annotations."""
    _require(isinstance(config, dict), f"{subject}: config() returned a {type(config).__name__}; return a dict of option "
             "names to values (the base class's config() returns the options it was built with)")
    options = _json(subject, "config()", config)
    try:
        parameters = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        parameters = None
    takes_any = parameters is None or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    for key in options:
        _require(key not in ENGINE_ARGUMENTS, f"{subject}: config() records {key!r}, which the engine passes itself; "
                 "leave the engine's sizes out of config() (a checkpoint with them is refused)")
        _require(takes_any or key in parameters, f"{subject}: config() records {key!r}, which the factory does not take; "
                 "return only the factory's own keyword arguments")
    hints = annotations_of(factory)
    from .checkpoint import _path_like  # the rule checkpoint loading applies to a component's options

    declared = set(getattr(factory, "path_options", ()))
    for key, value in options.items():
        with _step(subject, f"the option check of config()'s {key}={value!r} (after JSON)",
                   "make config() return values of the types the factory's annotations declare, after a JSON round trip"):
            check_value(subject, key, value, hints.get(key))
        found = None if key in declared else _path_like(value)
        _require(found is None, f"{subject}: config() records {key}={found!r:.80}, a path or URL, in an option "
                 "path_options does not declare, so a checkpoint with it is refused; declare the option in "
                 "path_options (only if the component reads that file without running code) or record something else")
    loading = getattr(factory, "options_for_loading", None)
    if loading is not None:
        with _step(subject, "options_for_loading(config())", "return the options that rebuild the architecture"):
            options = loading(dict(options))
    return options


def _restore(subject: str, original: Component, fresh: Component) -> None:
    """A fresh instance takes the original's extra state and weights, as checkpoint loading does."""
    extra = _json(subject, "extra_state_metadata()", original.extra_state_metadata())
    with _step(subject, "load_extra_state_metadata(extra_state_metadata()) on a fresh instance",
               "load_extra_state_metadata must accept what extra_state_metadata returns, after JSON"):
        fresh.load_extra_state_metadata(extra)
    with _step(subject, "load_state_dict(state_dict(), strict=True) on a fresh instance built from config()",
               "config() must return every option that shapes the weights, and extra_state_metadata() what sizes them"):
        fresh.load_state_dict(original.state_dict(), strict=True)


def _perturb(module: nn.Module) -> None:
    """Weights unlike a fresh initialisation, so that a round trip shows the state was loaded."""
    with torch.no_grad():
        for p in module.parameters():
            if p.is_floating_point():
                p.add_(0.01 * torch.randn_like(p))


def _parameter_gradients(subject: str, module: nn.Module, what: str) -> None:
    """Every trainable parameter received a gradient, and some of them a non-zero one."""
    trainable = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    missing = [n for n, p in trainable if p.grad is None]
    _require(not missing, f"{subject}: parameters {', '.join(missing[:5])} got no gradient from {what}; every "
             "parameter must take part in the computation (register a constant as a buffer, or drop an unused layer)")
    _require(not trainable or any(p.grad.abs().sum() > 0 for _, p in trainable),
             f"{subject}: every gradient of its parameters is zero after {what}; the output must depend on its weights")


def _reached(tensor: Tensor | None) -> bool:
    return tensor is not None and tensor.grad is not None and bool(tensor.grad.abs().sum() > 0)


def _finite(subject: str, tensor: Tensor, what: str) -> None:
    _require(tensor.is_floating_point(), f"{subject}: {what} has dtype {tensor.dtype}; return floating point tensors")
    _require(bool(torch.isfinite(tensor).all()), f"{subject}: {what} holds nan or inf on random inputs; "
             "guard divisions, logs and exponentials")


class _TinyImageEncoder(ImageEncoder):
    """A two-block CNN for the combiner check: 12 px images -> a (B, 8, 3, 3) map -> mean pool -> linear."""

    def __init__(self, out_dim: int = EMBED_DIM, map_channels: int = 8):
        super().__init__()
        self.out_dim, self.map_channels = out_dim, map_channels
        self.stem = nn.Sequential(nn.Conv2d(3, 6, 3, stride=2, padding=1), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(6, map_channels, 3, stride=2, padding=1), nn.Tanh())
        self.fc = nn.Linear(map_channels, out_dim)

    def features(self, images: Tensor) -> Tensor:
        return self.block(self.stem(images))

    def head(self, feature_map: Tensor) -> Tensor:
        return self.fc(feature_map.mean(dim=(2, 3)))

    def feature_blocks(self) -> list[tuple[nn.Module, int]]:
        return [(self.stem, 6), (self.block, self.map_channels)]


# ----------------------------------------------------------------------------- combiner


def _text_features(batch: int, sentence_dim: int, token_dim: int, tokens: int) -> TextFeatures:
    """Random text features whose rows have different numbers of real tokens (one at least)."""
    lengths = torch.tensor([tokens - (i % tokens) for i in range(batch)])
    mask = torch.arange(tokens)[None, :] < lengths[:, None]
    return TextFeatures(torch.randn(batch, sentence_dim), torch.randn(batch, tokens, token_dim), mask)


def _rows(features: Any, index: slice) -> Any:
    return None if features is None else type(features)(*(f[index] for f in features))


def check_combiner(
    factory: Callable[..., Combiner], *, image_encoder: ImageEncoder | None = None, embed_dim: int | None = None,
    input_size: int | None = None, **options: Any,
) -> None:
    """Check a combiner against the contract of ``compose_retrieval.Combiner``.

    ``factory`` is built as the engine builds it: ``factory(image_dim, text_dim, embed_dim,
    **options)`` (all three equal, as the engine's encoders give them) plus whichever of
    ``map_channels``, ``token_dim`` and ``block_channels`` its signature names. Its inputs
    come from ``image_encoder`` (default: a tiny CNN of this module with two feature
    blocks; pass your own when the combiner needs a particular one) and from random text
    features whose rows are padded to different lengths. ``embed_dim`` (default 16, or
    the encoder's ``out_dim``) sets the sizes; ``input_size`` the side of the random
    images (default 12 for the tiny CNN, 32 for your encoder). Your encoder is left in
    eval mode with no gradients.

    Rules: it is a ``Combiner``; ``forward`` (after ``image_features`` for a combiner with
    ``conditions_image_encoder``; ``None`` for an input it declares unused through
    ``uses_image`` / ``uses_text``) returns a finite (B, embed_dim) vector or a
    (B, map_channels, H, W) map; every parameter gets a gradient, and so do the inputs it
    declares it uses; in eval mode row i depends only on input row i, and not on the
    tokens the mask marks as padding; it runs under ``torch.no_grad`` with the same result;
    ``config()`` is JSON-able, names only options the factory takes, and a fresh instance
    built from it loads the ``state_dict`` and gives the same output.

        def test_contract():
            check_combiner(MyCombiner, hidden=16)
    """
    subject = f"combiner {_name(factory)}"
    with _seeded():
        encoder = image_encoder if image_encoder is not None else _TinyImageEncoder(embed_dim or EMBED_DIM)
        if not isinstance(encoder, ImageEncoder):
            raise TypeError(f"image_encoder must be a compose_retrieval.ImageEncoder, not a {type(encoder).__name__}")
        if embed_dim is not None and embed_dim != encoder.out_dim:
            raise ValueError(f"embed_dim={embed_dim} differs from the image encoder's out_dim={encoder.out_dim}; give one")
        dim = encoder.out_dim
        size = input_size or (TINY_IMAGE_SIZE if image_encoder is None else 32)
        provided = {
            "map_channels": encoder.map_channels,
            "token_dim": TOKEN_DIM,
            "block_channels": [channels for _, channels in encoder.feature_blocks()],
        }
        try:
            wanted = inspect.signature(factory).parameters
        except (TypeError, ValueError):
            wanted = {}
        sizes = {k: v for k, v in provided.items() if k in wanted}
        combiner = _build(subject, factory, (dim, dim, dim), {**sizes, **options}, Combiner)
        _remember(combiner, options)
        kind = type(combiner)
        for flag in ("uses_image", "uses_text", "conditions_image_encoder"):
            _require(isinstance(getattr(kind, flag, None), bool), f"{subject}: {flag} is {getattr(kind, flag, None)!r}; "
                     "declare it as a class attribute, True or False")
        uses_image, uses_text, conditions = kind.uses_image, kind.uses_text, kind.conditions_image_encoder

        images = torch.randn(BATCH, 3, size, size)
        encoder.eval()
        with torch.no_grad():
            encoded = encoder(images)
        text = _text_features(BATCH, dim, TOKEN_DIM, TOKENS)

        def query(module: Combiner, image_rows: Any, feature_rows: Any, text_rows: Any) -> Tensor:
            text_in = text_rows if uses_text else None
            if not uses_image:
                image_in = None
            elif conditions:
                with _step(subject, "image_features(encoder, images, text)",
                           "run the encoder on the images (see Combiner.image_features)"):
                    image_in = module.image_features(encoder, image_rows, text_in)
                _require(isinstance(image_in, ImageFeatures), f"{subject}: image_features returned a "
                         f"{type(image_in).__name__}; return the encoder's ImageFeatures")
            else:
                image_in = feature_rows
            unused = "" if uses_image and uses_text else " (None for an input it declares unused: uses_image / uses_text)"
            with _step(subject, f"forward(image, text){unused}", "forward takes an ImageFeatures and a TextFeatures "
                       "(or None for the input it declares unused) and returns a tensor"):
                out = module(image_in, text_in)
            _require(isinstance(out, Tensor), f"{subject}: forward returned a {type(out).__name__}; return a tensor")
            return out

        # training mode: shapes, finite values, gradients into the parameters and the inputs it uses
        combiner.train()
        leaf_images = images.clone().requires_grad_(conditions)
        leaf_features = ImageFeatures(*(f.clone().requires_grad_() for f in encoded))
        leaf_text = TextFeatures(text.sentence.clone().requires_grad_(), text.tokens.clone().requires_grad_(), text.mask)
        out = query(combiner, leaf_images, leaf_features, leaf_text)
        if out.dim() == 2:
            _require(tuple(out.shape) == (BATCH, dim), f"{subject}: forward returned shape {tuple(out.shape)} for a batch "
                     f"of {BATCH} with embed_dim {dim}; return (B, embed_dim)")
        else:
            _require(out.dim() == 4 and tuple(out.shape[:2]) == (BATCH, encoder.map_channels),
                     f"{subject}: forward returned shape {tuple(out.shape)}; return (B, embed_dim) = ({BATCH}, {dim}) or "
                     f"a (B, map_channels, H, W) = ({BATCH}, {encoder.map_channels}, H, W) map for the encoder's head")
        _finite(subject, out, "forward's output")
        (out * torch.randn_like(out)).sum().backward()
        _parameter_gradients(subject, combiner, "forward's output")
        if uses_image:
            reached = _reached(leaf_images) if conditions else any(_reached(f) for f in leaf_features)
            _require(reached, f"{subject}: declares uses_image = True but no gradient reaches the "
                     f"{'images' if conditions else 'image features'}; use the image, or set uses_image = False")
        if uses_text:
            _require(_reached(leaf_text.sentence) or _reached(leaf_text.tokens), f"{subject}: declares uses_text = True "
                     "but no gradient reaches the text features; use the text, or set uses_text = False")

        # eval mode: no_grad, batch independence, padding ignored
        _perturb(combiner)
        combiner.eval()
        with torch.no_grad():
            with _step(subject, "forward under torch.no_grad()", "do not call backward or require gradients inside forward"):
                reference = query(combiner, images, encoded, text)
        with_grad = query(combiner, images, encoded, text)
        _require(_close(with_grad.detach(), reference), f"{subject}: in eval mode the output under torch.no_grad() "
                 f"differs from the output with gradients (by {_max_difference(with_grad.detach(), reference)}); "
                 "do not branch on torch.is_grad_enabled()")
        with torch.no_grad():
            for i in range(BATCH):
                rows = slice(i, i + 1)
                alone = query(combiner, images[rows], _rows(encoded, rows), _rows(text, rows))
                _require(_close(alone[0], reference[i]), f"{subject}: in eval mode row {i} computed alone differs from "
                         f"row {i} of the batch (by {_max_difference(alone[0], reference[i])}); a query must depend only "
                         "on its own image and text (no statistics over the batch in eval mode)")
            if uses_text:
                noisy = torch.where(text.mask[:, :, None], text.tokens, 100 * torch.randn_like(text.tokens))
                padded = query(combiner, images, encoded, TextFeatures(text.sentence, noisy, text.mask))
                _require(_close(padded, reference), f"{subject}: changing the tokens where the mask is False (padding) "
                         f"changed the output (by {_max_difference(padded, reference)}); read only the tokens where "
                         "text.mask is True: padding depends on the longest text of the batch")

        encoder.zero_grad(set_to_none=True)  # a conditioning combiner trained through it

        # config round trip
        loadable = _loadable_options(subject, factory, combiner.config())
        fresh = _build(subject, factory, (dim, dim, dim), {**sizes, **loadable}, Combiner, from_config=True)
        _restore(subject, combiner, fresh)
        fresh.eval()
        with torch.no_grad():
            again = query(fresh, images, encoded, text)
        _require(_close(again, reference), f"{subject}: a fresh instance built from config() with the state_dict loaded "
                 f"gives another output (by {_max_difference(again, reference)}); config() must return every option "
                 "the output depends on, and state that is not a tensor belongs in extra_state_metadata()")


# ----------------------------------------------------------------------------- loss


def check_loss(factory: Callable[..., Loss], **options: Any) -> None:
    """Check a loss against the contract of ``compose_retrieval.Loss``.

    ``factory(**options)`` receives queries and targets as the engine gives them:
    (B, D) rows, L2-normalised and multiplied by a scale of about 4, row i of the
    queries matching row i of the targets.

    Rules: it is a ``Loss``; it returns a finite scalar (0-d) tensor; on unrelated
    queries and targets (training's start) the gradient reaches both; it leaves its
    inputs unchanged; matching
    rows (targets = queries + small noise) give a lower loss than the same targets
    shuffled; a batch of 2 works; ``config()`` is JSON-able and a fresh instance built
    from it (with the ``state_dict``) gives the same value.

        def test_contract():
            check_loss(MyLoss, margin=0.2)
    """
    subject = f"loss {_name(factory)}"
    with _seeded():
        loss = _build(subject, factory, (), options, Loss)
        _remember(loss, options)
        loss.train()
        queries = SCALE * F.normalize(torch.randn(8, LOSS_DIM), dim=1)
        targets = SCALE * F.normalize(queries + 0.3 * torch.randn(8, LOSS_DIM), dim=1)
        unrelated = SCALE * F.normalize(torch.randn(8, LOSS_DIM), dim=1)  # as at the start of training
        q, t = queries.clone().requires_grad_(), unrelated.clone().requires_grad_()
        with _step(subject, f"forward(queries, targets) on a batch of 8 x {LOSS_DIM}",
                   "forward takes two (B, D) tensors and returns a scalar"):
            value = loss(q, t)
        _require(isinstance(value, Tensor) and value.dim() == 0, f"{subject}: forward returned "
                 f"{type(value).__name__ if not isinstance(value, Tensor) else 'shape ' + str(tuple(value.shape))}; "
                 "return a scalar (0-d) tensor, e.g. the mean over the batch")
        _finite(subject, value, "the loss")
        _require(torch.equal(q.detach(), queries) and torch.equal(t.detach(), unrelated), f"{subject}: forward "
                 "changed its inputs in place; compute on copies (the engine reuses the embeddings)")
        value.backward()
        _require(_reached(q), f"{subject}: on unrelated queries and targets no gradient reaches the queries; do not "
                 "detach them")
        _require(_reached(t), f"{subject}: on unrelated queries and targets no gradient reaches the targets; do not "
                 "detach them (the image encoder learns from both sides)")

        with torch.no_grad():
            matched = loss(queries, targets)
            shuffled = loss(queries, targets.roll(1, 0))
        _require(matched < shuffled, f"{subject}: matching rows (targets = queries + noise) give {matched.item():.4g}, "
                 f"not less than the same targets shuffled ({shuffled.item():.4g}); row i of the queries matches row i "
                 "of the targets and the loss must fall as they agree")
        with _step(subject, "forward on a batch of 2", "a batch of 2 is the smallest the engine trains with"):
            with torch.no_grad():
                small = loss(queries[:2], targets[:2])
        _require(isinstance(small, Tensor) and small.dim() == 0 and bool(torch.isfinite(small)),
                 f"{subject}: a batch of 2 gives {small!r}; return a finite scalar for B = 2")

        loss.eval()
        with torch.no_grad():
            reference = loss(queries, targets)
        loadable = _loadable_options(subject, factory, loss.config())
        fresh = _build(subject, factory, (), loadable, Loss, from_config=True)
        _restore(subject, loss, fresh)
        fresh.eval()
        with torch.no_grad():
            again = fresh(queries, targets)
        _require(_close(again, reference), f"{subject}: a fresh instance built from config() gives {again.item():.6g}, "
                 f"not {reference.item():.6g}; config() must return every option the value depends on")


# ----------------------------------------------------------------------------- image encoder


def _build_encoder(subject: str, factory: Any, out_dim: int, options: dict[str, Any], base: type) -> Any:
    """An encoder built as the engine builds it (``out_dim`` passed), remembering its options, embedding into out_dim."""
    encoder = _build(subject, factory, (), {"out_dim": out_dim, **options}, base)
    _remember(encoder, options)
    _require(encoder.out_dim == out_dim, f"{subject}: out_dim is {getattr(encoder, 'out_dim', None)!r} when built "
             f"with out_dim={out_dim}; embed into the out_dim the engine passes")
    return encoder


def check_image_encoder(factory: Callable[..., ImageEncoder], *, out_dim: int = EMBED_DIM, input_size: int = 32,
                        **options: Any) -> None:
    """Check an image encoder against the contract of ``compose_retrieval.ImageEncoder``.

    Built as the engine builds it, ``factory(out_dim=out_dim, **options)``, and run on
    random (B, 3, ``input_size``, ``input_size``) images (raise ``input_size`` for a
    backbone that needs larger ones).

    Rules: it is an ``ImageEncoder`` whose ``out_dim`` is the one passed and whose
    ``main_option`` (if any) is an option of the factory; ``forward`` returns an
    ``ImageFeatures`` with a finite (B, out_dim) ``pooled`` and a (B, map_channels, H, W)
    ``feature_map``; ``head(features(x))`` equals ``pooled``; each of ``feature_blocks()``
    is one of its modules whose output is a (B, channels, H, W) map with the channels
    declared; ``backbone()`` is None or one of its
    modules; the gradient reaches its parameters and the images; in eval mode row i
    depends only on image i, and ``torch.no_grad`` gives the same result; ``config()``
    is JSON-able and a fresh instance built from it loads the ``state_dict`` and gives
    the same embeddings.

        def test_contract():
            check_image_encoder(MyEncoder, width=8)
    """
    subject = f"image encoder {_name(factory)}"
    with _seeded():
        encoder = _build_encoder(subject, factory, out_dim, options, ImageEncoder)
        channels = getattr(encoder, "map_channels", None)
        _require(isinstance(channels, int) and channels > 0, f"{subject}: map_channels is {channels!r}; set it to the "
                 "number of channels of the feature map (combiners are sized by it)")
        main = type(encoder).main_option
        if main is not None:
            try:
                parameters = inspect.signature(factory).parameters
            except (TypeError, ValueError):
                parameters = {}
            _require(main in parameters, f"{subject}: main_option is {main!r}, which the factory does not take; name "
                     "the option that chooses the architecture (what --backbone sets), or leave it None")

        images = torch.randn(BATCH, 3, input_size, input_size)
        encoder.train()
        leaf = images.clone().requires_grad_()
        with _step(subject, f"forward on ({BATCH}, 3, {input_size}, {input_size}) images",
                   "take (B, 3, H, W) float images (give input_size= for a backbone that needs larger ones)"):
            out = encoder(leaf)
        _require(isinstance(out, ImageFeatures), f"{subject}: forward returned a {type(out).__name__}; return "
                 "ImageFeatures(pooled, feature_map) (the base class's forward does: implement features and head)")
        _require(tuple(out.pooled.shape) == (BATCH, out_dim), f"{subject}: pooled has shape {tuple(out.pooled.shape)}; "
                 f"return (B, out_dim) = ({BATCH}, {out_dim})")
        _require(out.feature_map.dim() == 4 and tuple(out.feature_map.shape[:2]) == (BATCH, channels),
                 f"{subject}: feature_map has shape {tuple(out.feature_map.shape)}; return (B, map_channels, H, W) = "
                 f"({BATCH}, {channels}, H, W)")
        _finite(subject, out.pooled, "pooled")
        _finite(subject, out.feature_map, "feature_map")
        (out.pooled * torch.randn_like(out.pooled)).sum().backward()
        trainable = [p for p in encoder.parameters() if p.requires_grad]
        _require(not trainable or any(p.grad is not None and p.grad.abs().sum() > 0 for p in trainable),
                 f"{subject}: no gradient reaches its parameters from pooled; do not detach the features")
        _require(_reached(leaf), f"{subject}: no gradient reaches the images from pooled; the embedding must be "
                 "computed from the images (a combiner that conditions the encoder trains through it)")

        own = {id(m) for m in encoder.modules()}
        with _step(subject, "backbone()", "return None or the module that may carry pretrained weights"):
            backbone = encoder.backbone()
        _require(backbone is None or (isinstance(backbone, nn.Module) and id(backbone) in own),
                 f"{subject}: backbone() returned {type(backbone).__name__}, not one of its own modules; return None or "
                 "the submodule whose learning rate training scales")
        with _step(subject, "feature_blocks()", "return a list of (module, channels)"):
            blocks = list(encoder.feature_blocks())
        for i, block in enumerate(blocks):
            _require(isinstance(block, tuple) and len(block) == 2 and isinstance(block[0], nn.Module)
                     and id(block[0]) in own and isinstance(block[1], int),
                     f"{subject}: feature_blocks()[{i}] is {block!r:.80}; each must be (one of its own modules, channels)")

        encoder.eval()
        seen: dict[int, Any] = {}
        handles = [module.register_forward_hook(lambda m, i, o, k=k: seen.setdefault(k, o))
                   for k, (module, _) in enumerate(blocks)]
        try:
            with torch.no_grad():
                with _step(subject, "forward under torch.no_grad()", "do not require gradients inside forward"):
                    reference = encoder(images)
                feature_map = encoder.features(images)
                headed = encoder.head(feature_map)
        finally:
            for h in handles:
                h.remove()
        for k, (_, declared) in enumerate(blocks):
            output = seen.get(k)
            _require(isinstance(output, Tensor) and output.dim() == 4 and output.shape[1] == declared,
                     f"{subject}: feature block {k} declares {declared} channels but its output is "
                     f"{tuple(output.shape) if isinstance(output, Tensor) else type(output).__name__}; list only blocks "
                     "whose outputs are (B, channels, H, W) maps in forward's path (a combiner conditioning the "
                     "encoder modulates their channels)")
        _require(_close(headed, reference.pooled), f"{subject}: head(features(x)) differs from forward(x).pooled (by "
                 f"{_max_difference(headed, reference.pooled)}); pooled must be head(feature_map): map-editing "
                 "combiners pass their map through head")
        _require(_close(feature_map, reference.feature_map), f"{subject}: features(x) differs from "
                 "forward(x).feature_map; forward must return the map features() computes")
        with_grad = encoder(images).pooled.detach()
        _require(_close(with_grad, reference.pooled), f"{subject}: in eval mode the embedding under torch.no_grad() "
                 f"differs from the one with gradients (by {_max_difference(with_grad, reference.pooled)})")
        with torch.no_grad():
            for i in range(BATCH):
                alone = encoder(images[i : i + 1]).pooled[0]
                _require(_close(alone, reference.pooled[i]), f"{subject}: in eval mode image {i} embedded alone differs "
                         f"from row {i} of the batch (by {_max_difference(alone, reference.pooled[i])}); use running "
                         "statistics, not the batch's, in eval mode")

        _perturb(encoder)
        with torch.no_grad():
            reference = encoder(images).pooled
        loadable = _loadable_options(subject, factory, encoder.config())
        fresh = _build(subject, factory, (), {"out_dim": out_dim, **loadable}, ImageEncoder, from_config=True)
        _restore(subject, encoder, fresh)
        fresh.eval()
        with torch.no_grad():
            again = fresh(images).pooled
        _require(_close(again, reference), f"{subject}: a fresh instance built from config() with the state_dict loaded "
                 f"embeds the images differently (by {_max_difference(again, reference)}); config() must return every "
                 "option the architecture depends on")


# ----------------------------------------------------------------------------- text encoder


def check_text_encoder(factory: Callable[..., TextEncoder], *, out_dim: int = EMBED_DIM, **options: Any) -> None:
    """Check a text encoder against the contract of ``compose_retrieval.TextEncoder``.

    Built as the engine builds it, ``factory(out_dim=out_dim, **options)``, fitted on a
    few training texts (``fit``) and run on lists of strings.

    Rules: it is a ``TextEncoder`` with the ``out_dim`` passed and an int ``token_dim``;
    ``forward(list of str)`` returns a ``TextFeatures`` with a finite (B, out_dim)
    ``sentence``, (B, T, token_dim) ``tokens`` and a bool (B, T) ``mask`` with at least
    one True in every row; an empty text, white space and unknown words do not crash;
    the gradient reaches its trainable parameters; in eval mode text i encoded alone
    gives the same sentence vector and real tokens as in a padded batch, and
    ``torch.no_grad`` the same result; ``config()`` and ``extra_state_metadata()`` are
    JSON-able and a fresh instance built from them loads the ``state_dict`` and gives the
    same output.

        def test_contract():
            check_text_encoder(MyTextEncoder, hidden_dim=16)
    """
    subject = f"text encoder {_name(factory)}"
    with _seeded():
        encoder = _build_encoder(subject, factory, out_dim, options, TextEncoder)
        token_dim = getattr(encoder, "token_dim", None)
        _require(isinstance(token_dim, int) and token_dim > 0, f"{subject}: token_dim is {token_dim!r}; set it to the "
                 "size of the per-token states (combiners that read the tokens are sized by it)")
        with _step(subject, "fit(training texts)", "fit learns what depends on the training texts, or does nothing"):
            encoder.fit(list(FIT_TEXTS))

        def encode(module: TextEncoder, texts: list[str], what: str) -> TextFeatures:
            with _step(subject, f"forward({what})", "forward takes a list of str and returns TextFeatures"):
                out = module(list(texts))
            _require(isinstance(out, TextFeatures), f"{subject}: forward returned a {type(out).__name__}; return "
                     "TextFeatures(sentence, tokens, mask)")
            b = len(texts)
            _require(tuple(out.sentence.shape) == (b, out_dim), f"{subject}: sentence has shape "
                     f"{tuple(out.sentence.shape)} for {b} texts; return (B, out_dim) = ({b}, {out_dim})")
            _require(out.tokens.dim() == 3 and out.tokens.shape[0] == b and out.tokens.shape[2] == token_dim,
                     f"{subject}: tokens has shape {tuple(out.tokens.shape)}; return (B, T, token_dim) = "
                     f"({b}, T, {token_dim})")
            _require(out.mask.dtype == torch.bool and tuple(out.mask.shape) == tuple(out.tokens.shape[:2]),
                     f"{subject}: mask is {out.mask.dtype} {tuple(out.mask.shape)}; return a bool (B, T) mask, True "
                     "where a token is real")
            _require(bool(out.mask.any(dim=1).all()), f"{subject}: a row of the mask for {what} has no True; give every "
                     "text one real token at least (an empty text may become one unknown token)")
            _finite(subject, out.sentence, f"the sentence vectors of {what}")
            _finite(subject, out.tokens[out.mask], f"the real tokens of {what}")
            return out

        encoder.train()
        out = encode(encoder, TEXTS, "the training texts")
        real = out.tokens[out.mask]
        loss = (out.sentence * torch.randn_like(out.sentence)).sum() + (real * torch.randn_like(real)).sum()
        if loss.requires_grad:
            loss.backward()
        trainable = [p for p in encoder.parameters() if p.requires_grad]
        _require(not trainable or any(p.grad is not None and p.grad.abs().sum() > 0 for p in trainable),
                 f"{subject}: no gradient reaches its trainable parameters; do not detach the outputs (or freeze them: "
                 "requires_grad_(False))")

        encoder.eval()
        with torch.no_grad():
            encode(encoder, ODD_TEXTS, "an empty text, white space and unknown words")
            reference = encode(encoder, TEXTS, "the training texts under torch.no_grad()")
            for i, text in enumerate(TEXTS):
                alone = encode(encoder, [text], f"[{text!r}]")
                _require(_close(alone.sentence[0], reference.sentence[i]), f"{subject}: in eval mode text {i} encoded "
                         f"alone gives another sentence vector than in a padded batch (by "
                         f"{_max_difference(alone.sentence[0], reference.sentence[i])}); padding must not change "
                         "a text's encoding")
                _require(_close(alone.tokens[0][alone.mask[0]], reference.tokens[i][reference.mask[i]]), f"{subject}: in "
                         f"eval mode text {i} encoded alone gives other real tokens (mask True) than in a padded batch; "
                         "mark exactly the real tokens, and keep padding out of them")
        with_grad = encoder(list(TEXTS)).sentence.detach()
        _require(_close(with_grad, reference.sentence), f"{subject}: in eval mode the sentence vectors under "
                 f"torch.no_grad() differ from those with gradients (by {_max_difference(with_grad, reference.sentence)})")

        _perturb(encoder)
        with torch.no_grad():
            reference = encoder(list(TEXTS))
        loadable = _loadable_options(subject, factory, encoder.config())
        fresh = _build(subject, factory, (), {"out_dim": out_dim, **loadable}, TextEncoder, from_config=True)
        _restore(subject, encoder, fresh)
        fresh.eval()
        with torch.no_grad():
            again = fresh(list(TEXTS))
        _require(_close(again.sentence, reference.sentence) and _close(again.tokens, reference.tokens),
                 f"{subject}: a fresh instance built from config() and extra_state_metadata() with the state_dict "
                 f"loaded encodes the texts differently (by {_max_difference(again.sentence, reference.sentence)}); "
                 "config() must hold every option, and extra_state_metadata() what fit() learned (a vocabulary)")


# ----------------------------------------------------------------------------- dataset


def _indices(n: int) -> list[int]:
    """A few indices spread over ``n`` items: the first two, the middle and the last."""
    return sorted({i for i in (0, 1, n // 2, n - 1) if 0 <= i < n})


def _image(subject: str, images: Any, index: int, size: int, what: str) -> Tensor:
    with _step(subject, f"{what}[{index}]", "items are preprocessed image tensors"):
        item = images[index]
    _check_image(subject, item, size, f"{what}[{index}]")
    return item


def _check_image(subject: str, item: Any, size: int, what: str) -> None:
    _require(isinstance(item, Tensor) and item.is_floating_point() and tuple(item.shape) == (3, size, size),
             f"{subject}: {what} is {_describe(item)}; images must be float (3, {size}, {size}) tensors: apply "
             "dataset.preprocessing (its image_size) to each image as it is read")
    _require(bool(torch.isfinite(item).all()), f"{subject}: {what} holds nan or inf")


def _describe(item: Any) -> str:
    return f"a {item.dtype} tensor of shape {tuple(item.shape)}" if isinstance(item, Tensor) else f"a {type(item).__name__}"


def _train_items(subject: str, dataset: Dataset, protocol: str, size: int) -> tuple[Any, list[int], list[dict]]:
    with _step(subject, f"train_set(seed=0, protocol={protocol!r})", "return a torch Dataset of training triplets"):
        train = dataset.train_set(seed=0, protocol=protocol)
    with _step(subject, "len(train_set(...))", "a training set is a map-style torch Dataset with __len__"):
        n = len(train)
    _require(n > 0, f"{subject}: train_set(seed=0, protocol={protocol!r}) is empty; it must hold training triplets")
    indices, items = _indices(n), []
    for i in indices:
        with _step(subject, f"train_set(seed=0, protocol={protocol!r})[{i}]", "items are dicts of source, text, target"):
            item = train[i]
        _require(isinstance(item, dict) and {"source", "text", "target"} <= set(item), f"{subject}: training item {i} "
                 f"is {type(item).__name__} {sorted(item) if isinstance(item, dict) else ''}; return a dict with "
                 "'source', 'text' and 'target'")
        for key in ("source", "target"):
            _check_image(subject, item[key], size, f"training item {i}'s {key!r}")
        _require(isinstance(item["text"], str), f"{subject}: training item {i}'s text is a "
                 f"{type(item['text']).__name__}; return the modification text as a str")
        items.append(item)
    return train, indices, items


def _same_source_batches(subject: str, dataset: Dataset, train: Any, indices: list[int], items: list[dict]) -> None:
    """What ``--mods-per-source`` batches need of a training set, checked through the engine's own batching."""
    per_source = dataset.mods_per_source
    fix = ("use compose_retrieval.data.Triplets or SampledPairs (they list a source's modifications), or set "
           "mods_per_source = 1")
    for attribute in ("triplet", "mods_of", "images", "source_images"):
        _require(hasattr(train, attribute), f"{subject}: mods_per_source is {per_source} but its training set has no "
                 f"{attribute!r}, which batches of several texts per source read; {fix}")
    for i, item in zip(indices, items):
        with _step(subject, f"train_set(...).triplet({i})", fix):
            source, text, target = train.triplet(i)
        _require(text == item["text"], f"{subject}: triplet({i}) gives the text {text!r} but item {i} holds "
                 f"{item['text']!r}; triplet(i) must describe item i")
        with _step(subject, f"train_set(...).mods_of({source})", fix):
            mods = train.mods_of(source)
        _require(text in mods and target in list(mods[text]), f"{subject}: item {i} goes from image {source} with "
                 f"{text!r} to image {target}, which mods_of({source}) does not list; mods_of must list every "
                 "modification the training set draws")
    from .batching import SameSourceBatches  # the engine's own batching, as training builds it

    with _step(subject, f"a batch of {2 * per_source} with {per_source} texts per source (mods_per_source)",
               "give sources that many different texts, or lower mods_per_source"):
        batch = SameSourceBatches(train, 2 * per_source, per_source, seed=0)[0]
    _require(isinstance(batch["source"], Tensor) and batch["source"].shape[0] == 2 * per_source,
             f"{subject}: a same-source batch holds {_describe(batch['source'])}; source_images and images must give "
             "preprocessed image tensors")


def check_dataset(dataset_or_factory: Dataset | Callable[..., Dataset], **options: Any) -> None:
    """Check a dataset against the contract of ``compose_retrieval.Dataset``.

    Give an instance (most datasets need a ``data_root``: build a tiny one in your
    test's ``tmp_path``), or a factory with its options: ``check_dataset(MyDataset,
    size=16)``. The check reads a few items of each set, never a whole dataset, and
    restores ``dataset.preprocessing`` when it is done.

    Rules: it is a ``Dataset`` with a ``Preprocessing``; ``protocols()`` is a non-empty
    list of distinct str; ``default_loss`` is None or a registered loss; ``config()`` is
    JSON-able; ``train_texts()`` is a non-empty list of str; for each protocol p,
    ``train_set(seed=0, protocol=p)`` is non-empty and its items are dicts with float
    (3, S, S) "source" and "target" tensors (S = ``preprocessing.image_size``) and a str
    "text", the same seed giving the same items; with ``mods_per_source`` > 1 the
    training set lists each source's modifications (``triplet``, ``mods_of``) so that the
    engine can build batches of several texts per source; ``protocol(p)`` is a
    ``RetrievalProtocol`` named p whose gallery and query images are float (3, S, S)
    tensors and whose query indices point into them; ``protocol(None)`` is the first
    protocol; an unknown protocol raises ``compose_retrieval.DatasetError``; and the
    protocol's images follow ``dataset.preprocessing`` when it is replaced after
    construction (evaluation sets a checkpoint's preprocessing on the dataset first).

        def test_contract(tmp_path):
            check_dataset(MyDataset(data_root=str(make_layout(tmp_path)), image_size=32))
    """
    if isinstance(dataset_or_factory, Dataset):
        if options:
            raise TypeError("options go with a factory; this dataset is built already")
        dataset = dataset_or_factory
        subject = f"dataset {dataset.display_name() if hasattr(dataset, 'display_name') else type(dataset).__name__}"
    else:
        subject = f"dataset {_name(dataset_or_factory)}"
        dataset = _build(subject, dataset_or_factory, (), options, Dataset)
        _remember(dataset, options)
    with _seeded():
        _check_dataset(subject, dataset)


def _check_dataset(subject: str, dataset: Dataset) -> None:
    preprocessing = getattr(dataset, "preprocessing", None)
    _require(isinstance(preprocessing, Preprocessing), f"{subject}: preprocessing is {type(preprocessing).__name__}; "
             "set self.preprocessing = Preprocessing(image_size, mean, std) in __init__ (checkpoints record it)")
    size = preprocessing.image_size
    with _step(subject, "protocols()", "return the names of the test protocols"):
        names = dataset.protocols()
    _require(isinstance(names, list) and names and all(isinstance(n, str) for n in names) and len(set(names)) == len(names),
             f"{subject}: protocols() returned {names!r:.100}; return a non-empty list of distinct protocol names (str)")
    default_loss = type(dataset).default_loss
    if default_loss is not None:
        from . import registry

        losses = registry.list_components("loss")
        _require(default_loss in losses, f"{subject}: default_loss is {default_loss!r}, which no installed plugin "
                 f"registers (losses: {', '.join(losses)}); name a registered loss, or None for the recipe's")
    per_source = type(dataset).mods_per_source
    _require(isinstance(per_source, int) and not isinstance(per_source, bool) and per_source >= 1,
             f"{subject}: mods_per_source is {per_source!r}; declare a whole number from 1 (1: pairs drawn independently)")
    _json(subject, "config()", dataset.config())
    with _step(subject, "train_texts()", "return every training text (the text encoder's vocabulary is fitted on them)"):
        texts = dataset.train_texts()
    _require(isinstance(texts, list) and texts and all(isinstance(t, str) for t in texts), f"{subject}: train_texts() "
             f"returned {_short(texts)}; return a non-empty list of str, every training text")

    for name in names:
        train, indices, items = _train_items(subject, dataset, name, size)
        _, _, again = _train_items(subject, dataset, name, size)
        for i, a, b in zip(indices, items, again):
            same = a["text"] == b["text"] and all(torch.equal(a[k], b[k]) for k in ("source", "target"))
            _require(same,
                     f"{subject}: train_set(seed=0, protocol={name!r})[{i}] differs between two calls; draw pairs from "
                     "the seed argument (numpy.random.default_rng((seed, index))), not from global random state")
        if per_source > 1:
            _same_source_batches(subject, dataset, train, indices, items)
        _check_protocol(subject, dataset, name, size)

    with _step(subject, "protocol(None)", "None asks for the default protocol, the first of protocols()"):
        default = dataset.protocol(None)
    _require(isinstance(default, RetrievalProtocol) and default.name == names[0], f"{subject}: protocol(None) built "
             f"{getattr(default, 'name', default)!r:.60}, not the first of protocols(), {names[0]!r}; build that one")
    try:
        dataset.protocol("no-such-protocol")
    except DatasetError:
        pass
    except Exception as exc:
        raise AssertionError(f"{subject}: protocol('no-such-protocol') raised {_line(exc)}; raise "
                             "compose_retrieval.DatasetError naming the protocols there are") from exc
    else:
        raise AssertionError(f"{subject}: protocol('no-such-protocol') returned a protocol; raise "
                             "compose_retrieval.DatasetError naming the protocols there are")

    other = size // 2 if size >= 16 else size * 2
    try:
        dataset.preprocessing = Preprocessing(other, preprocessing.mean, preprocessing.std, resize="resize_center_crop")
        with _step(subject, f"protocol({names[0]!r}) after dataset.preprocessing was replaced (image_size {other})",
                   "read dataset.preprocessing when images are loaded, not a copy taken in __init__"):
            replaced = dataset.protocol(names[0])
            gallery, queries = replaced.gallery[0], replaced.query_images[0]
        for what, item in (("gallery", gallery), ("query_images", queries)):
            _require(isinstance(item, Tensor) and tuple(item.shape) == (3, other, other), f"{subject}: after "
                     f"dataset.preprocessing was replaced by one of image_size {other}, protocol {names[0]!r}'s {what}[0] "
                     f"is {_describe(item)}; build the protocol's images with self.preprocessing as it is when protocol() "
                     "is called (evaluation sets a checkpoint's preprocessing on the dataset first)")
    finally:
        dataset.preprocessing = preprocessing


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _check_protocol(subject: str, dataset: Dataset, name: str, size: int) -> None:
    with _step(subject, f"protocol({name!r})", "build a RetrievalProtocol for every name protocols() lists"):
        protocol = dataset.protocol(name)
    _require(isinstance(protocol, RetrievalProtocol), f"{subject}: protocol({name!r}) returned a "
             f"{type(protocol).__name__}; return a compose_retrieval.RetrievalProtocol")
    _require(protocol.name == name, f"{subject}: protocol({name!r}) is named {protocol.name!r}; name it as asked "
             "(runs record their metrics under it)")
    gallery_size, query_size = len(protocol.gallery), len(protocol.query_images)
    _require(gallery_size > 0 and query_size > 0, f"{subject}: protocol {name!r} has {gallery_size} gallery and "
             f"{query_size} query images; it needs both")
    for i in _indices(gallery_size):
        _image(subject, protocol.gallery, i, size, f"protocol {name!r}'s gallery")
    for i in _indices(query_size):
        _image(subject, protocol.query_images, i, size, f"protocol {name!r}'s query_images")
    sources, exclude = torch.as_tensor(protocol.query_sources), torch.as_tensor(protocol.query_exclude)
    _require(not sources.is_floating_point() and int(sources.min()) >= 0 and int(sources.max()) < query_size,
             f"{subject}: protocol {name!r}'s query_sources run from {sources.min().item()} to {sources.max().item()}; "
             f"they index query_images (0 to {query_size - 1})")
    _require(not exclude.is_floating_point() and int(exclude.min()) >= -1 and int(exclude.max()) < gallery_size,
             f"{subject}: protocol {name!r}'s query_exclude runs from {exclude.min().item()} to {exclude.max().item()}; "
             f"it indexes the gallery (0 to {gallery_size - 1}), or is -1 for none")
    _require(all(isinstance(t, str) for t in protocol.query_texts), f"{subject}: protocol {name!r}'s query_texts "
             "must all be str")
    _require("label" in protocol.gallery_labels and set(protocol.gallery_labels) == set(protocol.query_labels),
             f"{subject}: protocol {name!r} has the label views {sorted(protocol.gallery_labels)} for the gallery and "
             f"{sorted(protocol.query_labels)} for the queries; give both the same views, 'label' (the main one) included")
