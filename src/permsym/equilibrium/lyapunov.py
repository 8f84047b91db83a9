r"""Predicted stationary covariance of SGD near a minimum (discrete-time Lyapunov equation).

SGD $\theta_{t+1} = \theta_t - \eta(g(\theta_t) + \epsilon_t)$ with $g = H\delta$ near the minimum
and $\mathrm{Cov}[\epsilon] = C/B$ gives $\delta_{t+1} = A\delta_t - \eta\epsilon_t$, $A = I - \eta H$,
whose stationary covariance solves

$$\Sigma = A \Sigma A^\top + \eta^2 C / B.$$

Along a common eigenvector of $H$ and $C$: $\Sigma_{ii} = \eta c_i / (B \lambda_i (2 - \eta\lambda_i))$,
stable only for $0 < \eta\lambda_i < 2$. Sampling without replacement from $N$ samples scales
$C/B$ by $(N - B)/(N - 1)$.
"""

from __future__ import annotations

import warnings

import torch

from permsym._errors import check_positive_int

__all__ = [
    "NoEquilibriumWarning",
    "check_stability",
    "predict_stationary_covariance",
    "sampling_factor",
    "stationary_variance_closed_form",
]

SAMPLINGS = ("with_replacement", "without_replacement")


class NoEquilibriumWarning(UserWarning):
    """$\\eta \\lambda_{\\max} \\ge 2$: SGD diverges along the top direction; no equilibrium exists."""


def check_stability(lambda_max: float, lr: float, *, call: str) -> float:
    r"""Return $\eta\lambda_{\max}$; warn :class:`NoEquilibriumWarning` if it is $\ge 2$."""
    eta_lambda = float(lr) * float(lambda_max)
    if eta_lambda >= 2:
        warnings.warn(
            f"{call}: lr * lambda_max must be < 2 for an equilibrium to exist; got "
            f"eta*lambda_max = {eta_lambda:.4g} (lr = {lr:g}, lambda_max = {lambda_max:.4g}). "
            f"Use lr < {2.0 / lambda_max:.4g}.",
            NoEquilibriumWarning,
            stacklevel=3,
        )
    return eta_lambda


def sampling_factor(sampling: str, batch_size: int, n: int | None, *, call: str) -> float:
    """1 with replacement; $(N - B)/(N - 1)$ without."""
    if sampling not in SAMPLINGS:
        raise ValueError(f"{call}: sampling must be one of {', '.join(SAMPLINGS)}; got {sampling!r}.")
    if sampling == "with_replacement":
        return 1.0
    if n is None or n < 2 or batch_size > n:
        raise ValueError(
            f"{call}: sampling='without_replacement' needs n >= batch_size and n >= 2; got n={n!r}, batch_size={batch_size}."
        )
    return (n - batch_size) / (n - 1)


def predict_stationary_covariance(
    H: torch.Tensor,
    C: torch.Tensor,
    *,
    lr: float,
    batch_size: int,
    sampling: str = "with_replacement",
    n: int | None = None,
) -> torch.Tensor:
    r"""Solve $\Sigma = A \Sigma A^\top + \eta^2 f C / B$, $A = I - \eta H$ (scipy.linalg.solve_discrete_lyapunov).

    $f = 1$ with replacement, $(N-B)/(N-1)$ without. A stationary distribution exists only for
    $0 < \eta\lambda_i < 2$: if $\eta\lambda_{\max}(H) \ge 2$ or $\lambda_{\min}(H) \le 0$ a
    :class:`NoEquilibriumWarning` says which, and the result is all NaN.

    Examples:
        >>> H = torch.diag(torch.tensor([1.0, 4.0], dtype=torch.float64))
        >>> torch.diagonal(predict_stationary_covariance(H, H, lr=0.1, batch_size=1))
        tensor([0.0526, 0.0625], dtype=torch.float64)
    """
    from scipy.linalg import solve_discrete_lyapunov

    check_positive_int("predict_stationary_covariance", "batch_size", batch_size)
    if H.ndim != 2 or H.shape[0] != H.shape[1] or C.shape != H.shape:
        raise ValueError(
            f"predict_stationary_covariance: H and C must be square matrices of the same shape; got "
            f"{tuple(H.shape)} and {tuple(C.shape)}."
        )
    factor = sampling_factor(sampling, batch_size, n, call="predict_stationary_covariance")
    H64 = 0.5 * (H + H.T).to(torch.float64)
    C64 = 0.5 * (C + C.T).to(torch.float64)
    eigenvalues = torch.linalg.eigvalsh(H64)
    lam_min, lam_max = float(eigenvalues[0]), float(eigenvalues[-1])
    if check_stability(lam_max, lr, call="predict_stationary_covariance") >= 2:
        return torch.full_like(H64, float("nan"))
    if lam_min <= 0:  # flat or concave directions: the iterates diffuse, no stationary law
        warnings.warn(
            f"predict_stationary_covariance: H must be positive definite for an equilibrium to exist; got "
            f"lambda_min = {lam_min:.4g}. Along such directions the variance grows without bound.",
            NoEquilibriumWarning,
            stacklevel=2,
        )
        return torch.full_like(H64, float("nan"))
    A = torch.eye(H64.shape[0], dtype=torch.float64, device=H64.device) - lr * H64
    Q = lr**2 * factor * C64 / batch_size
    # scipy solves on the CPU; the result goes back to H's device
    sigma = torch.from_numpy(solve_discrete_lyapunov(A.cpu().numpy(), Q.cpu().numpy())).to(H64.device)
    return 0.5 * (sigma + sigma.T)


def stationary_variance_closed_form(
    eigenvalues: torch.Tensor, noise: torch.Tensor, *, lr: float, batch_size: int, factor: float = 1.0
) -> torch.Tensor:
    r"""$\Sigma_{ii} = \eta f c_i / (B \lambda_i (2 - \eta \lambda_i))$ per eigen-direction.

    ``noise`` holds $c_i = u_i^\top C u_i$; directions with $\eta\lambda_i \notin (0, 2)$ get ``inf``.
    """
    lam = eigenvalues.to(torch.float64)
    c = noise.to(torch.float64)
    out = lr * factor * c / (batch_size * lam * (2 - lr * lam))
    unstable = (lr * lam <= 0) | (lr * lam >= 2)
    return torch.where(unstable, torch.full_like(out, float("inf")), out)
