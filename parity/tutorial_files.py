"""Loading the tutorial's own `torch.save(model)` files without running their pickles.

The tutorial pickled whole modules whose classes live in its notebook's `__main__`
(`__main__.Discriminator`, `__main__.CBLR`, ...). `torch.load(weights_only=True)` unpickles with
an allow-list; here that list maps those `__main__` names to `parity.reference`'s classes and adds
the `torch.nn` layers they contain, so any other global in the file is refused, never called.
"""
import pickle
import re

import torch
from torch import nn

from . import reference
from .convert import torch_to_flax

_TUTORIAL_CLASSES = {reference.Generator: "generator", reference.Discriminator: "discriminator"}
_ALLOWED = ([(cls, f"__main__.{cls.__name__}") for cls in
             (reference.Generator, reference.Discriminator, reference.CBR, reference.CBLR, reference.TCBR)]
            + [nn.Sequential, nn.Conv2d, nn.ConvTranspose2d, nn.BatchNorm2d, nn.ReLU, nn.Tanh, nn.Linear])


class TutorialFileError(ValueError):
    """The file is not a tutorial model (or state_dict) this loader accepts; says why."""


def load_tutorial_module(path: str) -> nn.Module:
    """The pickled tutorial module in `path` as a `parity.reference` module on the CPU (train mode
    as saved); a saved state_dict is also accepted and loaded into a fresh module."""
    try:
        with torch.serialization.safe_globals(_ALLOWED):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        refused = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        other = re.search(r"WeightsUnpickler error: ([^\n]*)", str(e))
        reason = (f"global {refused.group(1)} is not on the allow-list" if refused
                  else other.group(1) if other else "not a torch.save file")
        raise TutorialFileError(f"{path}: refused to unpickle: {reason}") from None
    if isinstance(obj, tuple(_TUTORIAL_CLASSES)):
        return obj
    if isinstance(obj, dict):
        for cls in _TUTORIAL_CLASSES:
            module = cls()
            if set(obj) == set(module.state_dict()):
                module.load_state_dict(obj, strict=True)
                return module
        raise TutorialFileError(f"{path}: a state_dict with neither the Generator's nor the "
                                f"Discriminator's keys")
    raise TutorialFileError(f"{path}: holds a {type(obj).__name__}, not a tutorial Generator or Discriminator")


def load_tutorial_model(path: str):
    """A tutorial model file -> (model_name, flax variables), model_name "generator" or
    "discriminator", ready for dcgan_jax.models' Generator / Discriminator `.apply`."""
    module = load_tutorial_module(path)
    name = _TUTORIAL_CLASSES[type(module)]
    return name, torch_to_flax(module.state_dict(), name)
