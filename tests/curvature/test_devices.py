"""Device placement of curvature, noise and equilibrium tensors.

Random draws are made on the CPU with the caller's seeded generator and then moved to the
model's (or operator's) device, so a seed gives the same numbers on every device. Without a
GPU that is checked on the draw helpers, with ``meta`` standing in for the target device (a
draw made *on* a meta device with a CPU generator raises, and a meta draw would not advance
the CPU generator). Functions that take ``device=`` must accept ``"cpu"`` and give the default's
numbers. The last test compares CPU and CUDA end to end and runs only where CUDA is available.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

import permsym
from permsym.curvature import hessian_operator
from permsym.curvature.density import lanczos_quadrature
from permsym.curvature.lanczos import _start, lanczos, top_eigenpairs
from permsym.curvature.operators import working_device
from permsym.curvature.trace import _rademacher, trace_estimate
from permsym.equilibrium.sgd import batch_indices

META = torch.device("meta")


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _matrix(n: int = 30) -> torch.Tensor:
    Z = torch.randn(n, n, generator=_gen(7), dtype=torch.float64)
    return Z @ Z.T / n


def _problem() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    g = _gen(1)
    X = torch.randn(40, 5, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (40,), generator=g)
    return permsym.build("mlp:5-6-3,act=tanh", seed=0).double(), X, y


def _same(a: object, b: object) -> None:
    """Equal bit for bit (tensors: same values and device), recursively through tuples."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.device == b.device and torch.equal(a, b)
    elif isinstance(a, tuple | list):
        assert isinstance(b, tuple | list) and len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _same(x, y)
    else:
        assert a == b or (a != a and b != b), (a, b)  # NaN == NaN here


def _lanczos(device: object) -> tuple:
    kw = {} if device is None else {"device": device}
    s = lanczos(_matrix(), num_steps=8, generator=_gen(), **kw)
    return s.Q.clone(), s.alpha, s.beta


def _top(device: object) -> tuple:
    kw = {} if device is None else {"device": device}
    return top_eigenpairs(_matrix(), 3, generator=_gen(), return_eigenvectors=True, **kw)


def _trace(method: str) -> object:
    def run(device: object) -> tuple:
        kw = {} if device is None else {"device": device}
        return trace_estimate(_matrix(), num_matvecs=12, method=method, generator=_gen(), **kw)
    return run


def _quadrature(device: object) -> tuple:
    kw = {} if device is None else {"device": device}
    return lanczos_quadrature(_matrix(), torch.ones(30, dtype=torch.float64), num_steps=6, **kw)


def _batches(device: object) -> list:
    kw = {} if device is None else {"device": device}
    out = []
    for sampling in ("with_replacement", "without_replacement", "epochs"):
        out += list(batch_indices(20, 4, 7, sampling=sampling, generator=_gen(), block=3, **kw))
    return out


@pytest.mark.parametrize("fn", [_lanczos, _top, _trace("hutchpp"), _trace("hutchinson"), _quadrature, _batches],
                         ids=["lanczos", "top_eigenpairs", "trace_hutchpp", "trace_hutchinson", "lanczos_quadrature",
                              "batch_indices"])
def test_an_explicit_cpu_device_gives_the_defaults_numbers(fn) -> None:
    default = fn(None)
    _same(fn("cpu"), default)
    _same(fn(torch.device("cpu")), default)


def test_working_device_is_the_given_one_else_the_operators() -> None:
    class OnMeta:
        device = META

        def __call__(self, v: torch.Tensor) -> torch.Tensor:
            return v

    class NamedDevice:  # a string attribute is not a torch.device: ignored
        device = "cuda"

    model, X, y = _problem()
    op = hessian_operator(model, F.cross_entropy, (X, y))
    assert op.device == next(model.parameters()).device == torch.device("cpu")
    assert working_device(op) == torch.device("cpu")
    assert working_device(torch.eye(2)) == torch.device("cpu")
    assert working_device(torch.eye(2, device=META)) == META
    assert working_device(OnMeta()) == META
    assert working_device(OnMeta(), "cpu") == torch.device("cpu")  # the explicit device wins
    assert working_device(NamedDevice()) == torch.device("cpu")
    assert working_device(lambda v: v) == torch.device("cpu")


