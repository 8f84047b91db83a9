"""A vmapped ensemble equals the single-seed trainer bit for bit on the CPU."""

from __future__ import annotations

import pytest
import torch

import permsym
from permsym.ensemble import train
from permsym.train import TrainingDiverged, fit


def _fit(arch, data, seed, **kw):  # type: ignore[no-untyped-def]
    model = permsym.build(arch, seed=seed)
    history = fit(model, data, seed=seed, **kw)
    return model, history


def test_ensemble_equals_per_seed_training_bit_for_bit() -> None:
    arch, regression = "mlp:6-16-16-3", False
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(70, 6, generator=gen)
    y = torch.randn(70, 2, generator=gen) if regression else torch.randint(3, (70,), generator=gen)
    kw = {"epochs": 2, "lr": 0.05, "batch_size": 16}
    result = train(arch, (X, y), [3, 0, 7], **kw)
    assert result.vectorised
    for seed, model, losses in zip(result.seeds, result.models, result.losses, strict=True):
        ref, history = _fit(arch, (X, y), seed, **kw)
        for name, p in ref.named_parameters():
            assert torch.equal(p, model.state_dict()[name]), (seed, name)
        # parameters are bit-equal; the logged float32 batch-mean loss may differ by an ulp
        # (vmap reduces the mean in another order), hence a float32-epsilon budget here
        assert max(abs(a - b) / abs(b) for a, b in zip(losses, history.losses, strict=True)) < 1e-6


def test_layernorm_is_not_bit_equal_under_vmap_and_falls_back() -> None:
    gen = torch.Generator().manual_seed(0)
    X, y = torch.randn(32, 6, generator=gen), torch.randn(32, 2, generator=gen)
    with pytest.warns(UserWarning, match="other floating-point results under vmap"):
        result = train("resmlp:6-8-2,blocks=1", (X, y), [0, 1], epochs=1, lr=0.05, batch_size=16)
    ref, _ = _fit("resmlp:6-8-2,blocks=1", (X, y), 1, epochs=1, lr=0.05, batch_size=16)
    assert all(torch.equal(p, result.models[1].state_dict()[k]) for k, p in ref.named_parameters())


def test_batchnorm_falls_back_to_a_loop_with_a_warning() -> None:
    gen = torch.Generator().manual_seed(0)
    X, y = torch.rand(20, 16, generator=gen), torch.randint(2, (20,), generator=gen)
    with pytest.warns(UserWarning, match="updates buffers in training mode"):
        result = train("convnet:1x4x4-2-2", (X, y), [0, 1], epochs=1, lr=0.05, batch_size=8)
    assert not result.vectorised
    ref, _ = _fit("convnet:1x4x4-2-2", (X, y), 1, epochs=1, lr=0.05, batch_size=8)
    for name, t in ref.state_dict().items():
        assert torch.equal(t, result.models[1].state_dict()[name]), name


def test_bad_inputs() -> None:
    X, y = torch.randn(8, 3), torch.randint(2, (8,))
    with pytest.raises(ValueError, match=r"^ensemble.train: seeds must not be empty; got \[\]\.$"):
        train("mlp:3-4-2", (X, y), [], epochs=1, lr=0.1, batch_size=4)
    with pytest.raises(TrainingDiverged, match=r"^ensemble.train: the training loss must stay finite"):
        train("mlp:6-16-16-3", (torch.randn(32, 6) * 1e30, torch.randint(3, (32,))), [0], epochs=3, lr=1e30,
              batch_size=16)


@pytest.mark.parametrize("regression", [False, True])
def test_stacked_mlp_path_is_taken_and_bit_equal_with_a_short_last_batch(regression: bool, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import permsym.ensemble as ens

    calls = []
    made = ens._stacked_step

    def spy(model, loss_fn):  # type: ignore[no-untyped-def]
        step = made(model, loss_fn)
        assert step is not None
        return lambda *a: calls.append(a[1].shape) or step(*a)

    monkeypatch.setattr(ens, "_stacked_step", spy)
    arch = "mlp:6-16-16-3"
    gen = torch.Generator().manual_seed(1)
    X = torch.randn(75, 6, generator=gen)
    y = torch.randn(75, 3, generator=gen) if regression else torch.randint(3, (75,), generator=gen)
    kw = {"epochs": 2, "lr": 0.05, "batch_size": 16}  # 4 full batches and one of 11 per epoch
    result = train(arch, (X, y), [5, 1], **kw)
    assert result.vectorised and len(calls) >= 8 and any(s[1] == 11 for s in calls)
    for seed, model, losses in zip(result.seeds, result.models, result.losses, strict=True):
        ref, history = _fit(arch, (X, y), seed, **kw)
        for name, p in ref.named_parameters():
            assert torch.equal(p, model.state_dict()[name]), (seed, name)
        assert max(abs(a - b) / abs(b) for a, b in zip(losses, history.losses, strict=True)) < 1e-6


def test_stacked_path_only_for_plain_linear_relu_sequentials() -> None:
    from torch import nn

    from permsym.ensemble import _stacked_step

    F = torch.nn.functional
    assert _stacked_step(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)), F.cross_entropy) is not None
    assert _stacked_step(nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)), F.cross_entropy) is None
    assert _stacked_step(nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4)), F.mse_loss) is None
    assert _stacked_step(nn.Sequential(nn.Linear(3, 2)), F.l1_loss) is None
    assert _stacked_step(permsym.build("resmlp:6-8-2,blocks=1"), F.mse_loss) is None
