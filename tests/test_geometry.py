"""Row geometry and windowed stages against real torch layers (serial, property-based)."""

import math

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch import nn

from edgempi.geometry import Window, intersect, union
from edgempi.partition import split_rows
from edgempi.stages import LayerStage, rows_through, run_rows, split_by_halo, stage_heights


@st.composite
def layers(draw):
    kind = draw(st.sampled_from(["conv", "max", "avg"]))
    kernel = (draw(st.integers(1, 5)), draw(st.integers(1, 5)))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding = tuple(draw(st.integers(0, k // 2)) for k in kernel)
    if kind == "conv":
        dilation = (draw(st.integers(1, 3)), draw(st.integers(1, 2)))
        return nn.Conv2d(2, 2, kernel, stride, padding, dilation)
    ceil_mode = draw(st.booleans())
    if kind == "max":
        dilation = (draw(st.integers(1, 2)), 1)
        return nn.MaxPool2d(kernel, stride, padding, dilation, ceil_mode=ceil_mode)
    return nn.AvgPool2d(kernel, stride, padding, ceil_mode=ceil_mode, count_include_pad=draw(st.booleans()))


def torch_rows(layer: nn.Module, height: int) -> int:
    return layer(torch.zeros(1, 2, height, 16)).shape[2]


@settings(max_examples=200, deadline=None)
@given(layer=layers(), height=st.integers(8, 40))
def test_out_size_matches_torch(layer, height):
    stage = LayerStage("x", layer)
    try:
        expected = torch_rows(layer, height)
    except RuntimeError:  # torch rejects an input smaller than the window: so must we
        with pytest.raises(ValueError):
            stage.out_size(height)
        return
    assert stage.out_size(height) == expected


@settings(max_examples=200, deadline=None)
@given(layer=layers(), height=st.integers(8, 40), data=st.data())
def test_rows_needed_is_the_receptive_field(layer, height, data):
    """Output rows computed from exactly the rows said to be needed equal the full layer's."""
    stage = LayerStage("x", layer)
    try:
        n_out = stage.out_size(height)
    except ValueError:
        assume(False)  # no output row at all (torch refuses too: see test_out_size_matches_torch)
    lo = data.draw(st.integers(0, n_out - 1))
    hi = data.draw(st.integers(lo + 1, n_out))
    x = torch.randn(1, 2, height, 11)
    need = stage.rows_needed((lo, hi), height)
    assert 0 <= need[0] < need[1] <= height
    got = stage.forward(x[:, :, need[0] : need[1]], need[0], height, (lo, hi))
    torch.testing.assert_close(got, layer(x)[:, :, lo:hi], rtol=1e-5, atol=1e-6)


@settings(max_examples=25, deadline=None)
@given(
    kernel=st.integers(2, 3),
    stride=st.integers(1, 2),
    dilation=st.integers(1, 2),
    height=st.integers(7, 20),
    data=st.data(),
)
def test_a_packed_convolution_computes_any_rows_like_torch(kernel, stride, dilation, height, data):
    """A convolution large enough to run with oneDNN's packed weight gives torch's rows for any
    range, border padding and stride; with autograd on it runs unpacked and has gradients."""
    if not torch.backends.mkldnn.is_available():
        pytest.skip("this torch has no oneDNN")
    torch.manual_seed(0)
    layer = nn.Conv2d(256, 256, kernel, stride, kernel // 2 * dilation, dilation)
    stage = LayerStage("x", layer)
    assert stage.packed is not None
    assert LayerStage("small", nn.Conv2d(64, 64, 3)).packed is None
    try:
        n_out = stage.out_size(height)
    except ValueError:
        assume(False)
    lo = data.draw(st.integers(0, n_out - 1))
    hi = data.draw(st.integers(lo + 1, n_out))
    x = torch.randn(2, 256, height, 9).contiguous(memory_format=torch.channels_last)
    need = stage.rows_needed((lo, hi), height)
    with torch.inference_mode():
        got = stage.forward(x[:, :, need[0] : need[1]], need[0], height, (lo, hi))
        expected = layer(x)[:, :, lo:hi]
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    stage.forward(x, 0, height, (0, n_out)).sum().backward()
    assert layer.weight.grad is not None


@settings(max_examples=60, deadline=None)
@given(
    stack=st.lists(layers(), min_size=1, max_size=5),
    height=st.integers(24, 60),
    weights=st.lists(st.sampled_from([0.0, 0.05, 0.5, 1.0, 3.0]), min_size=1, max_size=5),
    data=st.data(),
)
def test_partitioned_stack_equals_torch(stack, height, weights, data):
    """Any stack, any row split: strips computed from their windows concatenate to torch's output."""
    stages = [LayerStage(str(i), layer) for i, layer in enumerate(stack)]
    try:
        heights = stage_heights(stages, height)
        reference = nn.Sequential(*stack)(torch.zeros(1, 2, height, 13))
    except (ValueError, RuntimeError):
        assume(False)  # image too small for the stack
    if sum(weights) == 0:
        weights = weights + [1.0]
    x = torch.randn(2, 2, height, 13)
    reference = nn.Sequential(*stack)(x)
    parts = []
    for rows in split_rows(heights[-1], weights):
        if rows[1] > rows[0]:
            lo, hi = rows_through(stages, heights, rows)[0]
            parts.append(run_rows(stages, heights, x[:, :, lo:hi], lo, rows))
    torch.testing.assert_close(torch.cat(parts, 2), reference, rtol=1e-5, atol=1e-5)


@settings(max_examples=60, deadline=None)
@given(stack=st.lists(layers(), min_size=1, max_size=5), height=st.integers(24, 60), data=st.data())
def test_split_by_halo_leaves_the_interior_only_owned_rows(stack, height, data):
    """Top, interior and bottom tile the strip; the interior reads only the local rows and is
    the longest such run (the rows beside it read others); computed apart, the three pieces
    equal the strip."""
    stages = [LayerStage(str(i), layer) for i, layer in enumerate(stack)]
    try:
        heights = stage_heights(stages, height)
    except ValueError:
        assume(False)
    lo = data.draw(st.integers(0, heights[-1] - 1))
    out_rows = (lo, data.draw(st.integers(lo + 1, heights[-1])))
    needs = rows_through(stages, heights, out_rows)[0]
    local = (data.draw(st.integers(*needs)), data.draw(st.integers(*needs)))
    top, interior, bottom = split_by_halo(stages, heights, out_rows, local)
    assert (top[0], bottom[1]) == out_rows and top[1] == interior[0] and interior[1] == bottom[0]
    if interior[1] <= interior[0]:
        assert top == out_rows
        return

    def reads_only_local(rows):
        reads = rows_through(stages, heights, rows)[0]
        return intersect(reads, local) == reads

    assert reads_only_local(interior)
    assert not reads_only_local((top[1] - 1, top[1])) if top[1] > top[0] else True
    assert not reads_only_local((bottom[0], bottom[0] + 1)) if bottom[1] > bottom[0] else True
    x = torch.randn(1, 2, height, 13)
    pieces = [
        run_rows(stages, heights, x[:, :, needs[0] : needs[1]], needs[0], r) for r in (top, bottom) if r[1] > r[0]
    ]
    inner = run_rows(stages, heights, x[:, :, local[0] : local[1]], local[0], interior)
    pieces.insert(1 if top[1] > top[0] else 0, inner)
    whole = run_rows(stages, heights, x[:, :, needs[0] : needs[1]], needs[0], out_rows)
    torch.testing.assert_close(torch.cat(pieces, 2), whole, rtol=1e-5, atol=1e-5)


def test_ceil_mode_window_may_overhang_the_border():
    window = Window(kernel=2, stride=2, ceil_mode=True)
    assert window.out_size(5) == 3
    assert window.span((2, 3)) == (4, 6)
    assert window.rows_needed((2, 3), 5) == (4, 5)
    assert window.border_padding((2, 3), 5) == (0, 1)


def test_border_padding_only_at_image_edges():
    window = Window(kernel=3, padding=1)
    assert window.border_padding((0, 4), 10) == (1, 0)
    assert window.border_padding((3, 7), 10) == (0, 0)
    assert window.border_padding((6, 10), 10) == (0, 1)


def test_max_pool_pads_with_minus_infinity():
    stage = LayerStage("pool", nn.MaxPool2d(3, 2, 1))
    assert stage.pad_value == -math.inf
    x = -torch.ones(1, 1, 6, 6)  # with zero padding the border maxima would be 0
    torch.testing.assert_close(stage.forward(x, 0, 6, (0, 3)), nn.MaxPool2d(3, 2, 1)(x))


def test_range_helpers():
    assert intersect((0, 5), (3, 9)) == (3, 5)
    assert intersect((0, 3), (3, 9)) == (0, 0)
    assert union((0, 0), (2, 4)) == (2, 4)
    assert union((0, 3), (2, 8)) == (0, 8)


def test_window_too_small_is_an_error():
    with pytest.raises(ValueError):
        Window(kernel=5).out_size(3)
