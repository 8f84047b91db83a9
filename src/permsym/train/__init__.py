"""Training: a plain deterministic SGD loop that produces trained points for the analyses."""

from permsym.train.fit import History, TrainingDiverged, fit

__all__ = ["History", "TrainingDiverged", "fit"]
