"""parity/: the PyTorch tutorial re-created, weight conversion, and checks that dcgan_jax matches it.

Needs torch (the `parity` extra). `python -m parity.check` prints the comparison report.
"""
from .convert import ConversionError, flax_to_torch, torch_to_flax
from .tutorial_files import TutorialFileError, load_tutorial_model, load_tutorial_module

__all__ = ["torch_to_flax", "flax_to_torch", "ConversionError", "load_tutorial_model",
           "load_tutorial_module", "TutorialFileError"]
