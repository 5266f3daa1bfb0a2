"""Run configuration: one frozen dataclass, named presets, validation with readable errors."""
import dataclasses
import math
from typing import Optional

ORDERS = ("d_then_g", "g_then_d")
DTYPES = ("float32", "bfloat16", "float64")
DATA_RANGES = ("zero_one", "minus_one_one")
LOOPS = ("auto", "scan", "steps")
SAMPLE_BN = ("batch", "running")
KERNELS = ("auto", "flax", "xla", "cpu")   # dcgan_jax/kernels.py


MAX_EPOCHS, MAX_SAMPLES, MAX_LATENT = 100_000, 10_000, 10_000   # a latent of 10,000: G's first layer has 41M weights


class ConfigError(ValueError):
    """A config value that cannot work; the message names the field."""


# What each annotation accepts (a config.json is edited by hand, too). bool is an int to Python.
_KINDS = {int: ((int,), "an integer"), float: ((int, float), "a number"), str: ((str,), "a string"),
          Optional[int]: ((int, type(None)), "an integer or null"),
          Optional[str]: ((str, type(None)), "a string or null")}


@dataclasses.dataclass(frozen=True)
class Config:
    # model
    latent_dim: int = 10
    dtype: str = "float32"          # compute dtype; params stay float32 (float64 for float64)
    # training: the tutorial's values
    order: str = "d_then_g"         # "g_then_d" is the tutorial's alternation
    d_steps: int = 1                # discriminator updates per generator update
    batch_size: int = 100
    epochs: int = 20
    steps_per_epoch: Optional[int] = None   # None: all full batches of the train split
    lr: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    lr_decay_every: int = 5         # StepLR(step_size=5 epochs, gamma=0.5)
    lr_decay: float = 0.5
    data_range: str = "zero_one"    # the tutorial feeds ToTensor()'s [0, 1] to a Tanh generator
    seed: int = 0
    # how to run
    loop: str = "auto"              # "scan": one dispatch per epoch; "steps": loop of jitted steps
    kernels: str = "auto"           # layer forms (kernels.py): same values, faster programs
    samples_bn: str = "batch"       # BN statistics for sample grids: the tutorial never calls eval()
    num_samples: int = 16           # the tutorial's 4 x 4 grid
    data_dir: Optional[str] = None  # folder with the four IDX files; None: TFDS 'mnist'
    tfds_data_dir: Optional[str] = None
    max_train_examples: Optional[int] = None  # use the first N train images (tests, demos)

    def validate(self) -> "Config":
        def need(ok, field, msg):
            if not ok:
                raise ConfigError(f"{field}={getattr(self, field)!r}: {msg}")
        for f in dataclasses.fields(self):
            kinds, name = _KINDS[f.type]
            value = getattr(self, f.name)
            need(isinstance(value, kinds) and not isinstance(value, bool), f.name, f"must be {name}")
        need(self.order in ORDERS, "order", f"must be one of {', '.join(ORDERS)}")
        need(self.dtype in DTYPES, "dtype", f"must be one of {', '.join(DTYPES)}")
        need(self.data_range in DATA_RANGES, "data_range", f"must be one of {', '.join(DATA_RANGES)}")
        need(self.loop in LOOPS, "loop", f"must be one of {', '.join(LOOPS)}")
        need(self.kernels in KERNELS, "kernels", f"must be one of {', '.join(KERNELS)}")
        need(self.samples_bn in SAMPLE_BN, "samples_bn", f"must be one of {', '.join(SAMPLE_BN)}")
        for f in ("latent_dim", "d_steps", "batch_size", "epochs", "lr_decay_every", "num_samples"):
            need(isinstance(getattr(self, f), int) and getattr(self, f) > 0, f, "must be a positive integer")
        # past these a typo would run for years or exhaust memory instead of failing at once
        need(self.epochs <= MAX_EPOCHS, "epochs", f"must be at most {MAX_EPOCHS:,}")
        need(self.num_samples <= MAX_SAMPLES, "num_samples", f"must be at most {MAX_SAMPLES:,}")
        need(self.latent_dim <= MAX_LATENT, "latent_dim", f"must be at most {MAX_LATENT:,}")
        for f in ("steps_per_epoch", "max_train_examples"):
            v = getattr(self, f)
            need(v is None or (isinstance(v, int) and v > 0), f, "must be a positive integer")
        for f in ("lr", "beta1", "beta2", "lr_decay"):
            need(math.isfinite(getattr(self, f)), f, "must be a finite number")
        need(self.lr > 0, "lr", "must be > 0")
        need(0 <= self.beta1 < 1, "beta1", "must lie in [0, 1)")
        need(0 <= self.beta2 < 1, "beta2", "must lie in [0, 1)")
        need(0 < self.lr_decay <= 1, "lr_decay", "must lie in (0, 1]")
        # without jax_enable_x64 a key holds 32 bits of the seed: 2**32 would be seed 0 again
        need(0 <= self.seed < 2 ** 32, "seed", "must lie in [0, 2**32)")
        return self

    def for_dataset(self, num_examples: int) -> "Config":
        """Resolve steps_per_epoch against the dataset; reject a batch the data cannot fill."""
        if self.batch_size > num_examples:
            raise ConfigError(f"batch_size={self.batch_size}: larger than the dataset "
                              f"({num_examples} training images)")
        full = num_examples // self.batch_size
        steps = self.steps_per_epoch or full
        if steps > full:
            raise ConfigError(f"steps_per_epoch={steps}: the dataset holds only {full} batches "
                              f"of {self.batch_size}")
        return dataclasses.replace(self, steps_per_epoch=steps)

    def replace(self, **kw) -> "Config":
        unknown = set(kw) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ConfigError(f"unknown config field(s): {', '.join(sorted(unknown))}")
        return dataclasses.replace(self, **kw)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Config":
        if not isinstance(d, dict):
            raise ConfigError(f"a config is a JSON object of fields, not {type(d).__name__}")
        return cls().replace(**d).validate()


PRESETS = {
    # The tutorial exactly: G step then D step, [0, 1] data, batch 100, 20 epochs of 600 steps.
    "reference": Config(order="g_then_d"),
    # Same, with the D-then-G alternation this project defaults to.
    "default": Config(),
    # A demo / smoke run that finishes in well under a minute on a 2-core CPU.
    "quick": Config(epochs=2, steps_per_epoch=4, batch_size=16),
}


def preset(name: str, **overrides) -> Config:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}: choose one of {', '.join(PRESETS)}")
    return PRESETS[name].replace(**overrides).validate()
