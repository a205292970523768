"""The accuracy interval against its definition and its known values."""

import math
from statistics import NormalDist

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgempi.metrics import accuracy_fields, accuracy_interval, class_metrics


@given(st.integers(1, 5000).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n))))
def test_the_interval_holds_the_accuracy_and_solves_wilsons_equation(case):
    hits, images = case
    low, high = accuracy_interval(hits, images)
    share = hits / images
    assert 0 <= low <= share <= high <= 1
    z = NormalDist().inv_cdf(0.975)
    for bound in (low, high):  # Wilson's bounds: |p - bound| = z * sqrt(bound (1 - bound) / n)
        assert abs(share - bound) == pytest.approx(z * math.sqrt(bound * (1 - bound) / images), abs=1e-9)


def test_a_perfect_split_of_360_images_is_not_certain():
    low, high = accuracy_interval(360, 360)
    assert high == 1.0 and 0.98 < low < 0.995  # Wilson: 0.9894 at 95%
    assert accuracy_interval(353, 360)[0] < 353 / 360 - 0.01  # 98.06%: about +-1.4 points


def test_an_impossible_count_is_refused():
    with pytest.raises(ValueError):
        accuracy_interval(5, 4)
    with pytest.raises(ValueError):
        accuracy_interval(0, 0)


def test_class_metrics_count_the_confusion_and_bound_the_accuracy():
    labels = np.array([0, 0, 1, 1, 2, 2])
    predictions = np.array([0, 1, 1, 1, 2, 0])
    metrics = class_metrics(labels, predictions, ["a", "b", "c"])
    assert metrics["confusion"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert metrics["accuracy"] == pytest.approx(4 / 6)
    assert metrics["accuracy_interval_95"] == list(accuracy_interval(4, 6))
    assert metrics["per_class"]["b"] == {"precision": 2 / 3, "recall": 1.0, "images": 2}
    assert accuracy_fields(None, 6) == {"accuracy": None, "accuracy_interval_95": None}
