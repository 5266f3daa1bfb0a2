# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # DCGAN on MNIST in JAX: the PyTorch tutorial, cell for cell
#
# This notebook follows the PyTorch tutorial "Pytorch 手把手實作 - DCGAN" (`12_Pytorch_DCGAN.ipynb`)
# step by step, with JAX, flax and optax. Each code cell comes after a short note showing the
# PyTorch lines it replaces. The networks come from the `dcgan_jax` library (the parity tests in
# `parity/` check them against the tutorial number by number). The training loop is written out
# here in plain Python over two jitted step functions, so you can read it and change it.
#
# **The outputs saved with this notebook come from a short run: one epoch of the tutorial's
# configuration (600 steps of batch 100, `EPOCHS=1`) on a 2-core CPU.** The tutorial trains 20
# epochs; with the default settings below, so does this notebook.
#
# Settings (next cell), each also taken from the environment variable of the same name:
# - `QUICK=1`: a few steps on a small slice of the data, to check that everything runs
#   (the test suite runs the notebook this way);
# - `DATA_DIR`: `None` loads MNIST through TensorFlow Datasets (the `tfds` extra; downloaded
#   once); set it to a folder holding the four MNIST IDX files (`train-images-idx3-ubyte[.gz]`,
#   ...) to read those instead. The notebook runs with `experiments/` as its working directory,
#   so a relative path starts there;
# - `EPOCHS`, `OUT_DIR` (where sample grids and weights are saved) and `PARITY_TUTORIAL_PTH`
#   (the tutorial author's trained discriminator, used by the last cell if the file is there).
#
# Open it with `pip install -e ".[notebook]" jupyterlab` and `jupyter lab experiments/tutorial.ipynb`,
# or run it headless (`--inplace` writes the outputs into the notebook):
# ```
# QUICK=1 DATA_DIR=/path/to/mnist jupyter execute experiments/tutorial.ipynb
# ```

# %%
import os

QUICK = False         # True: a few steps on a small slice, to check that the notebook runs
DATA_DIR = None       # None: TFDS 'mnist'; or a folder with the four MNIST IDX files
EPOCHS = 20           # the tutorial's 20 epochs
ORDER = "g_then_d"    # the tutorial: G step, then D step; "d_then_g": D step first
OUT_DIR = "tutorial_run"                       # sample grids, saved weights (made by this notebook)
PARITY_TUTORIAL_PTH = "DCGAN_Discriminator.pth"  # the tutorial author's discriminator (optional)

QUICK = os.environ.get("QUICK", "1" if QUICK else "0") not in ("", "0", "false", "False")
DATA_DIR = os.environ.get("DATA_DIR", DATA_DIR) or None
EPOCHS = int(os.environ.get("EPOCHS", EPOCHS))
OUT_DIR = os.environ.get("OUT_DIR", OUT_DIR)
PARITY_TUTORIAL_PTH = os.environ.get("PARITY_TUTORIAL_PTH", PARITY_TUTORIAL_PTH)
if QUICK:
    EPOCHS = min(EPOCHS, 2)
print(f"QUICK={QUICK} DATA_DIR={DATA_DIR} EPOCHS={EPOCHS} ORDER={ORDER} OUT_DIR={OUT_DIR}")

# %% [markdown]
# ## 1. Imports and the device
#
# PyTorch (the tutorial):
# ```python
# import torch, torch.nn as nn, torchvision
# from torchvision import datasets, transforms
# device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
# ```
# JAX needs no `device`: arrays go to the first device JAX finds (a GPU if one is installed),
# and every jitted function runs there. The line marked *layer forms* chooses how the networks'
# layers are computed. The networks are written with flax's layers (`nn.Conv`, `nn.ConvTranspose`,
# section 3); `dcgan_jax.kernels` has drop-in replacements that compute the same values in forms
# XLA compiles to faster programs (flax's own layers train many times slower on XLA:CPU), and
# `kernels.select("auto")` picks the set for the backend JAX found.

# %%
import functools
import inspect

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
from tqdm import tqdm

from dcgan_jax import data, kernels, losses, models, outputs
from dcgan_jax.config import Config

