"""parity.reference is the tutorial's module layout, init and optimisers."""
import os

import pytest
import torch

from parity import reference
from parity.tests.conftest import TUTORIAL_DISCRIMINATOR


def test_state_dict_keys_are_the_tutorials():
    g_keys, d_keys = list(reference.Generator().state_dict()), list(reference.Discriminator().state_dict())
    # 10 conv+BN blocks x (weight + 5 BN entries) + the last conv's weight and bias.
    assert len(g_keys) == 10 * 6 + 2 and len(d_keys) == 5 * 6 + 2
    assert g_keys[:6] == ["layer1.0.0.weight", "layer1.0.1.weight", "layer1.0.1.bias", "layer1.0.1.running_mean",
                          "layer1.0.1.running_var", "layer1.0.1.num_batches_tracked"]
    assert g_keys[-2:] == ["layer4.3.weight", "layer4.3.bias"] and "layer3.2.0.weight" in g_keys
    assert d_keys[-3:] == ["conv.4.1.num_batches_tracked", "fc.weight", "fc.bias"]
    assert type(reference.Discriminator().conv[0]) is reference.CBLR


@pytest.mark.skipif(not os.path.exists(TUTORIAL_DISCRIMINATOR), reason="PARITY_TUTORIAL_PTH names no file (the tutorial author's DCGAN_Discriminator.pth)")
def test_the_tutorials_saved_state_dict_loads_strictly():
    from parity import load_tutorial_module

    saved = load_tutorial_module(TUTORIAL_DISCRIMINATOR).state_dict()
    reference.Discriminator().load_state_dict(saved, strict=True)  # raises on any key or shape mismatch


def test_weights_init_draws_the_tutorials_distributions():
    torch.manual_seed(0)
    G = reference.Generator()
    default_bias = G.layer4[3].bias.detach().clone()
    G.apply(reference.weights_init)
    conv = torch.cat([m.weight.flatten() for m in G.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))])
    bn_w = torch.cat([m.weight for m in G.modules() if isinstance(m, torch.nn.BatchNorm2d)])
    bn_b = torch.cat([m.bias for m in G.modules() if isinstance(m, torch.nn.BatchNorm2d)])
    assert abs(conv.mean()) < 1e-3 and abs(conv.std() - 0.02) < 1e-3
    assert abs(bn_w.mean() - 1) < 5e-3 and abs(bn_w.std() - 0.02) < 5e-3
    assert torch.all(bn_b == 0) and torch.equal(G.layer4[3].bias, default_bias)  # the last conv's bias keeps its default


def test_step_lr_halves_every_five_epochs():
    G, D = reference.Generator(), reference.Discriminator()
    opt_g, opt_d, sched_g, sched_d = reference.make_optimizers(G, D)
    rates = []
    for _ in range(20):
        rates.append(opt_g.param_groups[0]["lr"])
        opt_g.step()  # no gradients: changes nothing, keeps StepLR's call order
        sched_g.step()
    assert rates == [2e-4] * 5 + [1e-4] * 5 + [5e-5] * 5 + [2.5e-5] * 5
    assert opt_d.param_groups[0]["betas"] == (0.5, 0.999)
