"""The PyTorch side of the benchmark: the tutorial's model (parity.reference) in three loops.

- tutorial: what the tutorial runs, a DataLoader over a per-item ToTensor() dataset (batch 100,
  shuffle, no workers), each batch moved to the device, fresh noise each step;
- device_data: the whole train split preloaded on the device as float32, batches indexed there;
- compile: device_data with both networks wrapped in torch.compile (default mode).
No loop syncs per step: losses stay on the device (the tutorial's logging is not timed).
"""
import time

import numpy as np
import torch
import torch.nn.functional as F

from parity import reference


class ToTensorDataset(torch.utils.data.Dataset):
    """MNIST uint8 (N, 28, 28, 1) served one item at a time as torchvision's ToTensor() does:
    (1, 28, 28) float32 in [0, 1]. torchvision itself is not installable next to every torch."""

    def __init__(self, images: np.ndarray):
        self.images = images

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return torch.from_numpy(self.images[i]).permute(2, 0, 1).float().div(255), 0


def _ce(logits, label):
    return F.cross_entropy(logits, torch.full(logits.shape[:1], label, dtype=torch.long, device=logits.device))


def tutorial_step(G, D, opt_g, opt_d, real, z):
    """parity.reference.g_then_d_step without its per-step .item() syncs (labels on the device)."""
    opt_g.zero_grad()
    fake = G(z)
    loss_g = _ce(D(fake), reference.REAL)
    loss_g.backward()
    opt_g.step()
    opt_d.zero_grad()
    loss_d = (_ce(D(real), reference.REAL) + _ce(D(fake.detach()), reference.FAKE)) / 2
    loss_d.backward()
    opt_d.step()
    return loss_g.detach(), loss_d.detach()


def build(device, seed=0):
    torch.manual_seed(seed)
    G, D = reference.Generator(10).to(device), reference.Discriminator().to(device)
    G.apply(reference.weights_init)
    D.apply(reference.weights_init)
    G.train()
    D.train()
    opt_g, opt_d, sched_g, sched_d = reference.make_optimizers(G, D, 2e-4, (0.5, 0.999))
    return G, D, opt_g, opt_d, (sched_g, sched_d)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def run(variant: str, images: np.ndarray, device_name: str, epochs: int, steps: int, batch: int = 100):
    """Train `epochs` epochs of `steps` steps; returns per-epoch seconds and peak device memory."""
    device = torch.device("cuda" if device_name == "gpu" else "cpu")
    G, D, opt_g, opt_d, scheds = build(device)
    step_fn = tutorial_step
    if variant == "torch_compile":
        G, D = torch.compile(G), torch.compile(D)
    if variant == "torch_tutorial":
        loader = torch.utils.data.DataLoader(ToTensorDataset(images), batch_size=batch, shuffle=True)
    else:
        data = torch.from_numpy(images).to(device).permute(0, 3, 1, 2).float().div(255)
    seconds, losses = [], []
    for _ in range(epochs):
        _sync(device)
        start = time.perf_counter()
        if variant == "torch_tutorial":
            batches = (x for x, _ in loader)
        else:
            perm = torch.randperm(len(data), device=device)
            batches = (data[perm[i * batch:(i + 1) * batch]] for i in range(steps))
        for i, real in enumerate(batches):
            if i == steps:
                break
            real = real.to(device)
            z = torch.randn(batch, 10, 1, 1, device=device)
            losses.append(step_fn(G, D, opt_g, opt_d, real, z))
        for sched in scheds:
            sched.step()
        _sync(device)
        seconds.append(time.perf_counter() - start)
    last = [float(l) for l in losses[-1]]
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else None
    return seconds, peak, {"loss_g": last[0], "loss_d": last[1]}
