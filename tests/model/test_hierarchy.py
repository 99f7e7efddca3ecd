import numpy as np
import pytest

from core.model.hierarchy import Taxonomy, accuracy_by_level, coverage_curve

# Fruit › Apple › {Granny-Smith, Pink-Lady}; Fruit › Banana (a shallow leaf); Vegetables › Leek.
PARENTS = {"Granny-Smith": "Apple", "Pink-Lady": "Apple", "Apple": "Fruit", "Banana": "Fruit", "Leek": "Vegetables"}
CLASSES = ["Banana", "Granny-Smith", "Leek", "Pink-Lady"]


def test_levels_paths_and_loops():
    tree = Taxonomy(PARENTS)
    assert tree.path("Granny-Smith") == ["Fruit", "Apple", "Granny-Smith"]
    assert tree.display("Pink-Lady") == "Fruit › Apple › Pink-Lady"
    assert [tree.at_level("Granny-Smith", level) for level in range(4)] == ["Fruit", "Apple", "Granny-Smith",
                                                                           "Granny-Smith"]
    assert tree.at_level("Banana", 2) == "Banana", "a shallow category stands for itself below its depth"
    assert tree.levels(CLASSES) == 3 and Taxonomy().levels(CLASSES) == 1
    assert tree.would_loop("Fruit", "Granny-Smith") and not tree.would_loop("Leek", "Fruit")
    with pytest.raises(ValueError, match="loops"):
        Taxonomy({"A": "B", "B": "A"})


def test_coarse_probabilities_are_the_sum_of_their_descendants():
    tree = Taxonomy(PARENTS)
    probabilities = np.array([[0.1, 0.35, 0.2, 0.35]])
    groups, rolled = tree.roll_up(probabilities, CLASSES, 0)
    assert groups == ["Fruit", "Vegetables"] and np.allclose(rolled, [[0.8, 0.2]])
    groups, rolled = tree.roll_up(probabilities, CLASSES, 1)
    assert groups == ["Apple", "Banana", "Leek"] and np.allclose(rolled, [[0.7, 0.1, 0.2]])


def test_an_unsure_prediction_falls_back_to_the_deepest_level_the_model_is_sure_of():
    tree = Taxonomy(PARENTS)
    probabilities = np.array([
        [0.05, 0.9, 0.0, 0.05],   # sure of the variety
        [0.1, 0.4, 0.1, 0.4],     # an apple, variety unsure
        [0.3, 0.25, 0.2, 0.25],   # fruit, not sure which
        [0.3, 0.0, 0.4, 0.3],     # not even sure of fruit vs vegetables at 0.7
    ])
    assert tree.fallback(probabilities, CLASSES, 0.7) == ["Granny-Smith", "Fruit › Apple › ?", "Fruit › ?", "?"]
    assert tree.fallback(probabilities, CLASSES, 0.0) == ["Granny-Smith", "Granny-Smith", "Banana", "Leek"]
    # A shallow leaf is never offered as its own coarse answer ("Fruit › Banana › ?" would mean nothing).
    assert tree.fallback(np.array([[0.6, 0.2, 0.0, 0.2]]), CLASSES, 0.65) == ["Fruit › ?"]


def test_accuracy_at_every_level_and_coverage():
    tree = Taxonomy(PARENTS)
    truth = ["Granny-Smith", "Pink-Lady", "Banana", "Leek"]
    probabilities = np.array([[0.0, 0.9, 0.0, 0.1], [0.0, 0.6, 0.0, 0.4], [0.4, 0.0, 0.6, 0.0],
                              [0.0, 0.0, 1.0, 0.0]])
    levels = accuracy_by_level(tree, truth, probabilities, CLASSES)
    assert [(row["level"], row["correct"]) for row in levels] == [(0, 3), (1, 3), (2, 2)]
    curve = {row["threshold"]: row for row in coverage_curve(tree, truth, probabilities, CLASSES, [0.0, 0.7])}
    assert curve[0.0]["fine_coverage"] == 1.0 and curve[0.0]["fine_accuracy"] == 0.5
    # At 0.7 the two unsure rows answer "Fruit › Apple › ?" (right) and "?" (no answer).
    assert curve[0.7]["fine_coverage"] == 0.5 and curve[0.7]["fine_accuracy"] == 1.0
    assert (curve[0.7]["answered"], curve[0.7]["answers_right"]) == (3, 3)


def test_a_confusion_matrix_sums_into_coarser_levels():
    from core.model.hierarchy import confusion_at_level

    tree = Taxonomy(PARENTS)
    # rows true, columns predicted, in CLASSES order: two apples confused with each other, one banana as leek.
    matrix = [[3, 0, 1, 0], [0, 4, 0, 2], [0, 0, 5, 0], [0, 1, 0, 6]]
    groups, summed = confusion_at_level(CLASSES, matrix, tree, 1)
    assert groups == ["Apple", "Banana", "Leek"] and summed == [[13, 0, 0], [0, 3, 1], [0, 0, 5]]
    groups, summed = confusion_at_level(CLASSES, matrix, tree, 0)
    assert groups == ["Fruit", "Vegetables"] and summed == [[16, 1], [0, 5]]
