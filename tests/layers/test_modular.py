"""ModularMLP: equal to its dense masked form; symmetry count by brute force vs BLISS."""

from __future__ import annotations

import itertools

import igraph
import numpy as np
import pytest
import torch

import permsym
from permsym.layers import MaskedLinear
from permsym.layers.modular import ModularMLP


@pytest.mark.parametrize("wiring", ["ring", "random", "small-world"])
@pytest.mark.parametrize("act", ["relu", "legendre4:per_unit"])
def test_equals_dense_masked_mlp_in_float64(wiring, act):
    arch = f"modular:7-3,modules=5,width=4,depth=3,links=2,wiring={wiring},density=0.5,act={act},seed=3"
    net = permsym.build(arch).double()
    dense = net.to_masked_mlp()
    assert [n for n, _ in dense.named_children()] == ["fc1", "act1", "fc2", "act2", "fc3", "act3", "out"]
    assert all(isinstance(m, MaskedLinear) for n, m in dense.named_children() if not n.startswith("act"))
    x = torch.randn(11, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        err = float((net(x) - dense(x)).abs().max())
    assert err < 1e-10, err
    # sparse links: the hidden-to-hidden masks are block-sparse, not dense
    assert float(dense.fc2.mask.mean()) < 1.0


def test_wiring_has_fixed_in_degree_and_no_self_links():
    for wiring in ["ring", "random", "small-world"]:
        net = ModularMLP(3, 2, modules=8, width=2, links=3, wiring=wiring, seed=5)
        for m, row in enumerate(net.sources.tolist()):
            assert len(set(row)) == 3 and m not in row


def _brute_force_count(masks: list[np.ndarray]) -> int:
    """Permutations of hidden units with P_k B_k P_{k-1}^T = B_k, inputs/outputs fixed.

    Dynamic programme over layers: ways[p] = number of admissible chains ending in p.
    """
    hidden = masks[0].shape[0]
    perms = np.array(list(itertools.permutations(range(hidden))))
    first = masks[0]
    ways = np.all(first[perms] == first, axis=(1, 2)).astype(np.int64)  # inputs fixed
    for mask in masks[1:-1]:
        new = np.zeros_like(ways)
        for q in np.nonzero(ways)[0]:
            shifted = mask[:, perms[q]]
            ok = np.all(shifted[perms] == mask, axis=(1, 2))
            new[ok] += ways[q]
        ways = new
    last = masks[-1]
    ok_out = np.all(last[:, perms].transpose(1, 0, 2) == last[None], axis=(1, 2))  # outputs fixed
    return int(ways[ok_out].sum())


def _bliss_count(masks: list[np.ndarray]) -> int:
    sizes = [masks[0].shape[1]] + [m.shape[0] for m in masks]
    offsets = np.cumsum([0] + sizes)
    colors, next_color = [], 0
    for k, size in enumerate(sizes):
        if k in (0, len(sizes) - 1):  # every input and output vertex its own colour
            colors += list(range(next_color, next_color + size))
            next_color += size
        else:
            colors += [next_color] * size
            next_color += 1
    edges = []
    for k, mask in enumerate(masks):
        rows, cols = np.nonzero(mask)
        edges += list(zip((offsets[k] + cols).tolist(), (offsets[k + 1] + rows).tolist(), strict=True))
    graph = igraph.Graph(n=int(offsets[-1]), edges=edges)
    return int(graph.count_automorphisms(color=colors))


@pytest.mark.parametrize(
    "options",
    [
        "modules=3,width=2,depth=2,links=1,density=1",
        "modules=3,width=2,depth=2,links=2,density=1",
        "modules=3,width=2,depth=2,links=1,density=0.5,seed=1",
        "modules=3,width=2,depth=3,links=1,wiring=random,density=0.5,seed=2",
        "modules=3,width=2,depth=2,links=0",
    ],
)
def test_symmetry_count_matches_brute_force(options):
    net = permsym.build(f"modular:2-2,{options}")
    masks = [layer.mask.numpy().astype(bool) for name, layer in net.to_masked_mlp().named_children() if not name.startswith("act")]
    brute = _brute_force_count(masks)
    assert brute == _bliss_count(masks)


def test_dense_links_give_the_full_symmetric_group_per_layer():
    # 3 modules, 2 links each: every module sees every other densely, so the masks are all
    # ones and each hidden layer of 6 units is permuted freely: (6!)^2
    net = permsym.build("modular:2-2,modules=3,width=2,depth=2,links=2,density=1")
    masks = [m.mask.numpy().astype(bool) for n, m in net.to_masked_mlp().named_children() if not n.startswith("act")]
    assert _brute_force_count(masks) == 720**2


@pytest.mark.parametrize(
    ("arch", "match"),
    [
        ("modular:4-2,modules=0", r"bad value '0' for modules in 'modular:4-2,modules=0'; expected modules=a positive integer\.$"),
        ("modular:4-2,density=1.5", r"bad value '1.5' for density .*expected density=a number in \(0, 1\]\.$"),
        ("modular:4-2,wiring=star", r"bad value 'star' for wiring .*expected wiring=ring\|random\|small-world\.$"),
        ("modular:4-8-2", r"modular takes exactly IN-OUT"),
    ],
)
def test_bad_arch_strings(arch, match):
    with pytest.raises(permsym.PermsymError, match=match):
        permsym.build(arch)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"modules": 0}, r"^ModularMLP\(4, 2\): modules must be a positive integer; got 0\.$"),
        ({"density": 0.0}, r"^ModularMLP\(4, 2\): density must be in \(0, 1\]; got 0\.0\.$"),
        ({"links": 4, "modules": 4}, r"^ModularMLP\(4, 2\): links must be an integer in \[0, modules - 1 = 3\]; got 4\.$"),
        ({"wiring": "star"}, r"^ModularMLP\(4, 2\): wiring must be one of ring, random, small-world; got 'star'\.$"),
    ],
)
def test_bad_constructor_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ModularMLP(4, 2, **kwargs)
