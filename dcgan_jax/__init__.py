"""dcgan_jax: the PyTorch DCGAN-on-MNIST tutorial in pure-functional JAX/Flax."""
from .config import PRESETS, Config, ConfigError, preset
from .models import Discriminator, Generator
from .train import (TrainState, create_train_state, epoch_key, generate, learning_rate, run_keys,
                    train_epoch, train_step)

__all__ = ["Config", "ConfigError", "PRESETS", "preset", "Generator", "Discriminator", "TrainState",
           "create_train_state", "train_step", "train_epoch", "generate", "learning_rate",
           "run_keys", "epoch_key"]
__version__ = "0.1.0"
