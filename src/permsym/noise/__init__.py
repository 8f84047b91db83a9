"""Gradient noise: per-sample gradients, their covariance $C$, noise scale and temperature."""

from permsym.noise.covariance import GradientNoise, gradient_covariance, gradient_noise
from permsym.noise.per_sample import iter_per_sample_gradients, per_sample_gradients

__all__ = [
    "GradientNoise",
    "gradient_covariance",
    "gradient_noise",
    "iter_per_sample_gradients",
    "per_sample_gradients",
]
