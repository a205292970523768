"""The streaming head equals the model's head, whatever order the strips arrive in."""

import pytest
import torch

from edgempi.head import StreamingHead, pool_windows
from edgempi.models import build_model
from edgempi.partition import split_rows


@pytest.mark.parametrize("height", [6, 7, 9, 13, 20])
def test_pool_windows_match_adaptive_pooling(height):
    x = torch.randn(1, 2, height, 5)
    full = torch.nn.functional.adaptive_avg_pool2d(x, (7, 5))
    for i, (lo, hi) in enumerate(pool_windows(height, 7)):
        part = torch.nn.functional.adaptive_avg_pool2d(x[:, :, lo:hi], (1, 5))
        torch.testing.assert_close(part[:, :, 0], full[:, :, i])


@pytest.mark.parametrize("name,height,width", [("vgg11", 6, 5), ("vgg11", 9, 11), ("resnet18", 7, 6)])
@pytest.mark.parametrize("seed", range(3))
def test_streamed_head_equals_head(name, height, width, seed):
    model = build_model(name, seed=seed)
    features = torch.rand(2, 512, height, width, generator=torch.Generator().manual_seed(seed))
    gen = torch.Generator().manual_seed(seed)
    parts = [r for r in split_rows(height, torch.rand(4, generator=gen).tolist()) if r[1] > r[0]]
    order = torch.randperm(len(parts), generator=gen).tolist()
    head = StreamingHead(model, 512, height, width)
    with torch.inference_mode():
        head.start(2)
        for k in order:
            lo, hi = parts[k]
            head.add((lo, hi), features[:, :, lo:hi])
        torch.testing.assert_close(head.finish(), model.head(features), rtol=1e-4, atol=1e-5)


def test_first_rows_are_used_before_the_rest_arrive():
    model = build_model("vgg11")
    head = StreamingHead(model, 512, 6, 6)
    head.start(1)
    head.add((0, 3), torch.rand(1, 512, 3, 6))
    assert head.pending == [3, 4, 5, 6]  # pooled rows 0-2 read only feature rows 0-2
