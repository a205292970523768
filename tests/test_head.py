"""The streaming head equals the model's head, whatever order the strips arrive in."""

import functools

import pytest
import torch

from edgempi.head import StreamingHead, pool_matrix
from edgempi.models import build_model
from edgempi.partition import split_rows

model_for = functools.lru_cache(maxsize=None)(build_model)


@pytest.mark.parametrize("size,pooled", [(6, 7), (7, 7), (9, 7), (13, 7), (20, 7), (7, 1)])
def test_pool_matrix_is_adaptive_pooling(size, pooled):
    x = torch.randn(2, 3, size, 5)
    expected = torch.nn.functional.adaptive_avg_pool2d(x, (pooled, 5))
    got = torch.einsum("ir,bcrs->bcis", pool_matrix(size, pooled), x)
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("name,height,width", [("vgg11", 6, 5), ("vgg11", 9, 11), ("resnet18", 7, 6)])
@pytest.mark.parametrize("seed", range(3))
def test_streamed_head_equals_head(name, height, width, seed):
    model = model_for(name, seed=seed)
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


def test_folded_weight_is_smaller_when_the_pool_enlarges_the_map():
    head = StreamingHead(model_for("vgg11", seed=0), 512, 6, 6)
    assert head.weight.shape == (4096, 512 * 6 * 6)