def test_random_draws_are_made_on_the_cpu_then_moved() -> None:
    n, m = 50, 4
    # Lanczos start: the CPU generator's float64 normals, normalised, on the target device
    g, ref = _gen(), _gen()
    q = _start(n, None, g, META)
    expected = torch.randn(n, generator=ref, dtype=torch.float64)
    assert q.device == META and q.dtype == torch.float64 and q.shape == (n,)
    assert torch.equal(g.get_state(), ref.get_state())
    _same(_start(n, None, _gen(), None), expected / expected.norm())
    # Rademacher probes
    g, ref = _gen(), _gen()
    Z = _rademacher(n, m, g, META)
    expected = torch.randint(0, 2, (n, m), generator=ref).to(torch.float64) * 2 - 1
    assert Z.device == META and Z.shape == (n, m)
    assert torch.equal(g.get_state(), ref.get_state())
    _same(_rademacher(n, m, _gen()), expected)
    # minibatch indices, for every sampling scheme
    for sampling in ("with_replacement", "without_replacement", "epochs"):
        g, ref = _gen(), _gen()
        on_meta = list(batch_indices(20, 4, 7, sampling=sampling, generator=g, block=3, device=META))
        on_cpu = list(batch_indices(20, 4, 7, sampling=sampling, generator=ref, block=3))
        assert len(on_meta) == len(on_cpu) == 7 and all(i.device == META and i.shape == (4,) for i in on_meta)
        assert torch.equal(g.get_state(), ref.get_state()), sampling


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="compares CPU and CUDA: needs a CUDA device")
def test_same_seed_gives_the_same_numbers_on_cpu_and_cuda() -> None:  # pragma: no cover - needs a GPU
    from permsym.curvature import (
        dense_hessian,
        hessian_top_eigenvalues,
        hessian_trace,
        spectral_density,
    )
    from permsym.equilibrium import equilibrium_comparison
    from permsym.noise import gradient_covariance, gradient_noise

    model, X, y = _problem()
    cuda = torch.device("cuda")
    runs = {}
    for dev in (torch.device("cpu"), cuda):
        m, data = copy.deepcopy(model).to(dev), (X.to(dev), y.to(dev))
        top = hessian_top_eigenvalues(m, F.cross_entropy, data, 3, generator=_gen(), return_eigenvectors=True)
        assert top.eigenvectors is not None and top.eigenvectors.device.type == dev.type
        runs[dev.type] = {
            "top": top.eigenvalues,
            "eigsh": hessian_top_eigenvalues(m, F.cross_entropy, data, 3, solver="eigsh", generator=_gen()).eigenvalues,
            "trace": hessian_trace(m, F.cross_entropy, data, num_matvecs=12, generator=_gen()).estimate,
            "density": tuple(spectral_density(m, F.cross_entropy, data, num_steps=10, generator=_gen()).nodes.tolist()),
            "dense": tuple(dense_hessian(m, F.cross_entropy, data).diagonal().cpu().tolist()),
            "noise": gradient_noise(m, F.cross_entropy, data, batch_size=4, lr=0.1).trace_C,
            "cov_U": tuple(gradient_covariance(m, F.cross_entropy, data, subspace=top.eigenvectors.cpu())
                           .diagonal().cpu().tolist()),
            "equilibrium": equilibrium_comparison(m, data, lr=0.05, batch_size=8, steps=300, top_k=2,
                                                  generator=_gen()).to_json()["directions"][0]["predicted_variance"],
        }
    for key, on_cpu in runs["cpu"].items():
        assert runs["cuda"][key] == pytest.approx(on_cpu, rel=1e-6, abs=1e-12), key
