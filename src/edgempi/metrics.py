"""Classification metrics of a finished run (no MPI, no torch)."""

from __future__ import annotations

import math
from statistics import NormalDist


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
