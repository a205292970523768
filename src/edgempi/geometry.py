"""Pure row arithmetic of sliding-window layers (no torch, no MPI).

A row range is a half-open ``(lo, hi)`` pair of global row indices; an empty range is
``(0, 0)``. Only the row axis is partitioned: columns are always whole.
"""

from __future__ import annotations

from dataclasses import dataclass

Rows = tuple[int, int]
EMPTY: Rows = (0, 0)


def is_empty(rows: Rows) -> bool:
    return rows[1] <= rows[0]


def intersect(a: Rows, b: Rows) -> Rows:
    lo, hi = max(a[0], b[0]), min(a[1], b[1])
    return (lo, hi) if lo < hi else EMPTY


def union(a: Rows, b: Rows) -> Rows:
    """Smallest range covering both (ranges that a stage needs always overlap or touch)."""
    if is_empty(a):
        return b
    if is_empty(b):
        return a
    return (min(a[0], b[0]), max(a[1], b[1]))


def split_by(rows: Rows, held: Rows) -> tuple[Rows, Rows, Rows]:
    """``rows`` as (above ``held``, inside it, below it); all of ``rows`` above when they do not meet."""
    inside = intersect(rows, held)
    if is_empty(inside):
        return rows, EMPTY, EMPTY
    above, below = (rows[0], inside[0]), (inside[1], rows[1])
    return (above if not is_empty(above) else EMPTY), inside, (below if not is_empty(below) else EMPTY)


@dataclass(frozen=True)
class Window:
    """One axis of a conv / pool window, with PyTorch's output-size rules."""

    kernel: int = 1
    stride: int = 1
    padding: int = 0
    dilation: int = 1
    ceil_mode: bool = False

    @property
    def extent(self) -> int:
        return self.dilation * (self.kernel - 1) + 1

    def out_size(self, n_in: int) -> int:
        span = n_in + 2 * self.padding - self.extent
        if not self.ceil_mode:
            n_out = span // self.stride + 1
        else:
            n_out = -(-span // self.stride) + 1
            # PyTorch: the last window must start inside the input or the leading padding.
            if (n_out - 1) * self.stride >= n_in + self.padding:
                n_out -= 1
        if n_out < 1:
            raise ValueError(f"input of {n_in} rows is smaller than the window ({self.extent} rows)")
        return n_out

    def span(self, out_rows: Rows) -> Rows:
        """Input rows (unclipped: may reach into the padding) that ``out_rows`` read."""
        if is_empty(out_rows):
            return EMPTY
        lo, hi = out_rows
        return (lo * self.stride - self.padding, (hi - 1) * self.stride - self.padding + self.extent)

    def rows_needed(self, out_rows: Rows, n_in: int) -> Rows:
        """Real input rows (clipped to the image) that ``out_rows`` read."""
        return intersect(self.span(out_rows), (0, n_in))

    def border_padding(self, out_rows: Rows, n_in: int) -> Rows:
        """Rows of true-border padding above and below the real rows ``out_rows`` read."""
        if is_empty(out_rows):
            return (0, 0)
        lo, hi = self.span(out_rows)
        return (max(0, -lo), max(0, hi - n_in))

    def window_counts(self, out_rows: Rows, n_in: int, count_padding: bool) -> list[int]:
        """Per output row, how many input rows an average pool divides by (PyTorch's rule)."""
        counts = []
        for i in range(*out_rows):
            start = i * self.stride - self.padding
            end = min(start + self.kernel, n_in + self.padding)
            counts.append(end - start if count_padding else min(end, n_in) - max(start, 0))
        return counts
