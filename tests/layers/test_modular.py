"""ModularMLP: equal to its dense masked form; symmetry count by brute force vs BLISS."""

from __future__ import annotations

import itertools

import igraph
import numpy as np
import pytest
import torch
from torch.func import functional_call, grad, stack_module_state, vmap

import permsym
from permsym.layers import MaskedLinear
from permsym.layers.modular import ModularMLP, block_plan, link_runs, module_blocks
from tests.assertions import assert_close_rel


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


@pytest.mark.parametrize("wiring", ["ring", "random", "small-world"])
@pytest.mark.parametrize(("modules", "links"), [(5, 0), (5, 1), (6, 3), (8, 2), (3, 2)])
@pytest.mark.parametrize("act", ["relu", "tanh", "hermite3:per_unit"])
def test_hand_written_backward_matches_plain_autograd(wiring, modules, links, act):
    # the fused blocks (runs, ring windows, in-place ReLU) against the same function in
    # plain differentiable ops (what torch.func transforms run) and the dense masked form
    arch = f"modular:5-2,modules={modules},width=3,depth=3,links={links},wiring={wiring},density=0.5,act={act},seed=1"
    net = permsym.build(arch).double()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(9, 5, dtype=torch.float64, generator=gen, requires_grad=True)
    params = dict(net.named_parameters())
    y = net(x)
    got = torch.autograd.grad(y.square().sum(), [x, *params.values()])
    plain = grad(lambda p, xb: functional_call(net, p, (xb,)).square().sum(), argnums=(0, 1))
    ref_p, ref_x = plain({k: v.detach() for k, v in params.items()}, x.detach())
    (dense_x,) = torch.autograd.grad(net.to_masked_mlp()(x).square().sum(), x)
    # float64 sums of at most a few hundred products: rounding ~1e-15; budget 1e-12
    assert_close_rel(got[0], ref_x, 1e-12, "dL/dx vs torch.func")
    assert_close_rel(got[0], dense_x, 1e-12, "dL/dx vs dense masked")
    for (name, _), g in zip(params.items(), got[1:], strict=True):
        assert_close_rel(g, ref_p[name], 1e-12, f"dL/d{name}")


@pytest.mark.parametrize(("modules", "links", "depth", "batch"), [(8, 2, 4, 7), (7, 3, 3, 7), (5, 1, 4, 7), (6, 2, 3, 2500)])
def test_ghosted_rings_match_the_dense_network(modules, links, depth, batch):
    # fused ReLUs on a ring: hidden states carry ghost copies of the wrap-around modules and
    # every module's forward and weight-gradient product is one window bmm (in slabs of
    # 1024 samples: 2500 = two full slabs and a partial one)
    net = permsym.build(f"modular:5-2,modules={modules},width=3,depth={depth},links={links},density=0.5,seed=2").double()
    assert net._block_plan().window is not None
    x = torch.randn(batch, 5, dtype=torch.float64, requires_grad=True)
    dense = net.to_masked_mlp()
    y, y_ref = net(x), dense(x)
    assert_close_rel(y, y_ref, 1e-12, "f")
    got = torch.autograd.grad(y.square().sum(), [x, net.inp, net.weights])
    ref = torch.autograd.grad(y_ref.square().sum(), [x, dense.fc1.weight, dense.fc2.weight])
    assert_close_rel(got[0], ref[0], 1e-12, "dL/dx")
    assert_close_rel(got[1].reshape(ref[1].shape), ref[1], 1e-12, "dL/d input layer")
    assert_close_rel(net._dense(got[2][0] * net.masks[0]), ref[2], 1e-12, "dL/d first hidden layer")


@pytest.mark.slow  # inductor compiles the graphs (~10 s)
# dynamo itself reads .grad of a non-leaf while tracing the custom autograd functions
@pytest.mark.filterwarnings("ignore:The .grad attribute of a Tensor that is not a leaf")
def test_torch_compile_of_a_ghosted_ring_matches_eager():
    # traced, the network runs without ghosts (they live outside the tensors' bounds)
    net = permsym.build("modular:8-3,modules=6,width=4,depth=3,links=2,density=0.5").double()
    x = torch.randn(5, 8, dtype=torch.float64, requires_grad=True)
    compiled = torch.compile(net)
    y1, y2 = net(x), compiled(x)
    assert_close_rel(y2, y1, 1e-12, "f")
    g1 = torch.autograd.grad(y1.square().sum(), [x, net.weights])
    g2 = torch.autograd.grad(y2.square().sum(), [x, net.weights])
    for a, b in zip(g2, g1, strict=True):
        assert_close_rel(a, b, 1e-12, "gradient")


