"""Curvature of the loss: Hessian-vector products, top eigenvalues, trace, spectral density.

Solvers (:func:`top_eigenpairs`, :func:`trace_estimate`, :func:`lanczos_quadrature`) accept a
matrix or a matvec; the ``hessian_*`` functions build the matvec from ``(model, loss_fn, data)``.
"""

from permsym.curvature.density import broadened_density, lanczos_quadrature
from permsym.curvature.functional import FlatLoss, as_data
from permsym.curvature.hessian import (
    SpectralDensity,
    TopEigenvalues,
    TraceEstimate,
    dense_hessian,
    hessian_operator,
    hessian_top_eigenvalues,
    hessian_trace,
    spectral_density,
)
from permsym.curvature.hvp import HessianOperator
from permsym.curvature.lanczos import lanczos, top_eigenpairs
from permsym.curvature.operators import as_matvec
from permsym.curvature.trace import trace_estimate

__all__ = [
    "FlatLoss",
    "HessianOperator",
    "SpectralDensity",
    "TopEigenvalues",
    "TraceEstimate",
    "as_data",
    "as_matvec",
    "broadened_density",
    "dense_hessian",
    "hessian_operator",
    "hessian_top_eigenvalues",
    "hessian_trace",
    "lanczos",
    "lanczos_quadrature",
    "spectral_density",
    "top_eigenpairs",
    "trace_estimate",
]
