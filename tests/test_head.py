"""The head split by feature rows equals the model's head, whatever order the partial products are added in."""

import functools

import pytest
import torch

from edgempi.head import HeadRows, classifier_head, folded_weight, pool_matrix
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
def test_head_split_by_rows_equals_head(name, height, width, seed):
    """Each rank's rows times its columns, added up in any order, then the rest: the model's head."""
    model = model_for(name, seed=seed)
    features = torch.rand(2, 512, height, width, generator=torch.Generator().manual_seed(seed))
    gen = torch.Generator().manual_seed(seed)
    whole = classifier_head(model, 512, height, width)
    parts = split_rows(height, torch.rand(4, generator=gen).tolist())
    shares = [HeadRows(whole.columns[:, lo * 512 * width : hi * 512 * width], (lo, hi)) for lo, hi in parts]
    with torch.inference_mode():
        partials = [
            share.partial(features[:, :, lo:hi] if hi > lo else None, 2) for share, (lo, hi) in zip(shares, parts)
        ]
        total = sum(partials[k] for k in torch.randperm(len(parts), generator=gen).tolist())
        torch.testing.assert_close(whole.finish(total), model.head(features), rtol=1e-4, atol=1e-5)


def test_folded_weight_is_smaller_when_the_pool_enlarges_the_map():
    assert folded_weight(model_for("vgg11", seed=0), 512, 6, 6).shape == (4096, 512 * 6 * 6)
