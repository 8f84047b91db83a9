"""Training: a deterministic SGD loop, gradient-noise monitoring and temperature control."""

from permsym.train.estimators import BatchNoise, batch_noise
from permsym.train.fit import History, TrainingDiverged, fit
from permsym.train.logs import JsonlLog, TensorBoardLog
from permsym.train.monitor import NoiseMeasurement, NoiseMonitor
from permsym.train.schedule import TemperatureSchedule, parse_schedule
from permsym.train.sharpness import power_lambda_max
from permsym.train.temperature import StabilityWarning, TemperatureControl

__all__ = [
    "BatchNoise",
    "History",
    "JsonlLog",
    "NoiseMeasurement",
    "NoiseMonitor",
    "StabilityWarning",
    "TemperatureControl",
    "TemperatureSchedule",
    "TensorBoardLog",
    "TrainingDiverged",
    "batch_noise",
    "fit",
    "parse_schedule",
    "power_lambda_max",
]
