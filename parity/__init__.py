"""parity/: the PyTorch tutorial re-created, weight conversion, and checks that dcgan_jax matches it.

Needs torch (the `parity` extra). `python -m parity.check` prints the comparison report.
The names below are imported on first use, not with the package: `python -m parity.check` can
then install its interrupt handling before torch and JAX take seconds to import.
"""
import importlib

_HOMES = {"torch_to_flax": "convert", "flax_to_torch": "convert", "ConversionError": "convert",
          "load_tutorial_model": "tutorial_files", "load_tutorial_module": "tutorial_files",
          "TutorialFileError": "tutorial_files"}
__all__ = list(_HOMES)


def __getattr__(name):
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)


def __dir__():
    return sorted(set(globals()) | set(__all__))
