"""The plain SGD loop: deterministic per seed, loss goes down, divergence is caught and undone."""

import pytest
import torch

import permsym
from permsym.data import load_dataset
from permsym.train import TrainingDiverged, fit


def _train(seed, epochs=3):
    model = permsym.build("mlp:64-16-10,act=tanh", seed=0)
    hist = fit(model, load_dataset("digits:n=300"), epochs=epochs, lr=0.1, batch_size=32, seed=seed)
    return model, hist


def test_same_seed_same_parameters_and_loss_decreases():
    a, ha = _train(1)
    b, hb = _train(1)
    c, _ = _train(2)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters(), strict=True))
    assert ha == hb and ha.steps == 3 * 10
    assert ha.losses[-1] < ha.losses[0]


def test_global_rng_untouched():
    state = torch.get_rng_state()
    _train(0, epochs=1)
    assert torch.equal(state, torch.get_rng_state())


def test_non_finite_loss_resets_to_last_epoch():
    model = permsym.build("mlp:8-1", seed=0).double()
    data = load_dataset("linear:n=64,d=8", dtype=torch.float64)
    seen = {}

    def on_epoch(epoch, loss):
        seen[epoch] = [p.detach().clone() for p in model.parameters()]

    with pytest.raises(TrainingDiverged, match=r"fit: the training loss must stay finite; got (nan|inf) at epoch \d+"):
        fit(model, data, epochs=200, lr=5.0, batch_size=8, seed=0, on_epoch=on_epoch)
    last = max(seen)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), seen[last], strict=True))
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_bad_arguments():
    model = permsym.build("mlp:8-1")
    data = load_dataset("linear:n=16,d=8")
    with pytest.raises(ValueError, match=r"fit: lr must be a finite number > 0; got 0"):
        fit(model, data, epochs=1, lr=0, batch_size=4)
    with pytest.raises(ValueError, match=r"fit: epochs must be a positive integer; got 0"):
        fit(model, data, epochs=0, lr=0.1, batch_size=4)
