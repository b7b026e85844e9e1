"""The compositional classification evaluator equals a naive per-image loop of the reference algorithm (the czsl
evaluator of Mancini et al. 2021: bias on unseen pairs, closed-world mask, sweep of biases taken from the data,
trapezoid AUC), on random score matrices, and gives hand-computed values on a 3-image, 4-pair example."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from compose_retrieval import ComposeRetrievalError
from compose_retrieval.composition import chance_metrics, composition_metrics


def naive(scores, labels, seen, pairs, candidates, k, bias=1e3):
    """The algorithm as written, one image at a time: add the bias to every non-seen column, score -1e10 every
    non-candidate column, take the k best; the bias list from the unseen images right at bias 1e3."""
    scores = np.asarray(scores, dtype=np.float64)
    n, p = scores.shape

    def top(i, b):
        row = scores[i].copy()
        for j in range(p):
            if not seen[j]:
                row[j] += b
            if not candidates[j]:
                row[j] = -1e10
        return list(np.argsort(-row, kind="stable")[:k])

    def mean(values):
        return sum(values) / len(values) if values else None

    seen_images = [i for i in range(n) if seen[labels[i]]]
    unseen_images = [i for i in range(n) if not seen[labels[i]]]

    def accuracies(b):
        hit = {i: labels[i] in top(i, b) for i in range(n)}
        return mean([hit[i] for i in seen_images]), mean([hit[i] for i in unseen_images])

    out = {}
    hits, attrs, objs = [], [], []
    for i in range(n):
        predicted = top(i, 0.0)
        hits.append(labels[i] in predicted)
        attrs.append(any(pairs[j][0] == pairs[labels[i]][0] for j in predicted))
        objs.append(any(pairs[j][1] == pairs[labels[i]][1] for j in predicted))
    out["acc"], out["attr_acc"], out["obj_acc"] = mean(hits), mean(attrs), mean(objs)
    out["seen_acc"], out["unseen_acc"] = mean([hits[i] for i in seen_images]), mean([hits[i] for i in unseen_images])
    closed = []
    for i in unseen_images:  # named among the candidates that are not seen
        row = [scores[i][j] if candidates[j] and not seen[j] else -np.inf for j in range(p)]
        closed.append(labels[i] in list(np.argsort(-np.asarray(row), kind="stable")[:k]))
    out["closed_acc"] = mean(closed)
    seen_max, unseen_max = accuracies(bias)
    d = []
    for i in unseen_images:
        if labels[i] in top(i, bias):
            best_seen = sorted((scores[i][j] for j in range(p) if seen[j]), reverse=True)
            d.append(best_seen[k - 1] - scores[i][labels[i]] - 1e-4)
    d.sort()
    biases = d[:: max(len(d) // 20, 1)]
    seen_acc, unseen_acc = [], []
    for b in biases:
        s, u = accuracies(b)
        seen_acc.append(s)
        unseen_acc.append(u)
    biases, seen_acc, unseen_acc = biases + [bias], seen_acc + [seen_max], unseen_acc + [unseen_max]
    hm = [0.0 if s + u == 0 else 2 * s * u / (s + u) for s, u in zip(seen_acc, unseen_acc)]
    best = int(np.argmax(hm))
    out.update(auc=float(np.trapezoid(seen_acc, unseen_acc)), best_seen=max(seen_acc), best_unseen=max(unseen_acc),
               best_hm=hm[best], hm_seen=seen_acc[best], hm_unseen=unseen_acc[best], hm_bias=biases[best])
    out["curve"] = {"bias": biases, "seen": seen_acc, "unseen": unseen_acc}
    return out


def random_case(seed, n, attributes, objects, seen_fraction, closed, scale=1.0):
    rng = np.random.default_rng(seed)
    pairs = [(a, o) for a in range(attributes) for o in range(objects)]
    p = len(pairs)
    seen = rng.random(p) < seen_fraction
    seen[0], seen[-1] = True, False
    candidates = np.ones(p, dtype=bool) if not closed else seen | (rng.random(p) < 0.5)
    candidates[-1] = True
    allowed = np.flatnonzero(candidates)
    labels = rng.choice(allowed, size=n)
    labels[0], labels[1] = 0, p - 1  # at least one seen and one unseen image
    scores = rng.normal(size=(n, p)) * scale
    scores[np.arange(n), labels] += rng.random(n) * 2 * scale  # better than chance, so the sweep has points
    return scores, labels, seen, pairs, candidates


CASES = [
    # (seed, images, attributes, objects, fraction of seen pairs, closed world): bias lists of 2 to ~20 values
    (0, 12, 3, 4, 0.5, False),
    (1, 40, 5, 6, 0.4, True),
    (2, 150, 6, 8, 0.5, True),    # more than 20 right unseen images: a skip above 1
    (3, 300, 10, 10, 0.3, False),
    (4, 64, 4, 9, 0.7, True),
]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("k", [1, 3])
def test_the_evaluator_equals_the_naive_loop(case, k):
    scores, labels, seen, pairs, candidates = random_case(*case)
    got = composition_metrics(torch.tensor(scores, dtype=torch.float64), labels, seen, pairs,
                              candidates=candidates, ks=(k,))
    want = naive(scores, labels, seen, pairs, candidates, k)
    suffix = "" if k == 1 else f"_top{k}"
    assert len(want["curve"]["bias"]) >= 2
    for key in ("auc", "best_seen", "best_unseen", "best_hm", "hm_seen", "hm_unseen", "hm_bias", "acc", "seen_acc",
                "unseen_acc", "attr_acc", "obj_acc", "closed_acc"):
        assert got[key + suffix] == pytest.approx(want[key], abs=1e-12), key
    if k == 1:
        for key in ("bias", "seen", "unseen"):
            assert got["curve"][key] == pytest.approx(want["curve"][key], abs=1e-12), key
    assert got["images"] == len(labels) and got["pairs"] == int(candidates.sum())
    assert got["seen_images"] == int(seen[labels].sum()) and got["seen_pairs"] == int(seen.sum())


def test_bias_lists_of_every_length_were_met():
    lengths = set()
    for case in CASES:
        scores, labels, seen, pairs, candidates = random_case(*case)
        lengths.add(len(composition_metrics(scores, labels, seen, pairs, candidates=candidates)["curve"]["bias"]) - 1)
    assert min(lengths) < 10 and max(lengths) >= 20, lengths  # short lists (skip 1) and long ones (skip > 1)


def test_float32_scores_and_top_k_together():
    scores, labels, seen, pairs, candidates = random_case(5, 80, 5, 5, 0.5, True)
    got = composition_metrics(torch.tensor(scores, dtype=torch.float32), labels, seen, pairs, candidates=candidates, ks=(1, 2))
    for k, suffix in ((1, ""), (2, "_top2")):
        want = naive(torch.tensor(scores, dtype=torch.float32).double().numpy(), labels, seen, pairs, candidates, k)
        assert got["auc" + suffix] == pytest.approx(want["auc"], abs=1e-12)
        assert got["best_hm" + suffix] == pytest.approx(want["best_hm"], abs=1e-12)


HAND_PAIRS = [("a", "x"), ("b", "x"), ("a", "y"), ("b", "y")]  # the first two seen
HAND_SEEN = [True, True, False, False]
HAND_SCORES = [
    [0.9, 0.1, 0.5, 0.2],  # image 0, "a x" (seen)
    [0.8, 0.3, 0.6, 0.1],  # image 1, "a y" (unseen)
    [0.2, 0.7, 0.4, 0.6],  # image 2, "b y" (unseen)
]
HAND_LABELS = [0, 2, 3]


def test_a_hand_computed_example():
    """Without bias: image 0 is right, image 1 says "a x", image 2 says "b x". At bias 1e3 the unseen images are
    right and the seen one wrong. d = 0.8 - 0.6 - 1e-4 = 0.1999 (image 1) and 0.7 - 0.6 - 1e-4 = 0.0999 (image 2):
    at 0.0999 nothing unseen is right yet (0.6 + 0.0999 < 0.7), at 0.1999 image 2 is (0.7999 > 0.7), image 1 not
    (0.7999 < 0.8). Curve (unseen, seen): (0, 1), (0.5, 1), (1, 0): AUC 0.5 x 1 + 0.5 x 0.5 = 0.75; harmonic means
    0, 2/3, 0."""
    m = composition_metrics(torch.tensor(HAND_SCORES, dtype=torch.float64), HAND_LABELS, HAND_SEEN, HAND_PAIRS, ks=(1, 2))
    assert m["curve"]["bias"] == pytest.approx([0.0999, 0.1999, 1e3])
    assert m["curve"]["seen"] == [1.0, 1.0, 0.0] and m["curve"]["unseen"] == [0.0, 0.5, 1.0]
    assert m["auc"] == pytest.approx(0.75)
    assert m["best_hm"] == pytest.approx(2 / 3) and (m["hm_seen"], m["hm_unseen"]) == (1.0, 0.5)
    assert m["hm_bias"] == pytest.approx(0.1999)
    assert (m["best_seen"], m["best_unseen"]) == (1.0, 1.0)
    assert m["acc"] == pytest.approx(1 / 3) and (m["seen_acc"], m["unseen_acc"]) == (1.0, 0.0)
    assert m["attr_acc"] == 1.0 and m["obj_acc"] == pytest.approx(1 / 3)  # "a x" for "a y", "b x" for "b y"
    assert m["closed_acc"] == 1.0  # among "a y" and "b y" only, both unseen images are right
    # top-2: everything right without bias; the sweep uses the 2nd best seen score: d = 0.3 - 0.6 - 1e-4 (image 1),
    # 0.2 - 0.6 - 1e-4 (image 2), the same curve shape
    assert m["acc_top2"] == 1.0 and m["attr_acc_top2"] == 1.0 and m["obj_acc_top2"] == 1.0
    assert m["auc_top2"] == pytest.approx(0.75) and m["best_hm_top2"] == pytest.approx(2 / 3)
    assert m["hm_bias_top2"] == pytest.approx(-0.3001)
    assert (m["images"], m["seen_images"], m["unseen_images"], m["pairs"], m["seen_pairs"], m["unseen_pairs"]) == (3, 1, 2, 4, 2, 2)


def test_closed_world_equals_masking_and_leaving_out():
    """Leaving a pair out of the candidates is the reference's -1e10 score."""
    scores, labels, seen, pairs, candidates = random_case(6, 60, 5, 5, 0.5, True)
    masked = composition_metrics(scores, labels, seen, pairs, candidates=candidates)
    keep = np.flatnonzero(candidates)
    column = {int(j): i for i, j in enumerate(keep)}
    kept = composition_metrics(scores[:, keep], [column[int(l)] for l in labels], seen[keep], [pairs[j] for j in keep])
    for key in ("auc", "best_hm", "best_seen", "best_unseen", "acc", "attr_acc", "obj_acc"):
        assert masked[key] == kept[key]


