"""The tutorial in PyTorch, rebuilt from docs/tutorial.md: models, init, optimisers, iterations.

Class names and module nesting are the tutorial's, so `state_dict()` keys are exactly its keys
(`layer1.0.0.weight`, ..., `conv.4.1.running_var`, `fc.bias`) and the pickled `__main__.*`
modules it saved unpickle into these classes (see `parity.tutorial_files`).
"""
import torch
import torch.nn.functional as F
from torch import nn

REAL, FAKE = 1, 0


class CBR(nn.Sequential):
    """Conv2d(k, s, padding=(k-1)//2, no bias) -> BatchNorm2d -> ReLU."""

    def __init__(self, in_ch, out_ch, k, s):
        super().__init__(nn.Conv2d(in_ch, out_ch, k, stride=s, padding=(k - 1) // 2, bias=False),
                         nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True))


class CBLR(CBR):
    """The tutorial's discriminator block: identical to CBR (plain ReLU despite the name)."""


class TCBR(nn.Sequential):
    """ConvTranspose2d(k, s, padding=(k-1)//2, no bias) -> BatchNorm2d -> ReLU; `p` is ignored,
    as in the tutorial."""

    def __init__(self, in_ch, out_ch, k, s, p=None):
        super().__init__(nn.ConvTranspose2d(in_ch, out_ch, k, stride=s, padding=(k - 1) // 2, bias=False),
                         nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True))


class Generator(nn.Module):
    """z (N, latents, 1, 1) -> images (N, 1, 28, 28) in [-1, 1]."""

    def __init__(self, latents=10):
        super().__init__()
        self.layer1 = nn.Sequential(TCBR(latents, 256, 4, 2, 1), CBR(256, 128, 3, 1))
        self.layer2 = nn.Sequential(TCBR(128, 256, 4, 1, 1), TCBR(256, 256, 4, 2, 1))
        self.layer3 = nn.Sequential(TCBR(256, 128, 4, 1, 1), TCBR(128, 128, 4, 2, 1), CBR(128, 128, 3, 1))
        self.layer4 = nn.Sequential(TCBR(128, 64, 4, 2, 1), CBR(64, 64, 3, 1), CBR(64, 64, 3, 1),
                                    nn.Conv2d(64, 1, 3, 1, padding=1), nn.Tanh())

    def forward(self, z):
        return self.layer4(self.layer3(self.layer2(self.layer1(z))))


class Discriminator(nn.Module):
    """images (N, 1, 28, 28) -> logits (N, 2); index 1 is "real"."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Sequential(CBLR(1, 32, 3, 2), CBLR(32, 64, 3, 1), CBLR(64, 128, 3, 2),
                                  CBLR(128, 128, 3, 2), CBLR(128, 64, 3, 2))
        self.fc = nn.Linear(64, 2)

    def forward(self, x):
        x = F.adaptive_avg_pool2d(self.conv(x), 1).flatten(1)
        return self.fc(x)


def weights_init(m):
    """The tutorial's init: conv weights ~ N(0, 0.02), BatchNorm weight ~ N(1, 0.02), bias 0.
    Conv biases and the Linear layer keep PyTorch's defaults. Use `model.apply(weights_init)`."""
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(m.weight, 0.0, 0.02)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


def make_optimizers(G, D, lr=2e-4, betas=(0.5, 0.999)):
    """Adam for each network and StepLR(5, 0.5) schedulers, which the caller steps once per epoch."""
    opt_g = torch.optim.Adam(G.parameters(), lr=lr, betas=betas)
    opt_d = torch.optim.Adam(D.parameters(), lr=lr, betas=betas)
    return (opt_g, opt_d, torch.optim.lr_scheduler.StepLR(opt_g, 5, 0.5),
            torch.optim.lr_scheduler.StepLR(opt_d, 5, 0.5))


def _ce(logits, label):
    return F.cross_entropy(logits, torch.full(logits.shape[:1], label, dtype=torch.long, device=logits.device))


def _prob_real(logits):
    return logits.softmax(1)[:, REAL].mean().item()


def _d_update(D, opt_d, real, fake):
    """loss_D = (CE(D(real), 1) + CE(D(fake), 0)) / 2, real and fake in separate passes, real first."""
    opt_d.zero_grad()
    logits_real = D(real)
    logits_fake = D(fake)
    loss_d = (_ce(logits_real, REAL) + _ce(logits_fake, FAKE)) / 2
    loss_d.backward()
    opt_d.step()
    return {"loss_d": loss_d.item(), "d_real": _prob_real(logits_real), "d_fake": _prob_real(logits_fake)}


def g_then_d_step(G, D, opt_g, opt_d, real, z):
    """The tutorial's iteration: G step (which also moves D's BatchNorm statistics), then a D step
    on the fake made before G's update. Both networks must be in train mode."""
    opt_g.zero_grad()
    fake = G(z)
    loss_g = _ce(D(fake), REAL)
    loss_g.backward()
    opt_g.step()
    metrics = _d_update(D, opt_d, real, fake.detach())
    return dict(metrics, loss_g=loss_g.item())


def d_then_g_step(G, D, opt_g, opt_d, real, z):
    """dcgan_jax's order="d_then_g", d_steps=1: a D step on fake.detach(), then a G step through
    the updated D on the same fake (its generator forward pass is reused, not recomputed)."""
    fake = G(z)
    metrics = _d_update(D, opt_d, real, fake.detach())
    opt_g.zero_grad()
    loss_g = _ce(D(fake), REAL)
    loss_g.backward()
    opt_g.step()
    return dict(metrics, loss_g=loss_g.item())
