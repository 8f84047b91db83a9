"""SGD equilibrium: predicted (Lyapunov) and measured stationary covariance, relaxation fits."""

from permsym.equilibrium.compare import (
    EquilibriumComparison,
    equilibrium_comparison,
    is_linear_least_squares,
)
from permsym.equilibrium.linear import (
    LinearMoments,
    linear_moments,
    predict_stationary_covariance_linear,
)
from permsym.equilibrium.lyapunov import (
    NoEquilibriumWarning,
    check_stability,
    predict_stationary_covariance,
    stationary_variance_closed_form,
)
from permsym.equilibrium.measure import MeasuredCovariance, measure_stationary_covariance
from permsym.equilibrium.relaxation import RelaxationFit, fit_two_phase, relaxation_run
from permsym.equilibrium.sgd import run_sgd
from permsym.equilibrium.statistics import autocorrelation_time, mean_with_ci

__all__ = [
    "EquilibriumComparison",
    "LinearMoments",
    "MeasuredCovariance",
    "NoEquilibriumWarning",
    "RelaxationFit",
    "autocorrelation_time",
    "check_stability",
    "equilibrium_comparison",
    "fit_two_phase",
    "is_linear_least_squares",
    "linear_moments",
    "mean_with_ci",
    "measure_stationary_covariance",
    "predict_stationary_covariance",
    "predict_stationary_covariance_linear",
    "relaxation_run",
    "run_sgd",
    "stationary_variance_closed_form",
]
