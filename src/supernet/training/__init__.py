"""Training: config schema, samplers, teachers, schedules, checkpoints and the one training loop."""

from supernet.config import Config, ConfigError, load_config
from supernet.training.loop import Trainer, TrainingStopped, TrainResult

__all__ = ["Config", "ConfigError", "TrainResult", "Trainer", "TrainingStopped", "load_config"]
