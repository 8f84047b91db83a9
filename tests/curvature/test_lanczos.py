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
