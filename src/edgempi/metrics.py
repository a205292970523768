"""Classification metrics of a finished run (no MPI, no torch)."""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np


def accuracy_interval(hits: int, images: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of an accuracy of ``hits`` out of ``images``: with 360 test images
    one error is 0.28 points, and the interval says which differences the split can tell apart."""
    if images < 1:
        raise ValueError("an accuracy interval needs at least one image")
    if not 0 <= hits <= images:
        raise ValueError(f"hits must lie in 0..{images}, not {hits}")
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    share, z2 = hits / images, z * z / images
    centre = (share + z2 / 2) / (1 + z2)
    half = z * math.sqrt(share * (1 - share) / images + z2 / (4 * images)) / (1 + z2)
    return max(0.0, min(share, centre - half)), min(1.0, max(share, centre + half))  # exact at the ends


def class_metrics(labels: np.ndarray, predictions: np.ndarray, classes: list[str]) -> dict:
    """Accuracy, confusion matrix (rows: true class) and per-class precision and recall."""
    n = len(classes)
    confusion = np.zeros((n, n), dtype=np.int64)
    np.add.at(confusion, (labels, predictions), 1)
    predicted, actual = confusion.sum(axis=0), confusion.sum(axis=1)
    hits = np.diag(confusion)
    per_class = {
        name: {
            "precision": float(hits[k] / predicted[k]) if predicted[k] else None,
            "recall": float(hits[k] / actual[k]) if actual[k] else None,
            "images": int(actual[k]),
        }
        for k, name in enumerate(classes)
    }
    return {**accuracy_fields(int(hits.sum()), len(labels)), "per_class": per_class, "confusion": confusion.tolist()}


def accuracy_fields(hits: int | None, images: int) -> dict:
    """A report's ``accuracy`` and ``accuracy_interval_95`` (None without labels or images)."""
    if hits is None or images < 1:
        return {"accuracy": None, "accuracy_interval_95": None}
    return {"accuracy": hits / images, "accuracy_interval_95": list(accuracy_interval(hits, images))}


def percent_with_interval(report: dict) -> str:
    """A report's accuracy and its 95% interval, in percent ("n/a" without labels)."""
    if report.get("accuracy") is None:
        return "n/a"
    low, high = report["accuracy_interval_95"]
    return f"{100 * report['accuracy']:.2f}% (95% interval {100 * low:.1f}-{100 * high:.1f}%)"