KERNELS = kernels.select("auto")   # layer forms: "flax" for flax's own layers

print("JAX", jax.__version__, "devices:", jax.devices())

# %% [markdown]
# ## 2. MNIST
#
# PyTorch:
# ```python
# train_set = datasets.MNIST("./data", train=True, download=True, transform=transforms.ToTensor())
# train_loader = torch.utils.data.DataLoader(train_set, batch_size=100, shuffle=True)
# ```
# `dcgan_jax.data.load_mnist` returns the whole split as one `uint8` array (60000, 28, 28, 1),
# NHWC: JAX convolutions take channels last. Shuffling and batching are a few lines of the
# training loop below; `ToTensor()`'s scaling to [0, 1] happens inside the jitted step.

# %%
BATCH = 16 if QUICK else 100     # the tutorial's batch size
mnist = data.load_mnist("train", DATA_DIR)
images = mnist.images[: 4 * BATCH] if QUICK else mnist.images
STEPS = len(images) // BATCH     # 600 steps per epoch for the 60000 training digits
print(f"{mnist.source}: {mnist.images.shape[0]} images; training on {len(images)}, "
      f"{STEPS} steps of {BATCH} per epoch")


def show(grid, title, size=4):
    """A grid of images; pixels outside the data's [0, 1] (the Tanh reaches -1) show black."""
    plt.figure(figsize=(size, size))
    plt.imshow(grid, cmap="gray", vmin=0, vmax=1)
    plt.title(title)
    plt.axis("off")
    plt.show()


real_grid = outputs.image_grid(images[:16] / 255, ncol=4)
show(real_grid, "real digits")

# %% [markdown]
# ## 3. The building blocks
#
# PyTorch:
# ```python
# class CBR(nn.Sequential):    # CBLR is the same block (plain ReLU, despite its name)
#     def __init__(self, in_ch, out_ch, k, s):
#         super().__init__(nn.Conv2d(in_ch, out_ch, k, s, padding=(k - 1) // 2, bias=False),
#                          nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True))
# class TCBR(nn.Sequential):   # ConvTranspose2d instead of Conv2d; its argument p is ignored
#     ...
# ```
# In flax one module covers all three (`transpose=True` for TCBR). A flax module declares only
# its output channels: input channels are read off the input when the weights are created.
# The three layer types come from `kernels` (a `models.Kernels`: flax's `nn.Conv`,
# `nn.ConvTranspose` and `models.BatchNorm` unless another set is passed in); `models.BatchNorm`
# is PyTorch's (it stores the unbiased batch variance, as `BatchNorm2d` does).

# %%
print(inspect.getsource(models.Kernels))
print(inspect.getsource(models.ConvBNReLU))

# %% [markdown]
# ## 4. The generator and the discriminator
#
# PyTorch:
# ```python
# class Generator(nn.Module):
#     def __init__(self, latents=10):
#         super().__init__()
#         self.layer1 = nn.Sequential(TCBR(latents, 256, 4, 2, 1), CBR(256, 128, 3, 1))
#         ...
#         self.layer4 = nn.Sequential(TCBR(128, 64, 4, 2, 1), CBR(64, 64, 3, 1), CBR(64, 64, 3, 1),
#                                     nn.Conv2d(64, 1, 3, 1, padding=1), nn.Tanh())
#     def forward(self, z):
#         return self.layer4(self.layer3(self.layer2(self.layer1(z))))
# ```
# The flax modules loop over a table of blocks (`models.GENERATOR_BLOCKS`,
# `models.DISCRIMINATOR_BLOCKS`); the blocks are named `layer1_0`, ... after the PyTorch
# `state_dict` keys `layer1.0....`, so converting weights is a renaming.

# %%
print("GENERATOR_BLOCKS = (name, features, kernel, stride, transpose):")
for block in models.GENERATOR_BLOCKS:
    print("   ", block)
print()
print(inspect.getsource(models.Generator))
print(inspect.getsource(models.Discriminator))

