"""Training: the config, the generic loop (optimiser, EMA, precision, DDP, checkpoints, log) and its tasks."""

from .config import ConfigError, TrainConfig, load_config
from .trainer import NonFiniteLossError, Trainer, train
