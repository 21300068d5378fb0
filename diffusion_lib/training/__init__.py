"""Training: the config, the generic loop (optimiser, EMA, precision, DDP, checkpoints, log) and its tasks.

``train(config)`` (:mod:`.run`) hands a config to its task (:mod:`.tasks`: diffusion, vae, classifier);
each task builds its model, loss and sample grids and runs the :class:`Trainer` (:mod:`.trainer`).
"""

from .config import ConfigError, TrainConfig, load_config
from .run import TRAIN_FUNCTIONS, train
from .trainer import NonFiniteLossError, Trainer