# %% [markdown]
# ## 5. Shapes and parameter counts
#
# The tutorial prints each network's layers and output shapes (NCHW); here flax's `tabulate`
# gives the same per block (NHWC), and the table below puts the two side by side. The totals
# are the tutorial's: 3,050,945 parameters in the generator, 314,594 in the discriminator
# (BatchNorm's running statistics, `batch_stats` in flax, are not parameters).

# %%
LATENT = 10
G = models.Generator(LATENT, kernels=KERNELS)
D = models.Discriminator(kernels=KERNELS)

# The tutorial's output shapes (C x H x W), block by block.
TUTORIAL_SHAPES = {
    "Generator": ["256x2x2", "128x2x2", "256x3x3", "256x6x6", "128x7x7", "128x14x14", "128x14x14",
        "64x28x28", "64x28x28", "64x28x28", "1x28x28"],
    "Discriminator": ["32x14x14", "64x14x14", "128x7x7", "128x4x4", "64x2x2", "2"],
}


def compare_with_tutorial(net, x):
    """Each block's output shape (NHWC) and parameter count next to the tutorial's shape."""
    shapes = jax.eval_shape(lambda: net.init_with_output(jax.random.key(0), x, train=False,
                                                         capture_intermediates=True))
    variables = shapes[1]
    print(f"{type(net).__name__:<14} {'tutorial':>12} {'flax (NHWC)':>18} {'params':>10}")
    for (name, block), tutorial in zip(variables["params"].items(), TUTORIAL_SHAPES[type(net).__name__]):
        out = variables["intermediates"][name]["__call__"][0].shape[1:]
        count = sum(p.size for p in jax.tree.leaves(block))
        print(f"{name:<14} {tutorial:>12} {str(out):>18} {count:>10,}")
    total = sum(p.size for p in jax.tree.leaves(variables["params"]))
    print(f"{'total':<14} {'':>12} {'':>18} {total:>10,}\n")
    return total


g_param_count = compare_with_tutorial(G, jnp.zeros((1, LATENT)))
d_param_count = compare_with_tutorial(D, jnp.zeros((1, 28, 28, 1)))
print(G.tabulate(jax.random.key(0), jnp.zeros((1, LATENT)), train=False, depth=1,
                 console_kwargs={"width": 110, "no_color": True}))

# %% [markdown]
# ## 6. Initialisation and the optimisers
#
# PyTorch:
# ```python
# G, D = Generator().to(device), Discriminator().to(device)
# G.apply(weights_init); D.apply(weights_init)     # conv ~ N(0, 0.02), BN weight ~ N(1, 0.02)
# opt_G = torch.optim.Adam(G.parameters(), lr=2e-4, betas=(0.5, 0.999))
# opt_D = torch.optim.Adam(D.parameters(), lr=2e-4, betas=(0.5, 0.999))
# sched_G = torch.optim.lr_scheduler.StepLR(opt_G, step_size=5, gamma=0.5)   # .step() per epoch
# ```
# There is no global seed: every random draw takes a key, and one key is split into
# independent ones (the same key always gives the same numbers). The initialisers are part of
# the layer definitions (`models.conv_init`, `models.bn_scale_init`), so `init` returns the
# tutorial's initial weights: `{"params": ..., "batch_stats": ...}`, a plain nested dict.
#
# optax's Adam is a pair of pure functions (`init`, `update`); its moments are a value we
# carry. StepLR becomes a schedule, a function of the update count: halve every 5 epochs.

# %%
init_key, sample_key, train_key = jax.random.split(jax.random.key(0), 3)


# Both inits as one compiled program (run op by op, each of its random draws would compile on
# its own); on CPU, LLVM's -O2 compiles it much sooner than the default -O3, into the same numbers.
@functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 2} if jax.default_backend() == "cpu" else None)
def init_networks(key):
    g_key, d_key = jax.random.split(key)
    return (G.init(g_key, jnp.zeros((1, LATENT)), train=False),
            D.init(d_key, jnp.zeros((1, 28, 28, 1)), train=False))


g_vars, d_vars = init_networks(init_key)

