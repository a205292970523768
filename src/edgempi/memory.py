"""A long job's resident memory: measured, and what glibc's allocator keeps handed back.

torch frees a batch's feature maps and the head's products to the C allocator, which keeps
much of it: a steady 2-rank VGG-16 job's classifier rank grew by 25-30% over 1,200 images
while its Python objects did not (``docs/adaptation.md``, soak). ``malloc_trim`` gives the
kept pages back; trimming after every batch would make the next one fault them in again, so
``Trimmer`` trims only when the process has grown past a slack over its size after the
first batch it watched (or over what a trim left).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from pathlib import Path

GROWTH_SLACK = 0.02  # trim once resident memory is this much above the reference


def resident_mb() -> float:
    """This process's resident memory in MB (Linux ``/proc/self/statm``; 0 elsewhere)."""
    statm = Path("/proc/self/statm")
    if not statm.exists():
        return 0.0
    return int(statm.read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _malloc_trim():
    """glibc's ``malloc_trim``, or None where the C library has none (musl, macOS)."""
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None


class Trimmer:
    """Call ``after_batch`` after every batch; ``reset`` when the work changes shape (a new plan)."""

    def __init__(self, slack: float = GROWTH_SLACK):
        self.slack, self.trim = slack, _malloc_trim()
        self.reference: float | None = None
        self.trims = 0

    def reset(self) -> None:
        self.reference = None

    def after_batch(self) -> None:
        if self.trim is None:
            return
        resident = resident_mb()
        if self.reference is None:
            self.reference = resident
        elif resident > self.reference * (1 + self.slack):
            self.trim(0)
            self.trims += 1
            self.reference = max(self.reference, resident_mb())  # what stays is in use: no trim per batch
