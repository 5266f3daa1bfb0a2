"""Loading the tutorial's pickled `torch.save(model)` files through an allow-list."""
import os
import sys

import jax
import numpy as np
import pytest
import torch

from parity import TutorialFileError, compare, load_tutorial_model, reference, torch_to_flax
from parity.tests.conftest import TUTORIAL_DISCRIMINATOR, assert_rows_pass


@pytest.mark.skipif(not os.path.exists(TUTORIAL_DISCRIMINATOR), reason="PARITY_TUTORIAL_PTH names no file (the tutorial author's DCGAN_Discriminator.pth)")
def test_the_tutorial_authors_discriminator_gives_the_pytorch_logits(seed):
    name, variables = load_tutorial_model(TUTORIAL_DISCRIMINATOR)
    assert name == "discriminator" and set(variables["params"]) == {f"conv_{i}" for i in range(5)} | {"fc"}
    assert_rows_pass(compare.tutorial_file_rows(TUTORIAL_DISCRIMINATOR, seed), seed)


def test_a_pickled_main_generator_loads(tmp_path, monkeypatch):
    """What the notebook saved: classes pickled as __main__.Generator, __main__.TCBR, __main__.CBR."""
    for cls in (reference.Generator, reference.TCBR, reference.CBR):
        monkeypatch.setattr(cls, "__module__", "__main__")
        monkeypatch.setattr(sys.modules["__main__"], cls.__name__, cls, raising=False)
    G = reference.Generator()
    G.apply(reference.weights_init)
    path = str(tmp_path / "DCGAN_Generator.pth")
    torch.save(G, path)
    assert b"__main__" in open(path, "rb").read()
    monkeypatch.undo()
    name, variables = load_tutorial_model(path)
    expected = torch_to_flax(G.state_dict(), "generator")
    assert name == "generator"
    assert jax.tree.structure(variables) == jax.tree.structure(expected)
    for got, want in zip(jax.tree.leaves(variables), jax.tree.leaves(expected)):
        np.testing.assert_array_equal(got, want)


def test_a_saved_state_dict_loads(tmp_path):
    D = reference.Discriminator()
    torch.save(D.state_dict(), tmp_path / "d.pth")
    name, variables = load_tutorial_model(str(tmp_path / "d.pth"))
    assert name == "discriminator"
    np.testing.assert_array_equal(variables["params"]["fc"]["bias"], D.fc.bias.detach().numpy())


class _Payload:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):  # unpickling this would create a file
        return open, (self.path, "w")


def test_other_globals_are_refused_never_run(tmp_path):
    target = tmp_path / "created_by_the_pickle"
    torch.save(_Payload(str(target)), tmp_path / "evil.pth")
    with pytest.raises(TutorialFileError, match="refused to unpickle: global io.open is not on the allow-list"):
        load_tutorial_model(str(tmp_path / "evil.pth"))
    assert not target.exists()


def test_a_file_holding_something_else_is_refused(tmp_path):
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(TutorialFileError, match="neither the Generator's nor the Discriminator's keys"):
        load_tutorial_model(str(tmp_path / "other.pth"))
