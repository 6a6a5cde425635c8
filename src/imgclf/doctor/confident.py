"""Confident learning (Northcutt, Jiang & Chuang, JAIR 2021), written from the paper so that imgclf needs no
AGPL dependency: which images are likely mislabelled, how many are, and a full ranking of all of them.

From out-of-fold probabilities ``probs`` (N x K) and the given labels:

- each class's *confident threshold* is the mean probability of that class over the images labelled with it;
- the *confident joint* C[i][j] counts the images labelled i whose probability of j reaches j's threshold
  (the most probable such j when several do), calibrated so each row sums to the images labelled i and the
  whole to N; its off-diagonal mass is the estimate of how many labels are wrong (the paper's Q);
- *prune by noise rate* flags, for each off-diagonal cell (i, j), the C[i][j] images labelled i with the
  largest margin p(j) - p(i); an image the model still predicts as its given label is never flagged.

Every image is also scored by *self-confidence* (the probability of its given label) and *normalised margin*
(p(given) - max p(other)): the ranking the label-errors paper (Northcutt, Athalye & Mueller, NeurIPS 2021)
orders its candidates by. The results match cleanlab 2's ``find_label_issues`` (``filter_by=
"prune_by_noise_rate"``, the default); ``tests/test_doctor.py`` checks them against it where it is installed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

TOLERANCE = 1e-6  # a probability this close to a threshold counts as reaching it (as cleanlab)
RANKINGS = ("self_confidence", "normalized_margin")


def confident_thresholds(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Per class: the mean probability of the class among the images given that label (2.0, never
    reached, for a class no image is given)."""
    k = probs.shape[1]
    return np.array([probs[labels == c, c].mean() if np.any(labels == c) else 2.0 for c in range(k)])


def _round_preserving_sum(values: np.ndarray) -> np.ndarray:
    """Round to integers whose sum is the rounded sum, moving the values nearest .5 (as iteround)."""
    ints = values.round()
    target = round(float(values.sum()))
    while (difference := target - int(ints.sum())) != 0:
        step = 1 if difference > 0 else -1
        order = np.argsort(values - ints)[::-step][: abs(difference)]
        ints[order] += step
    return ints.astype(int)


def confident_joint(labels: np.ndarray, probs: np.ndarray, calibrate: bool = True) -> np.ndarray:
    """K x K counts: rows the given label, columns the label the probabilities confidently point to."""
    k = probs.shape[1]
    reached = probs >= confident_thresholds(labels, probs) - TOLERANCE
    confident = reached.sum(1) > 0
    guess = np.where(reached.sum(1) > 1, probs.argmax(1), reached.argmax(1))
    joint = np.zeros((k, k), dtype=np.int64)
    np.add.at(joint, (labels[confident], guess[confident]), 1)
    np.fill_diagonal(joint, joint.diagonal().clip(min=1))  # a class never confident still has one image
    if not calibrate:
        return joint
    counts = np.bincount(labels, minlength=k)
    scaled = joint / joint.sum(1, keepdims=True) * counts[:, None]  # each row: the images given that label
    scaled = scaled / scaled.sum() * counts.sum()
    return np.apply_along_axis(_round_preserving_sum, 1, scaled)


def estimated_errors(joint: np.ndarray) -> int:
    """How many labels the calibrated confident joint says are wrong: its off-diagonal mass."""
    return int(joint.sum() - np.trace(joint))


def _prune_counts(joint: np.ndarray, keep: int = 1) -> np.ndarray:
    """The joint transposed (rows the suggested label), each given label keeping at least ``keep`` images:
    the off-diagonal cells of a column shrink evenly by what its diagonal had to grow."""
    prune = joint.T.astype(float)
    diagonal = prune.diagonal()
    grown = np.maximum(diagonal, keep)
    others = np.maximum(np.count_nonzero(prune, axis=0) - 1.0, 1.0)
    prune = np.clip(prune - (grown - diagonal) / others, 0, None)
    np.fill_diagonal(prune, grown)
    return prune.astype(np.int64)  # truncated, as cleanlab: a fraction of an image is not pruned


def prune_by_noise_rate(labels: np.ndarray, probs: np.ndarray, joint: np.ndarray) -> np.ndarray:
    """A boolean mask of the images flagged: per cell (given i, suggested j), the joint's count of images
    labelled i with the largest p(j) - p(i), less those still predicted as their given label."""
    prune = _prune_counts(joint)
    flagged = np.zeros(len(labels), dtype=bool)
    for given in range(probs.shape[1]):
        members = np.flatnonzero(labels == given)
        if len(members) <= 1:  # a class of one image keeps it
            continue
        for suggested in range(probs.shape[1]):
            count = prune[suggested, given]
            if suggested == given or count <= 0:
                continue
            margin = probs[members, suggested] - probs[members, given]
            flagged[members[np.argsort(-margin, kind="stable")[:count]]] = True
    nudged = probs.copy()
    nudged[np.arange(len(labels)), labels] += TOLERANCE
    flagged[nudged.argmax(1) == labels] = False
    return flagged


def quality_scores(labels: np.ndarray, probs: np.ndarray, method: str = "self_confidence") -> np.ndarray:
    """Per image, how much its given label is to be believed (low: likely wrong)."""
    given = probs[np.arange(len(labels)), labels]
    if method == "self_confidence":
        return given
    if method == "normalized_margin":
        others = probs.copy()
        others[np.arange(len(labels)), labels] = -np.inf
        return (given - others.max(1) + 1) / 2  # in 0..1, 0.5 where the given label ties the best other
    raise ValueError(f"unknown ranking {method!r}: use {' or '.join(RANKINGS)}")


@dataclass
class LabelCheck:
    """Confident learning's answer for one set of out-of-fold probabilities."""

    flagged: np.ndarray  # indices of the images flagged, most likely wrong first
    order: np.ndarray  # every index, most likely wrong first (by ``ranking``)
    scores: dict[str, np.ndarray]  # per ranking method, per image
    estimated: int  # how many labels the confident joint says are wrong
    joint: np.ndarray  # the calibrated confident joint, K x K
    ranking: str
    labels: np.ndarray  # the given labels checked


def check_labels(labels: np.ndarray, probs: np.ndarray, ranking: str = "self_confidence") -> LabelCheck:
    """Flag, count and rank likely label errors (see the module's text); rows of ``probs`` are normalised."""
    labels = np.asarray(labels, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    probs = probs / probs.sum(1, keepdims=True)
    joint = confident_joint(labels, probs)
    mask = prune_by_noise_rate(labels, probs, joint)
    scores = {method: quality_scores(labels, probs, method) for method in RANKINGS}
    order = np.argsort(scores[ranking], kind="stable")
    flagged = order[mask[order]]
    return LabelCheck(flagged, order, scores, estimated_errors(joint), joint, ranking, labels)