lr_schedule = optax.exponential_decay(2e-4, transition_steps=5 * STEPS, decay_rate=0.5, staircase=True)
g_tx = optax.adam(lr_schedule, b1=0.5, b2=0.999)
d_tx = optax.adam(lr_schedule, b1=0.5, b2=0.999)
g_opt, d_opt = g_tx.init(g_vars["params"]), d_tx.init(d_vars["params"])
print("learning rate in epochs 1, 6, 11, 16:", ", ".join(f"{lr_schedule(e * STEPS):.3g}" for e in (0, 5, 10, 15)))

# %% [markdown]
# ## 7. Training
#
# PyTorch (one iteration of the tutorial: the generator's step first, then the discriminator's):
# ```python
# for real, _ in train_loader:
#     z = torch.randn(real.size(0), 10, 1, 1, device=device)
#     opt_G.zero_grad()
#     fake = G(z)
#     loss_G = criterion(D(fake), real_labels)           # nn.CrossEntropyLoss, label 1 = real
#     loss_G.backward(); opt_G.step()
#     opt_D.zero_grad()
#     loss_D = (criterion(D(real), real_labels) + criterion(D(fake.detach()), fake_labels)) / 2
#     loss_D.backward(); opt_D.step()
# sched_G.step(); sched_D.step()
# ```
# In JAX a step is a function from values to new values: `jax.value_and_grad` returns the loss
# and the gradient (nothing accumulates in `.grad`, so nothing needs zeroing); `update` and
# `apply_updates` make the new parameters. A train-mode forward pass returns the BatchNorm
# statistics it moved (`mutable=["batch_stats"]`), and we keep them. The D step differentiates
# only with respect to D's parameters, so `fake` needs no `detach`. `jax.jit` compiles each step
# once; the loop around it is ordinary Python.

# %%
def bn_forward(net, variables, x, params=None):
    """A train-mode forward pass: output and the moved BatchNorm statistics (nothing mutated)."""
    variables = variables if params is None else {**variables, "params": params}
    out, moved = net.apply(variables, x, train=True, mutable=["batch_stats"])
    return out, moved["batch_stats"]


