"""Category trees (Fruit › Apple › Granny-Smith): levels, the model's coarse predictions, and "Fruit › ?".

A :class:`Taxonomy` holds each category's parent (from folder paths on import, a
``category,parent`` CSV, or the app). The classifier still predicts the categories
people label with; a coarser level's probability is the sum of its descendants'
(:meth:`Taxonomy.roll_up`), so the coarse prediction comes from the model itself.
:meth:`Taxonomy.fallback` turns a prediction too unsure of its fine category into
the deepest ancestor the model is sure enough of ("Fruit › ?") instead of a
confident-looking wrong fine label. Level 0 is a tree's root; a category shallower
than the level asked for stands for itself at that level.
"""

from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import numpy as np

SEPARATOR = " › "
UNKNOWN = "?"
MAX_DEPTH = 16
# Below this confidence a fine prediction gives way to its coarse category (README: coverage vs accuracy).
DEFAULT_THRESHOLD = 0.5


class Taxonomy:
    """Parents of categories; every method takes plain category names."""

    def __init__(self, parents: Mapping[str, str] | None = None):
        self.parents = dict(parents or {})
        for category in self.parents:
            self.path(category)  # refuses cycles and trees deeper than MAX_DEPTH

    def __bool__(self) -> bool:
        return bool(self.parents)

    def ancestors(self, category: str) -> list[str]:
        """Parent first, root last."""
        found, node = [], category
        while node in self.parents:
            node = self.parents[node]
            if node == category or node in found or len(found) >= MAX_DEPTH:
                raise ValueError(f"the category tree loops or is deeper than {MAX_DEPTH} levels at {category!r}")
            found.append(node)
        return found

    def path(self, category: str) -> list[str]:
        """Root first, ``category`` last."""
        return [*reversed(self.ancestors(category)), category]

    def depth(self, category: str) -> int:
        return len(self.ancestors(category))

    def at_level(self, category: str, level: int) -> str:
        """``category``'s ancestor at ``level`` (itself when it is not that deep)."""
        path = self.path(category)
        return path[min(level, len(path) - 1)]

    def levels(self, categories: Iterable[str]) -> int:
        """How many levels the tree has above and at ``categories`` (1 without any parent)."""
        return max((self.depth(category) + 1 for category in categories), default=1)

    def display(self, category: str) -> str:
        return SEPARATOR.join(self.path(category))

    def would_loop(self, category: str, parent: str) -> bool:
        """Whether giving ``category`` this ``parent`` would make a cycle."""
        return parent == category or category in self.ancestors(parent)

    def roll_up(self, probabilities: np.ndarray, classes: Sequence[str], level: int) -> tuple[list[str], np.ndarray]:
        """Class probabilities summed per ancestor at ``level``: ``(groups, probabilities[n, groups])``."""
        mapped = [self.at_level(name, level) for name in classes]
        groups = sorted(set(mapped))
        index = {group: i for i, group in enumerate(groups)}
        membership = np.zeros((len(classes), len(groups)), dtype=np.float64)
        membership[np.arange(len(classes)), [index[group] for group in mapped]] = 1.0
        return groups, np.asarray(probabilities, dtype=np.float64) @ membership

    def fallback(self, probabilities: np.ndarray, classes: Sequence[str], threshold: float) -> list[str]:
        """Per row: the top class if its probability reaches ``threshold``, else the deepest ancestor whose
        summed probability does, written ``"Fruit › Apple › ?"``; ``"?"`` if no level does."""
        probabilities = np.asarray(probabilities, dtype=np.float64)
        answers = [classes[int(i)] if p >= threshold else None
                   for i, p in zip(probabilities.argmax(axis=1), probabilities.max(axis=1))]
        for level in reversed(range(self.levels(classes) - 1)):
            pending = [row for row, answer in enumerate(answers) if answer is None]
            if not pending:
                break
            groups, rolled = self.roll_up(probabilities[pending], classes, level)
            mapped = [self.at_level(name, level) for name in classes]
            # A shallow leaf standing for itself at this level already had its chance above.
            alone = {group for group in groups if mapped.count(group) == 1 and group in classes}
            for row, scores in zip(pending, rolled):
                best = int(scores.argmax())
                if scores[best] >= threshold and groups[best] not in alone:
                    answers[row] = self.display(groups[best]) + SEPARATOR + UNKNOWN
        return [answer or UNKNOWN for answer in answers]


def accuracy_by_level(taxonomy: Taxonomy, true_labels: Sequence[str], probabilities: np.ndarray,
                      classes: Sequence[str]) -> list[dict]:
    """Accuracy at every level, each level's prediction rolled up from the model's probabilities.

    Returns ``[{"level", "correct", "n", "accuracy"}]`` from the roots (level 0) down to the
    finest level; the finest is the classifier's own top-1.
    """
    levels = taxonomy.levels([*classes, *true_labels])
    results = []
    for level in range(levels):
        groups, rolled = taxonomy.roll_up(probabilities, classes, level)
        predicted = [groups[i] for i in rolled.argmax(axis=1)]
        truth = [taxonomy.at_level(label, level) for label in true_labels]
        correct = sum(p == t for p, t in zip(predicted, truth))
        results.append({"level": level, "correct": int(correct), "n": len(truth),
                        "accuracy": correct / len(truth) if truth else None})
    return results


def coverage_curve(taxonomy: Taxonomy, true_labels: Sequence[str], probabilities: np.ndarray,
                   classes: Sequence[str], thresholds: Sequence[float]) -> list[dict]:
    """For each threshold: how many photos keep a fine answer (coverage) and how often it is right,
    and how often the answer given (fine, or "Fruit › ?") is right at its own level."""
    rows = []
    for threshold in thresholds:
        answers = taxonomy.fallback(probabilities, classes, threshold)
        fine = [(a, t) for a, t in zip(answers, true_labels) if not a.endswith(UNKNOWN)]
        right = 0
        for answer, truth in zip(answers, true_labels):
            if answer == UNKNOWN:
                continue
            if answer.endswith(UNKNOWN):
                node = answer.split(SEPARATOR)[-2]
                right += node in taxonomy.path(truth)
            else:
                right += answer == truth
        fine_right = sum(a == t for a, t in fine)
        rows.append({"threshold": threshold, "fine_answered": len(fine), "fine_right": int(fine_right),
                     "fine_coverage": len(fine) / len(answers) if answers else None,
                     "fine_accuracy": fine_right / len(fine) if fine else None,
                     "answered": sum(a != UNKNOWN for a in answers), "answers_right": int(right),
                     "n": len(answers)})
    return rows


def confusion_at_level(classes: Sequence[str], matrix: Sequence[Sequence[int]], taxonomy: Taxonomy,
                       level: int) -> tuple[list[str], list[list[int]]]:
    """A fine confusion matrix (rows true, columns predicted) summed into the categories at ``level``."""
    groups = sorted({taxonomy.at_level(name, level) for name in classes})
    index = {group: i for i, group in enumerate(groups)}
    mapping = np.zeros((len(classes), len(groups)), dtype=np.int64)
    mapping[np.arange(len(classes)), [index[taxonomy.at_level(name, level)] for name in classes]] = 1
    summed = mapping.T @ np.asarray(matrix, dtype=np.int64).reshape(len(classes), len(classes)) @ mapping
    return groups, summed.tolist()
