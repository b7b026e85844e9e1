"""Compositional classification: name an image's (attribute, object) pair, pairs never seen in training included.

A trained composition model classifies without new weights. A dataset offers the task
(``Dataset.composition_task(split, phase)`` returns a ``CompositionTask``: the images to
name with their pairs, the split's pairs, the training images and the text of each
attribute). For each candidate pair (a, o) a *prototype* is the mean of the normalised
composed queries ``compose(x, text of a)`` over the training images x of object o shown
with another attribute; an image scores ``cosine(embed(image), prototype)`` against every
pair. A combiner may offer its own pair scorer instead (``Combiner.pair_prototypes``).

The scores are judged as the field does on MIT-States since Purushwalkam et al. 2019
("Task-driven modular networks"), with the evaluator of Mancini et al. 2021 (CompCos,
the czsl repository; Nayak et al. 2023, CSP, uses the same): closed world (the
candidates are the training pairs plus the phase's pairs) or open world (every
attribute x object), a calibration bias added to the scores of the pairs unseen in
training and swept over about 20 values taken from the data, then the best seen and
unseen accuracy, the best harmonic mean and the area under the seen-unseen curve
(``composition_metrics``). The closed-world top-1 of Misra et al. 2017 and Nagarajan
and Grauman 2018 (candidates: the phase's unseen pairs only) is ``closed_acc``.

Memory: the (N, P) score matrix is the one large array (float32: 13k images x 28k
open-world pairs is 1.5 GB); scoring and evaluation go through it a block of rows at a
time and keep only each image's best few seen and unseen pairs.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Hashable, Literal, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .components import Combiner
from .data import label_ids
from .evaluation import _loader, _to_device, embed_gallery, load_with_dataset
from .errors import ComposeRetrievalError, DatasetError, OptionError
from .features import ImageFeatures, TextFeatures
from .model import ComposedRetrievalModel
from .options import Range, check_value
from .progress import CountProgress

__all__ = [
    "CompositionTask", "Classification", "DEFAULT_BIAS", "SCORERS", "composition_metrics", "chance_metrics",
    "pair_prototypes", "score_pairs", "classify", "classify_checkpoint",
]

Pair = tuple[str, str]

DEFAULT_BIAS = 1e3
"""The bias that puts every unseen pair before every seen one (the reference evaluator's; scores must span less)."""

SCORERS = ("auto", "prototype", "native")
"""How pairs are scored: "prototype" (the engine's rule), "native" (the combiner's ``pair_prototypes``, an error if it
has none), "auto" (native when the combiner offers it)."""

_SUMMARY_ROWS = 1024  # rows of the score matrix handled at once


@dataclass
class CompositionTask:
    """A compositional classification task: images to name by their (attribute, object) pair.

    - ``name``: how messages and results call it ("natural/test").
    - ``images`` / ``labels``: the images to classify (an image set of preprocessed (3, S, S)
      tensors, ``ImageFiles`` or ``TensorImages``) and the (attribute, object) of each.
    - ``train_pairs``: the pairs seen in training. ``phase_pairs``: the pairs of the phase
      (val or test), seen and unseen; every label is one of them (or a training pair).
    - ``pairs``: every pair of the split's files (train, val and test), the closed world's
      universe; the closed-world candidates are ``train_pairs`` plus ``phase_pairs``.
    - ``attributes`` / ``objects``: the open world is every attribute x object (default:
      those of ``pairs``, sorted).
    - ``train_images`` / ``train_labels``: the training images prototypes are built from.
    - ``texts``: attribute -> the text composed with an image to give it that attribute.
    - ``counts``: images per split, recorded with the results.
    - ``protocols``: the dataset's training protocols that keep the phase's unseen pairs out
      of training; a model trained on another protocol of the same dataset is refused.
    - ``split`` / ``phase``: which task this is; ``Dataset.composition_task`` records them.
    """

    name: str
    images: torch.utils.data.Dataset
    labels: list[Pair]
    train_pairs: list[Pair]
    phase_pairs: list[Pair]
    pairs: list[Pair]
    train_images: torch.utils.data.Dataset
    train_labels: list[Pair]
    texts: dict[str, str]
    attributes: list[str] = field(default_factory=list)
    objects: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    protocols: tuple[str, ...] = ()
    split: str | None = None
    phase: str | None = None

    def __post_init__(self) -> None:
        self.labels = [tuple(p) for p in self.labels]
        self.train_pairs, self.phase_pairs = [tuple(p) for p in self.train_pairs], [tuple(p) for p in self.phase_pairs]
        self.pairs, self.train_labels = [tuple(p) for p in self.pairs], [tuple(p) for p in self.train_labels]
        what = f"composition task {self.name!r}"
        if len(self.labels) != len(self.images) or not self.labels:
            raise DatasetError(f"{what}: {len(self.labels)} labels for {len(self.images)} images (at least one needed)")
        if len(self.train_labels) != len(self.train_images):
            raise DatasetError(f"{what}: {len(self.train_labels)} training labels for {len(self.train_images)} training images")
        universe = set(self.pairs)
        for group, pairs in (("training", self.train_pairs), ("phase", self.phase_pairs)):
            stray = [p for p in pairs if p not in universe]
            if stray:
                raise DatasetError(f"{what}: the {group} pair {' '.join(stray[0])!r} is not among the split's pairs")
        candidates = set(self.train_pairs) | set(self.phase_pairs)
        stray = [p for p in self.labels if p not in candidates]
        if stray:
            raise DatasetError(f"{what}: an image is labelled {' '.join(stray[0])!r}, neither a training nor a phase pair")
        self.attributes = list(self.attributes) or sorted({a for a, _ in self.pairs})
        self.objects = list(self.objects) or sorted({o for _, o in self.pairs})
        missing = [a for a in self.attributes if a not in self.texts]
        if missing:
            raise DatasetError(f"{what}: no text for the attribute {missing[0]!r}")

    def candidates(self, open_world: bool = False) -> list[Pair]:
        """The pairs an image is named among: closed world, the split's pairs that are training or phase pairs (in
        ``pairs``' order); open world, every attribute x object (attributes outer, objects inner)."""
        if open_world:
            return list(itertools.product(self.attributes, self.objects))
        keep = set(self.train_pairs) | set(self.phase_pairs)
        return [p for p in self.pairs if p in keep]


@dataclass
class Classification:
    """What ``classify`` returns: the metrics, the (N, P) scores (row i: image i of the task, column j:
    ``pairs[j]``), the true column of each image, the task, and which columns are seen and unseen pairs."""

    metrics: dict[str, Any]
    scores: Tensor
    pairs: list[Pair]
    labels: Tensor
    task: CompositionTask
    seen: Tensor  # column j is a training pair
    phase_unseen: Tensor  # column j is a pair of the phase not seen in training


# ----------------------------------------------------------------------------------------------- the evaluator


def composition_metrics(
    scores: Tensor,
    labels: Tensor | Sequence[int],
    seen: Tensor | Sequence[bool],
    pairs: Sequence[tuple[Hashable, Hashable]],
    *,
    candidates: Tensor | Sequence[bool] | None = None,
    phase_unseen: Tensor | Sequence[bool] | None = None,
    ks: Sequence[int] = (1,),
    bias: float = DEFAULT_BIAS,
) -> dict[str, Any]:
    """The field's metrics of an (N images, P pairs) score matrix, higher scores better.

    ``labels[i]``: the column of image i's true pair; ``seen[j]``: pair j is a training pair
    (an image is *seen* when its true pair is); ``pairs[j]``: its (attribute, object), for
    attribute and object accuracy; ``candidates[j]``: pair j may be predicted (default: all;
    the reference evaluator scores the others -1e10, which is the same as leaving them
    out); ``phase_unseen[j]``: pair j is one of the phase's unseen pairs, the candidates of
    ``closed_acc`` (default: every candidate that is not seen).

    The algorithm of the czsl evaluator (Mancini et al. 2021), per image, accuracies per
    image: a prediction is the k best candidates after adding a bias b to every unseen
    column; a hit at top-k is the true pair among them. At b = ``bias`` (1e3: unseen
    pairs first) the seen and unseen accuracies are the curve's last point. Each unseen
    image right at that bias gives d = (its k-th best seen score) - (its true score) -
    1e-4; sorted, every max(len(d) // 20, 1)-th d is a bias of the sweep. Returned, for
    each k in ``ks`` (k = 1 plain, else with the suffix ``_topK``):

    - ``auc``: the trapezoid area under seen accuracy over unseen accuracy along the sweep;
    - ``best_seen``, ``best_unseen``, ``best_hm`` (harmonic mean), and ``hm_seen``,
      ``hm_unseen``, ``hm_bias`` where the harmonic mean is best (the last point: ``bias``);
    - ``acc``, ``seen_acc``, ``unseen_acc``, ``attr_acc``, ``obj_acc``: without bias (b = 0),
      over all, seen and unseen images; attribute (object) accuracy: a predicted pair has the
      true attribute (object);
    - ``closed_acc``: the unseen images named among the phase's unseen pairs only (the
      closed world of Misra et al. 2017 and Attributes as Operators);
    - ``curve`` (top-1 only): the sweep's ``bias``, ``seen`` and ``unseen`` lists.

    And ``images``, ``seen_images``, ``unseen_images``, ``pairs`` (candidates),
    ``seen_pairs``, ``unseen_pairs``. Sweep metrics are None when the images are all seen
    or all unseen; an accuracy over no image is None. Biased scores are added in float64.
    """
    scores = torch.as_tensor(scores)
    if scores.dim() != 2:
        raise ComposeRetrievalError(f"composition_metrics: scores must be (images, pairs), not {tuple(scores.shape)}")
    n, p = scores.shape
    labels = torch.as_tensor(labels, dtype=torch.long).flatten()
    seen = torch.as_tensor(seen, dtype=torch.bool).flatten()
    candidates = torch.ones(p, dtype=torch.bool) if candidates is None else torch.as_tensor(candidates, dtype=torch.bool).flatten()
    if len(labels) != n or len(seen) != p or len(candidates) != p or len(pairs) != p:
        raise ComposeRetrievalError(f"composition_metrics: {n} x {p} scores with {len(labels)} labels, {len(seen)} seen "
                                    f"flags, {len(candidates)} candidate flags and {len(pairs)} pairs")
    if n == 0:
        raise ComposeRetrievalError("composition_metrics: no image to score")
    if labels.min() < 0 or labels.max() >= p or not bool(candidates[labels].all()):
        raise ComposeRetrievalError("composition_metrics: every label must be the column of a candidate pair")
    if bool((seen & ~candidates).any()):
        raise ComposeRetrievalError("composition_metrics: every seen pair must be a candidate (training pairs always are)")
    phase_unseen = candidates & ~seen if phase_unseen is None else torch.as_tensor(phase_unseen, dtype=torch.bool).flatten() & candidates
    ks = sorted({int(k) for k in ks} | {1})
    if ks[0] < 1:
        raise ComposeRetrievalError(f"composition_metrics: top-k needs k >= 1, not {ks[0]}")
    attr = label_ids([a for a, _ in pairs])[0]
    obj = label_ids([o for _, o in pairs])[0]

    seen_cols = torch.nonzero(seen & candidates).flatten()
    unseen_cols = torch.nonzero(~seen & candidates).flatten()
    closed_cols = torch.nonzero(phase_unseen).flatten()
    kmax = max(ks)
    seen_img = seen[labels]
    summary = _summaries(scores, labels, seen_cols, unseen_cols, closed_cols, kmax)

    metrics: dict[str, Any] = {
        "images": n, "seen_images": int(seen_img.sum()), "unseen_images": int((~seen_img).sum()),
        "pairs": int(candidates.sum()), "seen_pairs": len(seen_cols), "unseen_pairs": len(unseen_cols),
    }
    for k in ks:
        suffix = "" if k == 1 else f"_top{k}"
        values = _metrics_at_k(summary, labels, seen_img, attr, obj, k, bias)
        curve = values.pop("curve")
        metrics.update({f"{name}{suffix}": value for name, value in values.items()})
        if k == 1:
            metrics["curve"] = curve
    return metrics


@dataclass
class _Summary:
    """Each image's best kmax seen and unseen candidates (scores in float64, columns), its true score, and its best
    phase-unseen candidates."""

    seen_values: Tensor
    seen_cols: Tensor
    unseen_values: Tensor
    unseen_cols: Tensor
    closed_cols: Tensor
    true: Tensor


def _summaries(scores: Tensor, labels: Tensor, seen_cols: Tensor, unseen_cols: Tensor, closed_cols: Tensor,
               kmax: int) -> _Summary:
    n = scores.shape[0]
    ks = {name: min(kmax, len(cols)) for name, cols in (("seen", seen_cols), ("unseen", unseen_cols), ("closed", closed_cols))}
    # the outputs are made first and filled in place: small tensors kept between the blocks' large temporaries would
    # pin those in the C heap, and the process would grow by a block per block
    out = _Summary(torch.empty(n, ks["seen"], dtype=torch.float64), torch.empty(n, ks["seen"], dtype=torch.long),
                   torch.empty(n, ks["unseen"], dtype=torch.float64), torch.empty(n, ks["unseen"], dtype=torch.long),
                   torch.empty(n, ks["closed"], dtype=torch.long), torch.empty(n, dtype=torch.float64))
    targets = ((seen_cols, out.seen_values, out.seen_cols), (unseen_cols, out.unseen_values, out.unseen_cols),
               (closed_cols, None, out.closed_cols))
    for start in range(0, n, _SUMMARY_ROWS):
        block = scores[start : start + _SUMMARY_ROWS]
        stop = start + block.shape[0]
        for cols, values_out, cols_out in targets:
            if cols_out.shape[1]:
                values, index = block[:, cols].topk(cols_out.shape[1], dim=1)
                if values_out is not None:
                    values_out[start:stop] = values
                cols_out[start:stop] = cols[index]
                del values, index
        out.true[start:stop] = block[torch.arange(block.shape[0]), labels[start:stop]]
    return out


def _predict(summary: _Summary, bias: float, k: int) -> Tensor:
    """(N, k) columns of the k best candidates when ``bias`` is added to every unseen one (ties: seen first, then
    the better-ranked)."""
    values = torch.cat([summary.seen_values[:, :k], summary.unseen_values[:, :k] + bias], dim=1)
    cols = torch.cat([summary.seen_cols[:, :k], summary.unseen_cols[:, :k]], dim=1)
    order = torch.sort(values, dim=1, descending=True, stable=True).indices[:, :k]
    return cols.gather(1, order)


def _mean(hits: Tensor) -> float | None:
    return float(hits.double().mean()) if len(hits) else None


def _hm(seen: float, unseen: float) -> float:
    return 0.0 if seen + unseen == 0 else 2 * seen * unseen / (seen + unseen)


def _metrics_at_k(summary: _Summary, labels: Tensor, seen_img: Tensor, attr: Tensor, obj: Tensor, k: int,
                  bias: float) -> dict[str, Any]:
    def hits(b: float) -> Tensor:
        return (_predict(summary, b, k) == labels[:, None]).any(1)

    out: dict[str, Any] = {}
    unbiased = _predict(summary, 0.0, k)
    pair_hits = (unbiased == labels[:, None]).any(1)
    out["acc"], out["seen_acc"], out["unseen_acc"] = _mean(pair_hits), _mean(pair_hits[seen_img]), _mean(pair_hits[~seen_img])
    out["attr_acc"] = _mean((attr[unbiased] == attr[labels][:, None]).any(1))
    out["obj_acc"] = _mean((obj[unbiased] == obj[labels][:, None]).any(1))
    closed = summary.closed_cols[:, :k]
    out["closed_acc"] = _mean((closed == labels[:, None]).any(1)[~seen_img]) if closed.shape[1] else None

    at_max = hits(bias)
    seen_max, unseen_max = _mean(at_max[seen_img]), _mean(at_max[~seen_img])
    sweep = {"auc": None, "best_seen": seen_max, "best_unseen": unseen_max, "best_hm": None,
             "hm_seen": None, "hm_unseen": None, "hm_bias": None}
    curve: dict[str, list[float]] = {"bias": [], "seen": [], "unseen": []}
    if seen_max is not None and unseen_max is not None and summary.seen_values.shape[1] >= k:
        unseen = torch.nonzero(~seen_img & at_max).flatten()
        d = summary.seen_values[unseen, k - 1] - summary.true[unseen] - 1e-4
        d = torch.sort(d).values
        biases = d[:: max(len(d) // 20, 1)].tolist()
        seen_acc, unseen_acc = [], []
        for b in biases:
            h = hits(b)
            seen_acc.append(_mean(h[seen_img]))
            unseen_acc.append(_mean(h[~seen_img]))
        biases.append(bias)
        seen_acc.append(seen_max)
        unseen_acc.append(unseen_max)
        hm = [_hm(s, u) for s, u in zip(seen_acc, unseen_acc)]
        best = max(range(len(hm)), key=lambda i: (hm[i], -i))  # the first maximum, as numpy's argmax
        auc = sum((unseen_acc[i + 1] - unseen_acc[i]) * (seen_acc[i + 1] + seen_acc[i]) / 2 for i in range(len(hm) - 1))
        sweep = {"auc": auc, "best_seen": max(seen_acc), "best_unseen": max(unseen_acc), "best_hm": hm[best],
                 "hm_seen": seen_acc[best], "hm_unseen": unseen_acc[best], "hm_bias": biases[best]}
        curve = {"bias": biases, "seen": seen_acc, "unseen": unseen_acc}
    return {**sweep, **out, "curve": curve}


def chance_metrics(labels: Tensor | Sequence[int], seen: Tensor | Sequence[bool], pairs: Sequence[tuple[Hashable, Hashable]],
                   *, draws: int = 10, seed: int = 0, **options: Any) -> dict[str, Any]:
    """``composition_metrics`` of uniformly random scores, averaged over ``draws`` draws from ``seed``: the
    chance level of every metric, bias sweep included (``options``: those of ``composition_metrics``)."""
    check_value("chance_metrics", "draws", draws, Annotated[int, Range(1, 10_000)])
    generator = torch.Generator().manual_seed(seed)
    labels = torch.as_tensor(labels, dtype=torch.long)
    total: dict[str, list[float]] = defaultdict(list)
    for _ in range(draws):
        metrics = composition_metrics(torch.rand(len(labels), len(pairs), generator=generator), labels, seen, pairs, **options)
        for key, value in metrics.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                total[key].append(float(value))
    return {key: sum(values) / len(values) for key, values in total.items()}


# ----------------------------------------------------------------------------------------------- scoring


def _native(combiner: Combiner) -> bool:
    return type(combiner).pair_prototypes is not Combiner.pair_prototypes


def _text_features(model: ComposedRetrievalModel, texts: list[str], device: torch.device, batch_size: int) -> TextFeatures | None:
    if not model.combiner.uses_text:
        return None
    parts = [model.text_encoder(texts[i : i + batch_size]) for i in range(0, len(texts), batch_size)]
    width = max(p.tokens.shape[1] for p in parts)
    pad = lambda t: F.pad(t, (0, 0, 0, width - t.shape[1])) if t.dim() == 3 else F.pad(t, (0, width - t.shape[1]))  # noqa: E731
    return TextFeatures(torch.cat([p.sentence for p in parts]), torch.cat([pad(p.tokens) for p in parts]),
                        torch.cat([pad(p.mask) for p in parts]))


def _rows(features: TextFeatures | ImageFeatures | None, index: Tensor):
    return None if features is None else type(features)(*(f[index] for f in features))


@torch.no_grad()
def pair_prototypes(
    model: ComposedRetrievalModel,
    task: CompositionTask,
    pairs: Sequence[Pair],
    *,
    scorer: str = "auto",
    batch_size: int = 256,
    device: torch.device | str | None = None,
    num_workers: int = 0,
    progress: bool = False,
) -> tuple[Tensor, dict[str, Any]]:
    """(P, D) unit-length prototypes of ``pairs`` (a zero row for a pair whose object has no training image with
    another attribute) and what was done: ``{"scorer": "prototype" | "native", "pairs_without_prototype": n}``.

    The prototype rule: prototype(a, o) = the mean of the normalised ``compose(x, texts[a])`` over the training
    images x of object o whose attribute is not a. ``scorer``: see ``SCORERS``. The model is put in eval mode.
    """
    check_value("pair_prototypes", "scorer", scorer, Literal[SCORERS])
    check_value("pair_prototypes", "batch_size", batch_size, Annotated[int, Range(1, None)])
    device = torch.device(device) if device is not None else next(model.parameters()).device
    native = _native(model.combiner)
    if scorer == "native" and not native:
        raise OptionError(f"the combiner {type(model.combiner).__name__} offers no native pair scorer "
                          "(Combiner.pair_prototypes); use the prototype scorer")
    model.eval()
    attributes = sorted({a for a, _ in pairs})
    text = _text_features(model, [task.texts[a] for a in attributes], device, batch_size)
    attribute_id = {a: i for i, a in enumerate(attributes)}
    by_object: dict[str, list[int]] = defaultdict(list)  # object -> its training images
    for i, (_, o) in enumerate(task.train_labels):
        by_object[o].append(i)
    with_attribute = defaultdict(int)  # (attribute, object) -> its training images
    for label in task.train_labels:
        with_attribute[label] += 1
    has_other = {(a, o): len(by_object.get(o, ())) > with_attribute.get((a, o), 0) for a, o in pairs}
    missing = sum(not v for v in has_other.values())
    if native and scorer != "prototype":
        prototypes = _native_prototypes(model, task, pairs, by_object, text, attribute_id, batch_size, device,
                                        num_workers, progress)
        if prototypes is not None:
            return prototypes, {"scorer": "native", "pairs_without_prototype": missing}
        if scorer == "native":
            raise OptionError(f"the combiner {type(model.combiner).__name__}'s pair_prototypes returned None")
    sums = torch.zeros(len(pairs), model.image_encoder.out_dim, dtype=torch.float64, device=device)
    if not model.combiner.uses_image:  # compose(x, a) does not depend on x: one query per attribute
        queries = F.normalize(model._compose(None, text).float(), dim=-1)
        for j, (a, o) in enumerate(pairs):
            if has_other[(a, o)]:
                sums[j] = queries[attribute_id[a]]
    else:
        _accumulate(model, task, pairs, by_object, text, attribute_id, sums, batch_size, device, num_workers, progress)
    return F.normalize(sums.float(), dim=-1), {"scorer": "prototype", "pairs_without_prototype": missing}


def _accumulate(model, task, pairs, by_object, text, attribute_id, sums, batch_size, device, num_workers, progress) -> None:
    """Add normalised compose(x, a) into ``sums[j]`` for every pair j = (a, o) and training image x of o with another
    attribute: the training images stream once, object after object; each batch of images meets every attribute
    of its objects' pairs, ``batch_size`` (image, attribute) items at a time."""
    columns: dict[str, list[tuple[int, str]]] = defaultdict(list)  # object -> (column, attribute) of its pairs
    for j, (a, o) in enumerate(pairs):
        columns[o].append((j, a))
    order = [i for o in sorted(columns) for i in by_object.get(o, ())]
    if not order:
        return
    conditions = model.combiner.conditions_image_encoder
    with CountProgress("prototypes", len(order), progress) as bar:
        done = 0
        for images in _loader(task.train_images, order, batch_size, num_workers, device):
            images = _to_device(images, device)
            rows = order[done : done + len(images)]
            done += len(images)
            items = [(r, j, attribute_id[a]) for r, i in enumerate(rows) for j, a in columns[task.train_labels[i][1]]
                     if task.train_labels[i][0] != a]
            features = None if conditions else model.combiner.image_features(model.image_encoder, images, None)
            for start in range(0, len(items), batch_size):
                chunk = torch.tensor(items[start : start + batch_size], dtype=torch.long, device=device)
                image_rows, cols, attrs = chunk.unbind(1)
                texts = _rows(text, attrs)
                if conditions:
                    image = model.combiner.image_features(model.image_encoder, images[image_rows], texts)
                else:
                    image = _rows(features, image_rows)
                composed = F.normalize(model._compose(image, texts).float(), dim=-1)
                sums.index_add_(0, cols, composed.double())
            bar.advance(len(images))


def _native_prototypes(model, task, pairs, by_object, text, attribute_id, batch_size, device, num_workers,
                       progress) -> Tensor | None:
    """The combiner's own prototypes: ``combiner.pair_prototypes(objects, attributes)`` where row j of ``objects``
    is the mean image features (pooled vector and feature map) of pair j's object over its training images with
    another attribute, and row j of ``attributes`` the text features of its attribute."""
    sums: dict[Hashable, list] = {}  # key (object,) or (object, attribute) -> [pooled sum, map sum, count]
    order = [i for o in sorted(by_object) for i in by_object[o]]
    with CountProgress("object features", len(order), progress) as bar:
        done = 0
        for images in _loader(task.train_images, order, batch_size, num_workers, device):
            features = model.image_encoder(_to_device(images, device))
            for r, i in enumerate(order[done : done + len(images)]):
                a, o = task.train_labels[i]
                for key in ((o,), (o, a)):
                    entry = sums.setdefault(key, [0.0, 0.0, 0])
                    entry[0] = entry[0] + features.pooled[r].double()
                    entry[1] = entry[1] + features.feature_map[r].double()
                    entry[2] += 1
            done += len(images)
            bar.advance(len(images))
    if not sums:
        return None
    pooled_size, map_size = next(iter(sums.values()))[0].shape, next(iter(sums.values()))[1].shape
    out = torch.zeros(len(pairs), model.image_encoder.out_dim, device=device)
    with CountProgress("pair prototypes", len(pairs), progress) as bar:
        for start in range(0, len(pairs), batch_size):
            chunk = pairs[start : start + batch_size]
            pooled, maps, keep = [], [], []
            for r, (a, o) in enumerate(chunk):
                total, own = sums.get((o,)), sums.get((o, a))
                count = (total[2] if total else 0) - (own[2] if own else 0)
                if count == 0:
                    pooled.append(torch.zeros(pooled_size, dtype=torch.float64, device=device))
                    maps.append(torch.zeros(map_size, dtype=torch.float64, device=device))
                    continue
                keep.append(r)
                pooled.append((total[0] - (own[0] if own else 0)) / count)
                maps.append((total[1] - (own[1] if own else 0)) / count)
            objects = ImageFeatures(torch.stack(pooled).float(), torch.stack(maps).float())
            attrs = torch.tensor([attribute_id[a] for a, _ in chunk], dtype=torch.long, device=device)
            composed = model.combiner.pair_prototypes(objects, _rows(text, attrs))
            if composed is None:
                return None
            if composed.dim() == 4:
                composed = model.image_encoder.head(composed)
            composed = F.normalize(composed.float(), dim=-1)
            index = torch.tensor(keep, dtype=torch.long, device=device)
            out[start + index] = composed[index]
            bar.advance(len(chunk))
    return out


def score_pairs(embeddings: Tensor, prototypes: Tensor, *, rows: int = 1024, progress: bool = False) -> Tensor:
    """(N, P) float32 cosine scores of unit-length image embeddings (N, D) against prototypes (P, D), on the CPU,
    ``rows`` images at a time on the prototypes' device (the result is the only (N, P) array made)."""
    out = torch.empty(embeddings.shape[0], prototypes.shape[0], dtype=torch.float32)
    targets = prototypes.float().T.contiguous()
    with CountProgress("scores", embeddings.shape[0], progress) as bar:
        for start in range(0, embeddings.shape[0], rows):
            block = embeddings[start : start + rows].to(targets.device).float()
            if targets.device.type == "cpu":  # straight into the result: no temporary block per step
                torch.matmul(block, targets, out=out[start : start + len(block)])
            else:
                out[start : start + len(block)].copy_(block @ targets)
            bar.advance(len(block))
    return out


# ----------------------------------------------------------------------------------------------- classify


def classify(
    model: ComposedRetrievalModel,
    dataset,
    *,
    split: str | None = None,
    phase: str = "test",
    open_world: bool = False,
    scorer: str = "auto",
    ks: Sequence[int] = (1,),
    batch_size: int = 256,
    device: torch.device | str | None = None,
    num_workers: int = 0,
    progress: bool = False,
    task: CompositionTask | None = None,
) -> Classification:
    """Name the images of ``dataset``'s composition task (``split``, ``phase``) with ``model``: the metrics of
    ``composition_metrics`` plus ``split``, ``phase``, ``world``, ``scorer``, ``pairs_without_prototype`` and the
    image ``counts``, and the (N, P) scores. ``split`` None: the dataset's first. A ``task`` given is used as is.

    ``scorer``: "prototype" (the rule above), "native" (the combiner's ``pair_prototypes``) or "auto" (native when
    the combiner has one). Images are fed as ``dataset.preprocessing`` makes them: set it to the model's
    (``model.preprocessing``) first, as ``classify_checkpoint`` does.
    """
    check_value("classify", "phase", phase, str)
    check_value("classify", "batch_size", batch_size, Annotated[int, Range(1, None)])
    check_value("classify", "num_workers", num_workers, Annotated[int, Range(0, None)])
    for k in ks:
        check_value("classify", "k", k, Annotated[int, Range(1, 1000)])

    task = task if task is not None else dataset.composition_task(split, phase)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    pairs = task.candidates(open_world)
    column = {p: j for j, p in enumerate(pairs)}
    labels = torch.tensor([column[p] for p in task.labels], dtype=torch.long)
    train, phase_set = set(task.train_pairs), set(task.phase_pairs)
    seen = torch.tensor([p in train for p in pairs], dtype=torch.bool)
    phase_unseen = torch.tensor([p in phase_set and p not in train for p in pairs], dtype=torch.bool)
    was_training = model.training
    model.eval()
    try:
        prototypes, how = pair_prototypes(model, task, pairs, scorer=scorer, batch_size=batch_size, device=device,
                                          num_workers=num_workers, progress=progress)
        embeddings = embed_gallery(model, task.images, batch_size, device, num_workers)
    finally:
        model.train(was_training)
    scores = score_pairs(embeddings, prototypes, progress=progress)
    metrics = composition_metrics(scores, labels, seen, pairs, phase_unseen=phase_unseen, ks=ks)
    metrics = {"task": task.name, "split": task.split, "phase": task.phase or phase,
               "world": "open" if open_world else "closed", **how, **metrics, "counts": dict(task.counts)}
    return Classification(metrics, scores, pairs, labels, task, seen, phase_unseen)


def classify_checkpoint(
    path: str | Path,
    *,
    data_root: str | None = None,
    split: str | None = None,
    phase: str = "test",
    open_world: bool = False,
    scorer: str = "auto",
    ks: Sequence[int] = (1,),
    device: str = "auto",
    batch_size: int = 256,
    num_workers: int = 0,
    progress: bool = False,
    chance_draws: int = 0,
) -> Classification:
    """``classify`` a checkpoint (a file, a run directory or a zoo name) on the dataset it was trained on, rebuilt
    with its recorded options from ``data_root`` (a checkpoint never chooses the files read), images fed with the
    checkpoint's preprocessing. ``split`` None: the protocol the model was trained on when the dataset has a split of
    that name, else the dataset's first split. A model trained on a protocol of the same dataset that saw the
    split's unseen pairs is refused. ``chance_draws`` > 0 adds ``metrics["chance"]`` (``chance_metrics``)."""
    from .zoo import resolve

    check_value("classify", "chance_draws", chance_draws, Annotated[int, Range(0, 10_000)])
    check_value("classify", "scorer", scorer, Literal[SCORERS])  # before the checkpoint and the data are read
    path = resolve(path)  # the file, named in messages and the metrics
    model, meta, dataset, device = load_with_dataset(path, data_root=data_root, device=device, doing="classify")
    recipe = meta.get("recipe") or {}
    name = recipe["dataset"]
    trained_on = recipe.get("protocol")
    splits = dataset.composition_splits()
    if split is None and isinstance(trained_on, str) and trained_on in splits:
        split = trained_on
    task = dataset.composition_task(split, phase)
    if isinstance(trained_on, str) and task.protocols and trained_on not in task.protocols:
        raise ComposeRetrievalError(
            f"{path} was trained on {name!r} protocol {trained_on!r}, whose training images include pairs that "
            f"{task.name} holds out as unseen; train with --protocol {task.protocols[0]} to classify it")
    result = classify(model, dataset, phase=phase, open_world=open_world, scorer=scorer, ks=ks, batch_size=batch_size,
                      device=device, num_workers=num_workers, progress=progress, task=task)
    result.metrics = {"checkpoint": str(path), "dataset": name, "trained_on": trained_on, **result.metrics}
    if chance_draws:
        result.metrics["chance"] = chance_metrics(result.labels, result.seen, result.pairs, draws=chance_draws,
                                                  phase_unseen=result.phase_unseen, ks=ks)
    return result
