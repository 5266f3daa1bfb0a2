"""parity.convert: exact in both directions, strict about keys and shapes."""
import jax
import numpy as np
import pytest
import torch

from parity import ConversionError, compare, flax_to_torch, reference, torch_to_flax
from parity.tests.conftest import assert_rows_pass


def test_round_trips_are_exact(seed):
    assert_rows_pass(compare.round_trip_rows(seed), seed)


@pytest.mark.parametrize("model", ["generator", "discriminator"])
def test_flax_to_torch_loads_strictly_in_the_tutorials_key_order(model):
    module = reference.Generator() if model == "generator" else reference.Discriminator()
    state = flax_to_torch(torch_to_flax(module.state_dict(), model), model, num_batches_tracked=7)
    assert list(state) == list(module.state_dict())
    module.load_state_dict(state, strict=True)
    assert all(v.item() == 7 for k, v in state.items() if k.endswith("num_batches_tracked"))


def test_conv_transpose_kernel_is_flipped_and_transposed():
    """PyTorch (in, out, kh, kw) -> flax (kh, kw, in, out), rotated by 180 degrees."""
    G = reference.Generator()
    w = G.layer1[0][0].weight.detach().numpy()
    kernel = np.asarray(torch_to_flax(G.state_dict(), "generator")["params"]["layer1_0"]["conv"]["kernel"])
    assert kernel.shape == (4, 4, 10, 256)
    np.testing.assert_array_equal(kernel[0, 1, 2, 3], w[2, 3, 3, 2])


def test_torch_to_flax_copies_what_torch_updates_in_place():
    """A train-mode forward updates BatchNorm's running statistics in place; the converted
    variables must keep the values they had (jax < 0.10.1 on CPU shared numpy's memory)."""
    G = reference.Generator()
    variables = torch_to_flax(G.state_dict(), "generator")
    before = jax.tree.map(np.array, variables)
    G.train()
    G(torch.randn(4, 10, 1, 1))
    with torch.no_grad():
        G.layer1[0][0].weight.add_(1.0)
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(variables)):
        np.testing.assert_array_equal(a, b)


def test_unknown_model_is_refused():
    with pytest.raises(ConversionError, match="model='critic'"):
        torch_to_flax({}, "critic")


@pytest.mark.parametrize("change, message", [
    (lambda sd: sd.pop("conv.2.1.running_var"), "missing key.*conv.2.1.running_var"),
    (lambda sd: sd.pop("conv.0.1.num_batches_tracked"), "missing key.*conv.0.1.num_batches_tracked"),
    (lambda sd: sd.__setitem__("conv.5.0.weight", torch.zeros(1)), "unexpected key.*conv.5.0.weight"),
    (lambda sd: sd.__setitem__("fc.weight", torch.zeros(64, 2)), r"fc.weight.*\(64, 2\), expected \(2, 64\)"),
    (lambda sd: sd.__setitem__("conv.1.0.weight", torch.zeros(64, 32, 5, 5)), "conv.1.0.weight.*shape"),
])
def test_torch_to_flax_names_the_bad_key(change, message):
    state = reference.Discriminator().state_dict()
    change(state)
    with pytest.raises(ConversionError, match=message):
        torch_to_flax(state, "discriminator")


def test_flax_to_torch_names_the_bad_entry():
    variables = torch_to_flax(reference.Generator().state_dict(), "generator")
    del variables["batch_stats"]["layer3_1"]["bn"]["var"]
    with pytest.raises(ConversionError, match="missing key.*batch_stats/layer3_1/bn/var"):
        flax_to_torch(variables, "generator")
    variables = torch_to_flax(reference.Generator().state_dict(), "generator")
    variables["params"]["layer4_3"]["bias"] = np.zeros(2, np.float32)
    with pytest.raises(ConversionError, match=r"params/layer4_3/bias.*\(2,\), expected \(1,\)"):
        flax_to_torch(variables, "generator")
    with pytest.raises(ConversionError, match="unexpected collection"):
        flax_to_torch(dict(variables, intermediates={}), "generator")


def test_generator_latent_size_follows_the_weights():
    G = reference.Generator(latents=16)
    variables = torch_to_flax(G.state_dict(), "generator")
    assert variables["params"]["layer1_0"]["conv"]["kernel"].shape == (4, 4, 16, 256)
    assert jax.tree.structure(torch_to_flax(flax_to_torch(variables, "generator"), "generator")) == \
        jax.tree.structure(variables)