def test_all_unseen_images_have_no_sweep_and_empty_lists_are_refused():
    scores = torch.tensor(HAND_SCORES)[1:]
    m = composition_metrics(scores, HAND_LABELS[1:], HAND_SEEN, HAND_PAIRS)
    assert m["auc"] is None and m["best_hm"] is None and m["seen_acc"] is None
    assert m["unseen_acc"] == 0.0 and m["closed_acc"] == 1.0 and m["best_unseen"] == 1.0
    with pytest.raises(ComposeRetrievalError, match="candidate"):
        composition_metrics(torch.tensor(HAND_SCORES), HAND_LABELS, HAND_SEEN, HAND_PAIRS, candidates=[True, True, True, False])
    with pytest.raises(ComposeRetrievalError, match="seen pair must be a candidate"):
        composition_metrics(torch.tensor(HAND_SCORES), HAND_LABELS, HAND_SEEN, HAND_PAIRS, candidates=[True, False, True, True])
    with pytest.raises(ComposeRetrievalError, match="3 labels"):
        composition_metrics(torch.tensor(HAND_SCORES)[:2], HAND_LABELS, HAND_SEEN, HAND_PAIRS)


def test_chance_is_near_the_analytic_rates():
    rng = np.random.default_rng(0)
    pairs = [(a, o) for a in range(4) for o in range(5)]
    labels = rng.integers(0, len(pairs), size=400)
    seen = [j % 2 == 0 for j in range(len(pairs))]
    chance = chance_metrics(labels, seen, pairs, draws=5)
    assert chance["acc"] == pytest.approx(1 / 20, abs=0.02)
    assert chance["attr_acc"] == pytest.approx(1 / 4, abs=0.04) and chance["obj_acc"] == pytest.approx(1 / 5, abs=0.04)
    assert chance["closed_acc"] == pytest.approx(1 / 10, abs=0.03)
