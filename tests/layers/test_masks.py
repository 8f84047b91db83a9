import pytest
import torch

from permsym._errors import PermsymError
from permsym.layers import MaskedLinear, distinct_mask


def _rows_distinct(mask: torch.Tensor) -> bool:
    return len({tuple(r) for r in mask.int().tolist()}) == mask.shape[0]


@pytest.mark.parametrize(("out", "inp", "density"), [(7, 3, 0.5), (7, 3, 0.05), (15, 4, 0.9), (100, 20, 0.1), (64, 64, 0.02), (3, 50, 0.5)])
def test_distinct_mask_properties(out: int, inp: int, density: float) -> None:
    mask = distinct_mask(out, inp, density, generator=torch.Generator().manual_seed(1))
    assert mask.shape == (out, inp) and mask.dtype == torch.bool
    assert _rows_distinct(mask)
    assert bool(mask.any(1).all()), "an all-zero row"
    assert bool(mask.any(0).all()), "an all-zero column"


def test_distinct_mask_density_is_close_on_large_layers() -> None:
    mask = distinct_mask(512, 256, 0.1, generator=torch.Generator().manual_seed(0))
    assert abs(mask.float().mean().item() - 0.1) < 0.01


def test_distinct_mask_is_deterministic_for_a_seed() -> None:
    a = distinct_mask(20, 8, 0.3, generator=torch.Generator().manual_seed(4))
    b = distinct_mask(20, 8, 0.3, generator=torch.Generator().manual_seed(4))
    c = distinct_mask(20, 8, 0.3, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_distinct_mask_impossible_sizes() -> None:
    with pytest.raises(PermsymError, match=r"3 inputs allow only 2\*\*3 - 1 = 7 distinct non-empty rows; got 9 units\. Use at most 7 units"):
        distinct_mask(9, 3, 0.5)


@pytest.mark.parametrize(("args", "message"), [((0, 3, 0.5), "out_features must be a positive integer; got 0"), ((3, 3, 0.0), r"density must be in \(0, 1\]; got 0.0"), ((3, 3, 1.0), "density 1 makes every row identical")])
def test_distinct_mask_bad_arguments(args: tuple, message: str) -> None:
    with pytest.raises((ValueError, PermsymError), match=message):
        distinct_mask(*args)


def test_masked_linear_gradient_is_zero_outside_the_mask() -> None:
    mask = distinct_mask(6, 5, 0.4, generator=torch.Generator().manual_seed(0))
    layer = MaskedLinear(5, 6, mask, generator=torch.Generator().manual_seed(0)).double()
    x = torch.randn(8, 5, dtype=torch.float64)
    layer(x).square().sum().backward()
    assert layer.weight.grad is not None
    assert torch.equal(layer.weight.grad * (1 - layer.mask), torch.zeros_like(layer.weight))
    assert (layer.weight.grad * layer.mask).abs().sum() > 0
    expected = x @ (layer.weight * layer.mask).T + layer.bias
    assert torch.allclose(layer(x), expected, rtol=1e-12, atol=0)


def test_masked_linear_rejects_a_wrong_mask_shape() -> None:
    with pytest.raises(PermsymError, match=r"mask must have shape \(4, 3\); got \(3, 4\)"):
        MaskedLinear(3, 4, torch.ones(3, 4))
