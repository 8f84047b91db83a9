r"""Linear least squares: $H$, $C$ and the exact stationary covariance with multiplicative noise.

Model $f(x) = w^\top x + b$ (``mlp:d-1``), loss ``mse_loss`` (mean), so with $\tilde x = (x, 1)$ and
$\theta = (w, b)$ the per-sample loss is $\ell_i = (\tilde x_i^\top\theta - y_i)^2$ and
$g_i = 2\tilde x_i(\tilde x_i^\top\theta - y_i)$. At the optimum $\theta^*$, with residuals
$r_i = \tilde x_i^\top\theta^* - y_i$: $H = 2\,\mathbb E_i[\tilde x\tilde x^\top]$,
$C^* = 4\,\mathbb E_i[r^2 \tilde x\tilde x^\top]$.

Minibatch noise also depends on $\delta = \theta - \theta^*$: with replacement,
$\mathrm{Cov}[\hat g\,|\,\delta] = \frac1B(C^* + 4\,\mathbb E_i[\tilde x\tilde x^\top\delta\delta^\top\tilde x\tilde x^\top]
+ \text{terms linear in }\delta - H\delta\delta^\top H)$. The stationary mean is 0, so the
second moments close exactly:

$$\Sigma = A\Sigma A^\top + \frac{\eta^2}{B}\big(C^* + 4\,\mathbb E_i[\tilde x\tilde x^\top\Sigma\tilde x\tilde x^\top] - H\Sigma H\big),$$

a linear system in $\mathrm{vec}\,\Sigma$ (solved directly for small $d$, by fixed-point iteration
otherwise).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from permsym._errors import PermsymError, check_positive_int
from permsym.equilibrium.lyapunov import NoEquilibriumWarning, check_stability

__all__ = ["LinearMoments", "linear_moments", "predict_stationary_covariance_linear"]


@dataclass(frozen=True, eq=False)
class LinearMoments:
    """``theta`` (optimum, $(w, b)$), ``H``, ``C`` at the optimum, ``Xa`` = $[X, 1]$, min loss."""

    theta: torch.Tensor
    H: torch.Tensor
    C: torch.Tensor
    Xa: torch.Tensor
    min_loss: float


def linear_moments(X: torch.Tensor, y: torch.Tensor, *, bias: bool = True) -> LinearMoments:
    r"""Exact optimum, Hessian and gradient covariance of mean-squared error for $f = w^\top x (+ b)$."""
    X64 = X.to(torch.float64).reshape(X.shape[0], -1)
    y64 = y.to(torch.float64).reshape(-1)
    if y.ndim == 2 and y.shape[1] != 1:
        raise PermsymError(f"linear_moments: targets must have one output; got shape {tuple(y.shape)}.")
    Xa = torch.cat([X64, torch.ones(X64.shape[0], 1, dtype=torch.float64, device=X64.device)], 1) if bias else X64
    theta = torch.linalg.lstsq(Xa, y64.unsqueeze(1)).solution.squeeze(1)
    r = Xa @ theta - y64
    N = Xa.shape[0]
    H = 2.0 * Xa.T @ Xa / N
    C = 4.0 * (Xa * (r * r).unsqueeze(1)).T @ Xa / N
    return LinearMoments(theta=theta, H=H, C=C, Xa=Xa, min_loss=float((r * r).mean()))


def _fourth_moment(Xa: torch.Tensor, S: torch.Tensor) -> torch.Tensor:
    r"""$\mathbb E_i[(\tilde x_i^\top S \tilde x_i)\tilde x_i\tilde x_i^\top]$."""
    q = ((Xa @ S) * Xa).sum(1)
    return (Xa * q.unsqueeze(1)).T @ Xa / Xa.shape[0]


def predict_stationary_covariance_linear(
    X: torch.Tensor,
    y: torch.Tensor,
    *,
    lr: float,
    batch_size: int,
    bias: bool = True,
    method: str = "auto",
    tol: float = 1e-13,
    max_iter: int = 100_000,
) -> torch.Tensor:
    r"""Exact stationary covariance of minibatch SGD (with replacement) on linear least squares.

    ``method="direct"`` solves the $p^2 \times p^2$ system ($p = d + 1$); ``"iterate"`` runs the
    fixed point $\Sigma \leftarrow A\Sigma A^\top + \frac{\eta^2}{B}(C^* + 4M(\Sigma) - H\Sigma H)$;
    ``"auto"``: direct for $p \le 40$. Warns :class:`NoEquilibriumWarning` (and returns NaN) when
    $\eta\lambda_{\max} \ge 2$ or when the second moments diverge.
    """
    check_positive_int("predict_stationary_covariance_linear", "batch_size", batch_size)
    mom = linear_moments(X, y, bias=bias)
    H, C, Xa = mom.H, mom.C, mom.Xa
    p = H.shape[0]
    call = "predict_stationary_covariance_linear"
    lam_max = float(torch.linalg.eigvalsh(H)[-1])
    nan = torch.full_like(H, float("nan"))
    if check_stability(lam_max, lr, call=call) >= 2:
        return nan
    A = torch.eye(p, dtype=torch.float64, device=H.device) - lr * H
    scale = lr**2 / batch_size
    if method == "auto":
        method = "direct" if p <= 40 else "iterate"
    if method == "direct":
        # vec(A S A^T) = (A kron A) vec S (row-major vec is consistent for symmetric products).
        Z = (Xa.unsqueeze(2) * Xa.unsqueeze(1)).reshape(Xa.shape[0], p * p)
        K = Z.T @ Z / Xa.shape[0]
        L = torch.kron(A, A) + scale * (4.0 * K - torch.kron(H, H))
        rhs = scale * C.reshape(-1)
        S = torch.linalg.solve(torch.eye(p * p, dtype=torch.float64, device=L.device) - L, rhs).reshape(p, p)
        if float(torch.linalg.eigvals(L).abs().max()) >= 1:
            return _diverged(call, nan)
    elif method == "iterate":
        S = torch.zeros_like(H)
        for _ in range(max_iter):
            new = A @ S @ A.T + scale * (C + 4.0 * _fourth_moment(Xa, S) - H @ S @ H)
            if not torch.isfinite(new).all() or float(new.abs().max()) > 1e150:
                return _diverged(call, nan)
            if float((new - S).abs().max()) <= tol * max(float(new.abs().max()), 1e-300):
                S = new
                break
            S = new
        else:
            raise PermsymError(f"{call}: fixed-point iteration must converge within max_iter={max_iter} steps.")
    else:
        raise ValueError(f"{call}: method must be 'auto', 'direct' or 'iterate'; got {method!r}.")
    S = 0.5 * (S + S.T)
    if float(torch.linalg.eigvalsh(S)[0]) < -1e-12 * float(S.abs().max()):
        return _diverged(call, nan)
    return S


def _diverged(call: str, nan: torch.Tensor) -> torch.Tensor:
    import warnings

    warnings.warn(
        f"{call}: the second moments of SGD must stay bounded for an equilibrium; they diverge "
        f"here (multiplicative noise). Use a smaller lr or a larger batch_size.",
        NoEquilibriumWarning,
        stacklevel=3,
    )
    return nan