@functools.partial(jax.jit, **kernels.STEP_JIT_KWARGS)
def g_step(g_vars, g_opt, d_vars, z):
    """loss_G = CE(D(G(z)), real); returns the fake batch too, for the D step."""
    def loss_fn(g_params):
        fake, g_stats = bn_forward(G, g_vars, z, g_params)
        logits, d_stats = bn_forward(D, d_vars, fake)    # D's statistics move here too
        return losses.cross_entropy(logits, losses.REAL), (fake, g_stats, d_stats)
    (loss, (fake, g_stats, d_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(g_vars["params"])
    updates, g_opt = g_tx.update(grads, g_opt, g_vars["params"])
    g_vars = {"params": optax.apply_updates(g_vars["params"], updates), "batch_stats": g_stats}
    return g_vars, g_opt, {**d_vars, "batch_stats": d_stats}, fake, loss


@functools.partial(jax.jit, **kernels.STEP_JIT_KWARGS)
def d_step(d_vars, d_opt, real_uint8, fake):
    """loss_D = (CE(D(real), real) + CE(D(fake), fake)) / 2, real and fake in separate passes."""
    real = real_uint8.astype(jnp.float32) / 255          # ToTensor(): [0, 1]
    def loss_fn(d_params):
        logits_real, stats = bn_forward(D, d_vars, real, d_params)
        logits_fake, stats = bn_forward(D, {**d_vars, "batch_stats": stats}, fake, d_params)
        return losses.discriminator_loss(logits_real, logits_fake), stats
    (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(d_vars["params"])
    updates, d_opt = d_tx.update(grads, d_opt, d_vars["params"])
    return {"params": optax.apply_updates(d_vars["params"], updates), "batch_stats": stats}, d_opt, loss


@functools.partial(jax.jit, static_argnames="train")
def generate(g_vars, z, train=True):
    """G(z), changing nothing. train=True: BatchNorm with this batch's statistics, as the tutorial
    samples (it never calls G.eval()); train=False: the running statistics (eval mode)."""
    if train:
        return bn_forward(G, g_vars, z)[0]
    return G.apply(g_vars, z, train=False)


# %%
if not outputs.is_marked(OUT_DIR):   # a folder dcgan_jax made is reused: its files are rewritten
    outputs.prepare_run_dir(OUT_DIR)  # otherwise created, and refused if it holds anything
outputs.write_config(OUT_DIR, Config(latent_dim=LATENT, batch_size=BATCH, epochs=EPOCHS, order=ORDER))
fixed_z = jax.random.normal(sample_key, (16, LATENT))   # the same 16 latents every epoch
history = {"loss_g": [], "loss_d": []}
epoch_grids = []

for epoch in range(1, EPOCHS + 1):
    perm_key, noise_key = jax.random.split(jax.random.fold_in(train_key, epoch))
    order = np.asarray(jax.random.permutation(perm_key, len(images)))   # shuffle=True
    z_keys = jax.random.split(noise_key, STEPS)
    bar = tqdm(range(STEPS), desc=f"epoch {epoch}/{EPOCHS}", mininterval=2)
    for i in bar:
        real = images[order[i * BATCH:(i + 1) * BATCH]]
        z = jax.random.normal(z_keys[i], (BATCH, LATENT))
        if ORDER == "g_then_d":
            g_vars, g_opt, d_vars, fake, loss_g = g_step(g_vars, g_opt, d_vars, z)
            d_vars, d_opt, loss_d = d_step(d_vars, d_opt, real, fake)
        else:   # D on G(z) first; then G's step through the updated D, from the same z
            d_vars, d_opt, loss_d = d_step(d_vars, d_opt, real, generate(g_vars, z))
            g_vars, g_opt, d_vars, _, loss_g = g_step(g_vars, g_opt, d_vars, z)
        history["loss_g"].append(loss_g)
        history["loss_d"].append(loss_d)
        if i % 50 == 0:
            bar.set_postfix(loss_D=f"{float(loss_d):.3f}", loss_G=f"{float(loss_g):.3f}")
    bar.close()
    mean_d, mean_g = (float(np.mean(history[k][-STEPS:])) for k in ("loss_d", "loss_g"))
    lr = float(lr_schedule((epoch - 1) * STEPS))
    print(f"epoch {epoch}: loss_D {mean_d:.4f}  loss_G {mean_g:.4f}  lr {lr:g}")

    samples = np.asarray(generate(g_vars, fixed_z))
    outputs.save_grid(os.path.join(OUT_DIR, f"Generator_epoch_{epoch}.png"), samples)
    epoch_grids.append(outputs.image_grid(samples, ncol=4))
    show(epoch_grids[-1], f"G(fixed z) after epoch {epoch}")

history = {k: np.asarray(v, np.float32) for k, v in history.items()}

# %% [markdown]
# PyTorch's loss plot:
# ```python
# plt.plot(G_losses, label="G"); plt.plot(D_losses, label="D"); plt.legend(); plt.show()
# ```

# %%
plt.figure(figsize=(9, 4))
plt.plot(history["loss_g"], label="G", lw=0.8)
plt.plot(history["loss_d"], label="D", lw=0.8)
plt.xlabel(f"iteration ({STEPS} per epoch)")
plt.ylabel("loss")
plt.title("Generator and discriminator loss during training")
plt.legend()
plt.show()

# %% [markdown]
# ## 8. Saving and loading the weights
#
# PyTorch:
# ```python
# torch.save(G, "DCGAN_Generator.pth"); torch.save(D, "DCGAN_Discriminator.pth")
# G = torch.load("DCGAN_Generator.pth")      # needs the classes defined in __main__
# ```
# The weights are a nested dict of arrays; `save_variables` writes them as msgpack files
# (arrays only, no pickled code), and `load_variables` reads them back, checking every array's
# name and shape against the networks that `config.json` (written above) describes.

# %%
outputs.save_variables(OUT_DIR, g_vars, d_vars)
config, g_loaded, d_loaded = outputs.load_variables(OUT_DIR)
same = jax.tree.all(jax.tree.map(np.array_equal, (g_vars, d_vars), (g_loaded, d_loaded)))
print(sorted(os.listdir(OUT_DIR)))
print("loaded weights equal the trained ones:", same)

# %% [markdown]
# ## 9. The tutorial's experiment: scaling z
#
# PyTorch (the generator is still in train mode: the tutorial never calls `G.eval()`):
# ```python
# z = torch.randn(20, 10, 1, 1, device=device)
# for scale in (1, -10000, 50000):
#     imgs = G(z * scale)          # shows 16 of the 20
# ```
# The tutorial sees digits at every scale and guesses that BatchNorm removes the scale. Below,
# the same three experiments in train mode (the batch's own statistics, what the tutorial ran)
# and in eval mode (the running statistics), with how far G(c·z) lies from G(z) and from
# G(sign(c)·z).

# %%
SCALES = (1.0, -1e4, 5e4)
z = jax.random.normal(jax.random.key(1), (16 if QUICK else 20, LATENT))
latent_results = {}
fig, axes = plt.subplots(2, 3, figsize=(9, 6.6))
for row, (train, mode) in enumerate(((True, "train mode"), (False, "eval mode"))):
    base = {s: np.asarray(generate(g_vars, s * z, train)) for s in (1.0, -1.0)}
    for col, c in enumerate(SCALES):
        out = np.asarray(generate(g_vars, c * z, train))
        vs_z, vs_sign = np.abs(out - base[1.0]).max(), np.abs(out - base[np.sign(c)]).max()
        latent_results[mode, c] = (vs_z, vs_sign)
        print(f"{mode:<10} c = {c:>8g}   max|G(cz) - G(z)| = {vs_z:.3g}   max|G(cz) - G(sign(c) z)| = {vs_sign:.3g}")
        ax = axes[row, col]
        ax.imshow(outputs.image_grid(out[:16]), cmap="gray", vmin=0, vmax=1)
        ax.set_title(f"{mode}: z x {c:g}", fontsize=10)
        ax.axis("off")
fig.tight_layout()
plt.show()

# %% [markdown]
# **Why the scale of z barely matters in the tutorial.** The generator's first layer is a
# ConvTranspose2d without bias, so its output is linear in z: multiplying every z of the batch by
# c multiplies that output, its batch mean and its batch standard deviation by c. In train mode
# BatchNorm subtracts the batch mean and divides by the batch standard deviation, which removes
# |c|, and a negative c only turns z into −z, which is another N(0, 1) sample. So in train mode
# G(c·z) equals G(sign(c)·z) but for BatchNorm's eps (added to the variance, it matters a little
# at c = 1 and not at all for huge |c|: the small numbers in the printout's last column), and the
# tutorial's outputs stay digits. In eval mode BatchNorm divides by a
# fixed running standard deviation instead, c·z reaches the ReLUs c times larger, and the images
# change completely: the scale of z then matters.

# %% [markdown]
# ## 10. Optional: the tutorial author's discriminator judges our digits
#
# The tutorial's author published the discriminator they trained (`DCGAN_Discriminator.pth`,
# saved with `torch.save(D)`). `parity.load_tutorial_model` unpickles it safely (an allow-list of
# classes, no code run) and converts its weights to flax's layout; our `Discriminator` then runs
# them. Needs `torch` (the `parity` extra) and the file at `PARITY_TUTORIAL_PTH`.

# %%
tutorial_scores = None
if not os.path.exists(PARITY_TUTORIAL_PTH):
    print(f"skipped: {PARITY_TUTORIAL_PTH} not found (set PARITY_TUTORIAL_PTH to the tutorial's file)")
else:
    import parity   # needs torch
    name, tutorial_d_vars = parity.load_tutorial_model(PARITY_TUTORIAL_PTH)
    p_real = jax.jit(lambda x: jax.nn.softmax(D.apply(tutorial_d_vars, x, train=False))[:, losses.REAL])
    generated = generate(g_vars, jax.random.normal(jax.random.key(2), (BATCH, LATENT)))
    tutorial_scores = {"real digits": np.asarray(p_real(images[:BATCH] / 255)),
                       "our generated digits": np.asarray(p_real(generated))}
    for what, scores in tutorial_scores.items():
        print(f"the tutorial's {name} on {len(scores)} {what}: mean P(real) = {scores.mean():.3f}, "
              f"judged real: {(scores > 0.5).mean():.0%}")
