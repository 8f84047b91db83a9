"""Hypothesis strategies that draw architecture strings and seeds (never tensors)."""

from __future__ import annotations

from hypothesis import strategies as st

ACTS = ["relu", "tanh", "gelu", "sigmoid", "silu", "identity"]


@st.composite
def mlp_arch(draw: st.DrawFn) -> str:
    dims = draw(st.lists(st.integers(1, 7), min_size=3, max_size=5))
    act = draw(st.sampled_from(ACTS))
    bias = draw(st.booleans())
    return f"mlp:{'-'.join(map(str, dims))},act={act},bias={str(bias).lower()}"


@st.composite
def masked_mlp_arch(draw: st.DrawFn) -> str:
    n_in = draw(st.integers(2, 6))
    hidden, prev = [], n_in
    for _ in range(draw(st.integers(1, 3))):  # distinct rows need w_k <= 2**w_{k-1} - 1
        prev = draw(st.integers(2, min(6, 2**prev - 1)))
        hidden.append(prev)
    n_out = draw(st.integers(1, min(3, 2**prev - 1)))
    density = draw(st.sampled_from([0.3, 0.5, 0.7]))
    seed = draw(st.integers(0, 1000))
    return f"mlp:{n_in}-{'-'.join(map(str, hidden))}-{n_out},density={density},mask_seed={seed}"


@st.composite
def convnet_arch(draw: st.DrawFn) -> str:
    c = draw(st.integers(1, 2))
    hw = draw(st.sampled_from([4, 6, 8]))
    chans = draw(st.lists(st.integers(1, 5), min_size=1, max_size=2))
    act = draw(st.sampled_from(["relu", "tanh", "gelu"]))
    pool = draw(st.sampled_from(["max", "avg"]))
    return f"convnet:{c}x{hw}x{hw}-{'-'.join(map(str, chans))}-3,act={act},pool={pool}"


@st.composite
def resmlp_arch(draw: st.DrawFn) -> str:
    n_in, width, n_out = draw(st.integers(1, 6)), draw(st.integers(2, 8)), draw(st.integers(1, 3))
    blocks = draw(st.integers(0, 3))
    hidden = draw(st.integers(1, 6))
    return f"resmlp:{n_in}-{width}-{n_out},blocks={blocks},hidden={hidden},act={draw(st.sampled_from(ACTS))}"


any_arch = st.one_of(mlp_arch(), masked_mlp_arch(), convnet_arch(), resmlp_arch())
