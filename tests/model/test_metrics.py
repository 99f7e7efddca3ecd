import numpy as np
import pytest

from core.model.metrics import classification_metrics, expected_calibration_error, reliability


def test_reliability_diagram_bins_and_calibration_error():
    # Ten products at 95% of which 9 are right, ten at 55% of which 5 are right: each bin is 5 points off.
    confidences = np.array([0.95] * 10 + [0.55] * 10)
    correct = np.array([True] * 9 + [False] + [True] * 5 + [False] * 5)
    result = reliability(confidences, correct)
    assert result["ece"] == pytest.approx(0.05)
    assert result["ece"] == pytest.approx(expected_calibration_error(confidences, correct))
    assert [(b["n"], round(b["confidence"], 2), b["accuracy"]) for b in result["bins"]] == [(10, 0.55, 0.5),
                                                                                          (10, 0.95, 0.9)]
    assert all(b["low"] <= b["confidence"] < b["high"] for b in result["bins"])
    assert reliability([1.0], [True])["bins"][0]["high"] == 1.0, "a confidence of 1 falls in the last bin"
    with pytest.raises(ValueError):
        reliability([0.5, 0.6], [True])


def test_metrics_carry_calibration_only_when_confidences_are_given():
    truth, guess = ["a", "a", "b", "b"], ["a", "b", "b", "b"]
    assert "calibration" not in classification_metrics(truth, guess, ["a", "b"])
    metrics = classification_metrics(truth, guess, ["a", "b"], confidences=[0.9, 0.8, 0.7, 0.6])
    assert sum(b["n"] for b in metrics["calibration"]["bins"]) == metrics["n"] == 4
    # The wrong guess was 80% sure: its bin is right 0% of the time.
    assert [b["accuracy"] for b in metrics["calibration"]["bins"] if b["low"] <= 0.8 < b["high"]] == [0.0]