def test_ring_windows_without_ghosts_over_several_slabs():
    # tanh: no ghosts; interior window products plus per-block edges, 2500 samples
    net = permsym.build("modular:5-2,modules=6,width=3,depth=3,links=2,density=0.5,act=tanh,seed=2").double()
    x = torch.randn(2500, 5, dtype=torch.float64, requires_grad=True)
    y, y_ref = net(x), net.to_masked_mlp()(x)
    assert_close_rel(y, y_ref, 1e-12, "f")
    (gx,) = torch.autograd.grad(y.square().sum(), x)
    (gx_ref,) = torch.autograd.grad(y_ref.square().sum(), x)
    assert_close_rel(gx, gx_ref, 1e-12, "dL/dx")


def test_ghosted_ring_with_an_empty_batch_and_copying_saved_tensor_hooks():
    net = permsym.build("modular:5-2,modules=6,width=3,depth=3,links=2,density=0.5,seed=2").double()
    empty = net(torch.zeros(0, 5, dtype=torch.float64))
    assert empty.shape == (0, 2)
    # a saved-tensor hook that copies (as save_on_cpu does) must keep the ghosts of h
    x = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(lambda t: t.clone(), lambda t: t):
        y = net(x)
    got = torch.autograd.grad(y.square().sum(), [x, net.weights])
    y_ref = net(x)
    ref = torch.autograd.grad(y_ref.square().sum(), [x, net.weights])
    for a, b in zip(got, ref, strict=True):
        assert_close_rel(a, b, 1e-14, "gradient")


def test_ghost_in_refuses_a_tensor_without_room():
    net = permsym.build("modular:3-2,modules=6,width=2,links=2")
    h = torch.randn(6, 2, 5)
    with pytest.raises(ValueError, match="ghost_in=True needs 1 \\+ 1 ghost modules"):
        module_blocks(h, net.weights[0], None, net.sources, ghost_in=True)


def test_gradcheck_of_a_small_ring():
    net = permsym.build("modular:3-2,modules=4,width=2,depth=3,links=2,density=1,act=tanh").double()
    x = torch.randn(3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(net, (x,))


def test_block_plan_uses_windows_for_rings_only():
    ring = permsym.build("modular:3-2,modules=6,width=2,links=2,wiring=ring")
    plan = block_plan(ring.sources.tolist(), 2)
    # interior modules 1..4 read modules m-1, m, m+1; the two edge modules use runs
    win = plan.window
    assert win is not None and (win.low, win.high, win.first, win.count) == (-1, 1, 1, 4)
    # module m reads offsets -1, 0, +1: blocks of link 2 (offset -1), own, link 1 (+1)
    assert win.blocks == (2, 0, 1)
    # the edge modules 0 and 5 (their rows wrap around) use one product per block
    assert sorted((dst, src) for _, dst, src, _ in win.edges) == [(0, 0), (0, 1), (0, 5), (5, 0), (5, 4), (5, 5)]
    # input gradients: modules 1..4 from the gradient rows of modules m-1, m, m+1 (offsets
    # +1, 0, -1); modules 0 and 5 from products with the modules they feed
    assert win.back_first == 1 and [o for o, _ in win.back_order()] == [1, 0, -1]
    assert sorted((src, dst) for _, dst, src, _ in win.back_edges) == [(0, 0), (0, 1), (0, 5), (5, 0), (5, 4), (5, 5)]
    rand = permsym.build("modular:3-2,modules=6,width=2,links=2,wiring=random,seed=2")
    assert block_plan(rand.sources.tolist(), 2).window is None
    # runs partition the modules of every link
    for k in (1, 2):
        covered = sorted(m for kk, d, _, n in link_runs(rand.sources.tolist()) if kk == k for m in range(d, d + n))
        assert covered == list(range(6))


def test_vmap_over_stacked_seeds_matches_a_loop():
    # ensembles stack the seeds' parameters and vmap one functional call over them
    nets = [permsym.build("modular:4-2,modules=4,width=3,depth=3,links=2", seed=s).double() for s in range(3)]
    params, buffers = stack_module_state(nets)
    x = torch.randn(5, 4, dtype=torch.float64)
    base = nets[0]
    batched = vmap(lambda p, b: functional_call(base, (p, b), (x,)))(params, buffers)
    for i, net in enumerate(nets):
        assert_close_rel(batched[i], net(x), 1e-12, f"seed {i}")


def test_infer_structure_traces_the_modular_net():
    net = permsym.build("modular:4-2,modules=4,width=3,depth=3,links=2")
    structure = permsym.infer_structure(net, torch.zeros(2, 4))
    assert structure.groups == ()  # its symmetries are counted on to_masked_mlp()


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
