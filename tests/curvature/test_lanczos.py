"""Lanczos edge cases: invariant subspaces and repeated eigenvalues."""

import torch


def test_repeated_eigenvalues_after_an_invariant_subspace():
    """diag(3,3,3,3,1,1,.5,.2): the start vector's Krylov space closes after 4 steps; restart."""
    from permsym.curvature.lanczos import top_eigenpairs

    A = torch.diag(torch.tensor([3.0, 3.0, 3.0, 3.0, 1.0, 1.0, 0.5, 0.2], dtype=torch.float64))
    vals, _, vecs, _, converged = top_eigenpairs(A, 5, generator=torch.Generator().manual_seed(0), return_eigenvectors=True)
    assert converged
    assert torch.allclose(vals, torch.tensor([3.0, 3.0, 3.0, 3.0, 1.0], dtype=torch.float64), rtol=0, atol=1e-12)
    assert torch.allclose(vecs.T @ vecs, torch.eye(5, dtype=torch.float64), atol=1e-10)


def test_error_estimate_is_kato_temple_with_a_residual_widened_gap():
    from permsym.curvature.lanczos import _error_estimates

    theta = torch.tensor([1.0, 0.9, 0.0], dtype=torch.float64)
    resid = torch.tensor([1e-3, 1e-2, 0.95], dtype=torch.float64)
    est = _error_estimates(theta, resid)
    # theta_0: to 0.9 less its residual 0.01 -> 0.09, to 0 less 0.95 -> 0.05; r^2/gap = 1e-6 / 0.05
    assert abs(float(est[0]) - 1e-6 / 0.05) < 1e-18
    # theta_1: the neighbour 0 +- 0.95 reaches within 0.9 - 0.95 < 0 of it: residual bound
    assert float(est[1]) == 1e-2
    assert float(est[2]) == 0.95  # r^2/gap = 0.95^2 / 0.89 > r: the residual bound is smaller


def test_clustered_top_eigenvalues_meet_the_tolerance_in_float32():
    """A float32 operator (float32 basis) with a clustered top: relative errors stay <= tol."""
    from permsym.curvature.lanczos import top_eigenpairs

    g = torch.Generator().manual_seed(0)
    n = 3000
    lam = torch.cat([torch.tensor([1.0, 0.95, 0.94, 0.93, 0.9]), 0.8 * torch.rand(n - 5, generator=g)]).double()
    Q = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))[0]
    A = ((Q * lam) @ Q.T).float()
    for seed in range(3):
        vals, _, _, steps, converged = top_eigenpairs(A, 5, tol=1e-5, generator=torch.Generator().manual_seed(seed))
        rel = ((vals - lam[:5]).abs() / lam[:5]).max()
        assert converged and rel < 1e-5, (seed, steps, float(rel))
