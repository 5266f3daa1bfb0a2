"""parity.reference (PyTorch) and dcgan_jax run side by side, reduced to rows of differences.

The tests (parity/tests) assert every row passes; `python -m parity.check` prints them. Both
sides start from the same weights, drawn by the tutorial's init in PyTorch and converted with
parity.convert, and get the same batches and noise. Differences are measured in PyTorch's layout
and named by its state_dict keys: `max_abs` = max |jax - torch|, `max_rel` = max_abs / max |torch|
of the tensor (per tensor, then the worst tensor of a block).
Float32 shows forward passes; gradients and trajectories are compared in float64 on both sides
(docs/tutorial.md#parity-notes): there a real bug shows by orders of magnitude, while in
float32 either framework drifts from exact arithmetic by ~1e-2 within a few Adam steps.
"""
import contextlib
import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import torch

from dcgan_jax import losses
from dcgan_jax.config import Config
from dcgan_jax.models import Discriminator, Generator
from dcgan_jax.train import TrainState, build_optimizers, noise, train_step

from . import reference
from .convert import flax_to_torch, torch_to_flax
from .tutorial_files import load_tutorial_module

FORWARD_TOL = 1e-5        # float32 outputs, logits and BatchNorm statistics: max |diff|;
                          # hidden activations (up to ~10 in size): relative
GRAD_TOL = 1e-5           # float64 losses: max |diff|; gradients: relative
STATS_TOL = 1e-10         # float64 BatchNorm statistics after one iteration: relative (a biased
                          # running variance would be ~1e-5 off)
STEP_TOL = 1e-4           # float64 per-step losses and D(x), D(G(z)): max |diff|
FINAL_TOL = 1e-4          # float64 weights and statistics after the trajectory: relative
FLOAT32_RATIO = 3.0       # JAX float32's distance to float64 <= this x PyTorch float32's: seeds
                          # 0-99 gave <= 2.24 (per-step max), 1.70 (mean), 0.89-1.11 (final)
LATENTS = 10

# docs/tutorial.md's generator and discriminator tables: each block's output, (C, H, W).
GENERATOR_SHAPES = {
    "layer1.0": (256, 2, 2), "layer1.1": (128, 2, 2), "layer2.0": (256, 3, 3), "layer2.1": (256, 6, 6),
    "layer3.0": (128, 7, 7), "layer3.1": (128, 14, 14), "layer3.2": (128, 14, 14),
    "layer4.0": (64, 28, 28), "layer4.1": (64, 28, 28), "layer4.2": (64, 28, 28), "layer4.3": (1, 28, 28),
    "output": (1, 28, 28)}
DISCRIMINATOR_SHAPES = {
    "conv.0": (32, 14, 14), "conv.1": (64, 14, 14), "conv.2": (128, 7, 7), "conv.3": (128, 4, 4),
    "conv.4": (64, 2, 2), "output": (2,)}
METRICS = ("loss_d", "loss_g", "d_real", "d_fake")


@dataclasses.dataclass(frozen=True)
class Row:
    group: str
    name: str
    value: float          # the judged quantity
    limit: float
    check: str            # "abs", "rel", "exact" or "ratio": what `value` is
    max_abs: float = math.nan
    max_rel: float = math.nan
    note: str = ""

    @property
    def passed(self) -> bool:
        return bool(self.value <= self.limit)  # NaN fails


@contextlib.contextmanager
def highest_precision():
    """Full-precision float32 matmuls and convolutions on both sides, restored afterwards."""
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        with jax.default_matmul_precision("highest"):
            yield
    finally:
        torch.set_float32_matmul_precision(previous)


def reference_models(seed: int, dtype=torch.float32):
    """The tutorial's G and D with its init, drawn from torch.manual_seed(seed), in train mode."""
    torch.manual_seed(seed)
    G, D = reference.Generator(LATENTS), reference.Discriminator()
    G.apply(reference.weights_init)
    D.apply(reference.weights_init)
    return G.to(dtype), D.to(dtype)


def digit_like(rng: np.random.Generator, n: int):
    """(n, 1, 28, 28) float64 images in [0, 1] that look like MNIST: a few thick bright strokes
    on a black background (so BatchNorm sees MNIST-like statistics)."""
    images = np.zeros((n, 28, 28))
    t = np.linspace(0, 1, 40)[:, None]
    for image in images:
        for _ in range(rng.integers(2, 5)):
            a, b = rng.uniform(5, 23, 2), rng.uniform(5, 23, 2)
            points = np.rint(a + t * (b - a)).astype(int)
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    image[np.clip(points[:, 0] + dy, 0, 27), np.clip(points[:, 1] + dx, 0, 27)] = 1.0
        image *= rng.uniform(0.6, 1.0, image.shape)
    return images[:, None]


def _numpy(x):
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _nchw(x):
    x = np.asarray(x)
    return x.transpose(0, 3, 1, 2) if x.ndim == 4 else x


def _diff(got, ref):
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    if got.shape != ref.shape:
        return math.inf, math.inf
    max_abs = float(np.abs(got - ref).max()) if got.size else 0.0
    return max_abs, max_abs / max(float(np.abs(ref).max()), 1e-300)


def diff_row(group, name, got, ref, limit, check="abs", note=""):
    max_abs, max_rel = _diff(got, ref)
    return Row(group, name, max_abs if check == "abs" else max_rel, limit, check, max_abs, max_rel, note)


def _block(key: str) -> str:
    """state_dict key -> the tutorial block it belongs to: layer1.0.1.weight -> layer1.0, fc.bias -> fc."""
    parts = key.split(".")
    return ".".join(parts[:2]) if parts[0] != "fc" else "fc"


def state_rows(group, label, got, ref, keys, limit, check="rel"):
    """One row per block of `keys`: the worst tensor of that block (named in the note)."""
    worst = {}
    for key in keys:
        max_abs, max_rel = _diff(_numpy(got[key]), _numpy(ref[key]))
        block = _block(key)
        judged = max_abs if check == "abs" else max_rel
        if block not in worst or judged > worst[block][0] or math.isnan(judged):
            worst[block] = (judged, max_abs, max_rel, key.split(".", 2)[-1] if block != "fc" else key)
    return [Row(group, f"{label} {block}", v, limit, check, a, r, f"worst: {k}")
            for block, (v, a, r, k) in worst.items()]


def _param_keys(module):
    return [k for k, _ in module.named_parameters()]


def _stat_keys(module):
    return [k for k in module.state_dict() if k.endswith(("running_mean", "running_var"))]


def _torch_layers(module, x, names):
    out = {}
    hooks = [module.get_submodule(n).register_forward_hook(
        lambda m, i, o, n=n: out.__setitem__(n, o.detach().clone())) for n in names]
    try:
        y = module(x)
    finally:
        for h in hooks:
            h.remove()
    out["output"] = y.detach().clone()
    return out


def _jax_layers(module, variables, x, names, train):
    y, state = module.apply(variables, x, train=train, capture_intermediates=True,
                            mutable=["batch_stats", "intermediates"] if train else ["intermediates"])
    out = {n: state["intermediates"][n.replace(".", "_")]["__call__"][0] for n in names}
    out["output"] = y
    return out, state.get("batch_stats")


def _networks():
    """(label, model name, flax module, block names, expected shapes) for G and D."""
    return (("G", "generator", Generator(LATENTS), [n for n in GENERATOR_SHAPES if n != "output"],
             GENERATOR_SHAPES),
            ("D", "discriminator", Discriminator(), [n for n in DISCRIMINATOR_SHAPES if n != "output"],
             DISCRIMINATOR_SHAPES))


def forward_rows(seed: int, batch: int = 8):
    """Float32: every block's output shape and values in train mode (batch statistics) and eval mode
    (running statistics), and the BatchNorm running statistics after one train-mode forward."""
    rng = np.random.default_rng(seed)
    G, D = reference_models(seed)
    inputs = {"G": rng.standard_normal((batch, LATENTS)).astype(np.float32),
              "D": digit_like(rng, batch).astype(np.float32)}
    rows = []
    with highest_precision():
        for (label, model, flax_module, names, shapes), net in zip(_networks(), (G, D)):
            x = inputs[label]
            x_torch = torch.from_numpy(x[:, :, None, None] if label == "G" else x)
            x_jax = jnp.asarray(x if label == "G" else x.transpose(0, 2, 3, 1))
            variables = torch_to_flax(net.state_dict(), model)

            net.train()
            t_out = _torch_layers(net, x_torch, names)
            j_out, j_stats = _jax_layers(flax_module, variables, x_jax, names, train=True)
            for n in names + ["output"]:
                t_shape, j_shape = tuple(t_out[n].shape[1:]), _nchw(j_out[n]).shape[1:]
                ok = t_shape == j_shape == shapes[n]
                rows.append(Row("shapes (C,H,W)", f"{label} {n}", 0.0 if ok else math.inf, 0.0, "exact",
                                note=f"reference {shapes[n]}, torch {t_shape}, jax {j_shape}"))
            rows += _layer_rows("forward f32 train", label, names, j_out, t_out)
            j_state = flax_to_torch({"params": variables["params"], "batch_stats": j_stats}, model)
            rows += state_rows("BN stats after 1 forward (f32)", label, j_state, net.state_dict(),
                               _stat_keys(net), FORWARD_TOL, "abs")

            net.eval()
            eval_variables = torch_to_flax(net.state_dict(), model)
            t_out = _torch_layers(net, x_torch, names)
            j_out, _ = _jax_layers(flax_module, eval_variables, x_jax, names, train=False)
            rows += _layer_rows("forward f32 eval", label, names, j_out, t_out)
    return rows


def _layer_rows(group, label, names, j_out, t_out):
    """Hidden blocks judged relative to their largest activation, the network's output absolutely."""
    return [diff_row(group, f"{label} {n}", _nchw(j_out[n]), t_out[n], FORWARD_TOL,
                     "abs" if n in ("output", "layer4.3") else "rel") for n in names + ["output"]]


def _unbiased_var_row(group, first_bn_input, j_running_var, t_running_var):
    """What running_var holds on both sides after one update from 1: 0.9 + 0.1 * the *unbiased*
    variance of the batch (normalisation itself uses the biased one). Judged on the batch-variance
    estimate (running_var - 0.9) / 0.1, relative; n is small here, so n/(n-1) is far from 1."""
    h = first_bn_input.double()
    n = h.numel() // h.shape[1]
    unbiased = h.var(dim=(0, 2, 3), unbiased=True)
    estimate = lambda rv: (_numpy(rv) - 0.9) / 0.1
    _, j_rel = _diff(estimate(j_running_var), unbiased)
    _, t_rel = _diff(estimate(t_running_var), unbiased)
    _, gap = _diff(h.var(dim=(0, 2, 3), unbiased=False), unbiased)
    return Row(group, "G layer1.0 running_var = 0.9 + 0.1 unbiased batch var", max(j_rel, t_rel), STATS_TOL,
               "rel", max_rel=j_rel, note=f"torch {t_rel:.1e}; biased would be {gap:.1e} off (n={n})")


def _tutorial_losses_jax(G, D, g_vars, d_vars, z, real):
    """The tutorial's G step loss and D step loss in JAX, with gradients and updated statistics."""
    def g_loss(params):
        fake, g_upd = G.apply({"params": params, "batch_stats": g_vars["batch_stats"]}, z,
                              train=True, mutable=["batch_stats"])
        logits, d_upd = D.apply(d_vars, fake, train=True, mutable=["batch_stats"])
        return losses.generator_loss(logits), (fake, g_upd["batch_stats"], d_upd["batch_stats"])

    (loss_g, (fake, g_stats, d_stats)), g_grads = jax.value_and_grad(g_loss, has_aux=True)(g_vars["params"])
    d_stats_after_g = d_stats

    def d_loss(params):
        logits_real, upd = D.apply({"params": params, "batch_stats": d_stats}, real, train=True,
                                   mutable=["batch_stats"])
        logits_fake, upd = D.apply({"params": params, "batch_stats": upd["batch_stats"]},
                                   jax.lax.stop_gradient(fake), train=True, mutable=["batch_stats"])
        return losses.discriminator_loss(logits_real, logits_fake), upd["batch_stats"]

    (loss_d, d_stats), d_grads = jax.value_and_grad(d_loss, has_aux=True)(d_vars["params"])
    return dict(loss_g=loss_g, loss_d=loss_d, g_grads=g_grads, d_grads=d_grads, g_stats=g_stats,
                d_stats_after_g=d_stats_after_g, d_stats=d_stats)


def gradient_rows(seed: int, batch: int = 8):
    """Float64: the tutorial's two losses on one batch, the gradient of every parameter, and the
    BatchNorm statistics after the G step's forward passes (D's included) and after D's two."""
    rng = np.random.default_rng(seed)
    G, D = reference_models(seed, torch.float64)
    z, real = rng.standard_normal((batch, LATENTS)), digit_like(rng, batch)
    with highest_precision(), jax.enable_x64(True):
        g_vars, d_vars = torch_to_flax(G.state_dict(), "generator"), torch_to_flax(D.state_dict(), "discriminator")
        losses_fn = jax.jit(lambda *args: _tutorial_losses_jax(
            Generator(LATENTS, param_dtype=jnp.float64), Discriminator(param_dtype=jnp.float64), *args))
        j = losses_fn(g_vars, d_vars, jnp.asarray(z), jnp.asarray(real.transpose(0, 2, 3, 1)))
        j_g = flax_to_torch({"params": j["g_grads"], "batch_stats": j["g_stats"]}, "generator")
        j_d_after_g = flax_to_torch({"params": d_vars["params"], "batch_stats": j["d_stats_after_g"]}, "discriminator")
        j_d = flax_to_torch({"params": j["d_grads"], "batch_stats": j["d_stats"]}, "discriminator")
        j_losses = {k: float(j[k]) for k in ("loss_g", "loss_d")}

    z_torch = torch.from_numpy(z)[:, :, None, None]
    with torch.no_grad():
        first_bn_input = G.layer1[0][0](z_torch)
    fake = G(z_torch)
    loss_g = reference._ce(D(fake), reference.REAL)
    loss_g.backward()
    t_g_grads = {k: p.grad for k, p in G.named_parameters()}
    t_d_after_g = {k: v.clone() for k, v in D.state_dict().items()}
    D.zero_grad()
    loss_d = (reference._ce(D(torch.from_numpy(real)), reference.REAL)
              + reference._ce(D(fake.detach()), reference.FAKE)) / 2
    loss_d.backward()
    t_d_grads = {k: p.grad for k, p in D.named_parameters()}

    group = "losses & gradients (f64)"
    rows = [diff_row(group, "loss_G = CE(D(G(z)), 1)", j_losses["loss_g"], loss_g.item(), GRAD_TOL),
            diff_row(group, "loss_D = (CE(D(x), 1) + CE(D(G(z)), 0)) / 2", j_losses["loss_d"], loss_d.item(), GRAD_TOL)]
    rows += state_rows(group, "dloss_G/d G", j_g, t_g_grads, _param_keys(G), GRAD_TOL)
    rows += state_rows(group, "dloss_D/d D", j_d, t_d_grads, _param_keys(D), GRAD_TOL)
    group = "BN stats after a G-then-D iteration's forwards (f64)"
    rows += state_rows(group, "G", j_g, G.state_dict(), _stat_keys(G), STATS_TOL)
    rows += state_rows(group, "D after G step", j_d_after_g, t_d_after_g, _stat_keys(D), STATS_TOL)
    rows += state_rows(group, "D after D step", j_d, D.state_dict(), _stat_keys(D), STATS_TOL)
    rows.append(_unbiased_var_row(group, first_bn_input, j_g["layer1.0.1.running_var"],
                                  G.state_dict()["layer1.0.1.running_var"]))
    return rows


# --- training trajectories ------------------------------------------------------------------

def train_step_noise(config: Config, key, n: int):
    """The noise dcgan_jax.train.train_step draws from `key` (its first d_steps split)."""
    return noise(jax.random.split(key, config.d_steps)[0], config, n)


def torch_run(init, order, reals, zs, steps_per_epoch, dtype):
    """The reference loop: `init` = (G state_dict, D state_dict); StepLR stepped every epoch."""
    G, D = reference.Generator(LATENTS).to(dtype), reference.Discriminator().to(dtype)
    G.load_state_dict(init[0])
    D.load_state_dict(init[1])
    opt_g, opt_d, sched_g, sched_d = reference.make_optimizers(G, D)
    step = reference.g_then_d_step if order == "g_then_d" else reference.d_then_g_step
    history = []
    for i, (real, z) in enumerate(zip(reals, zs)):
        m = step(G, D, opt_g, opt_d, torch.from_numpy(real).to(dtype), torch.from_numpy(z).to(dtype)[:, :, None, None])
        history.append([m[k] for k in METRICS])
        if (i + 1) % steps_per_epoch == 0:
            sched_g.step()
            sched_d.step()
    return np.array(history), {k: _numpy(v) for k, v in {**_prefixed("G", G), **_prefixed("D", D)}.items()}


def jax_run(init, config: Config, reals, keys):
    """dcgan_jax.train.train_step from the same weights; reals NCHW in [0, 1]."""
    g_vars, d_vars = torch_to_flax(init[0], "generator"), torch_to_flax(init[1], "discriminator")
    # create_train_state's state with these weights, without compiling an init that they replace.
    g_tx, d_tx = build_optimizers(config.validate())
    state = TrainState(step=jnp.zeros((), jnp.int32), g_params=g_vars["params"], g_stats=g_vars["batch_stats"],
                       d_params=d_vars["params"], d_stats=d_vars["batch_stats"],
                       g_opt=g_tx.init(g_vars["params"]), d_opt=d_tx.init(d_vars["params"]), config=config)
    history = []
    for real, key in zip(reals, keys):
        state, m = train_step(state, jnp.asarray(real.transpose(0, 2, 3, 1)), key)
        history.append([float(m[k]) for k in METRICS])
    final = {**{f"G.{k}": _numpy(v) for k, v in flax_to_torch(state.generator_variables, "generator").items()},
             **{f"D.{k}": _numpy(v) for k, v in flax_to_torch(state.discriminator_variables, "discriminator").items()}}
    return np.array(history), final


def _prefixed(label, module):
    return {f"{label}.{k}": v for k, v in module.state_dict().items()}


def trajectories(seed: int, batch: int = 4, steps: int = 20, steps_per_epoch: int = 2):
    """All runs the trajectory rows need, from one initial G, D, batch sequence and key sequence.

    float64, both orders: PyTorch and JAX with the noise JAX's train_step draws in float64.
    float32 (G-then-D): PyTorch float32, JAX float32 and a PyTorch float64 reference, all with
    the noise JAX draws in float32. steps_per_epoch=2 puts StepLR's first decay at step 10.
    runs["init"] holds the initial weights, flat like each run's final ones."""
    G, D = reference_models(seed, torch.float64)
    init64 = (G.state_dict(), D.state_dict())
    runs = {"init": {k: _numpy(v).copy() for k, v in {**_prefixed("G", G), **_prefixed("D", D)}.items()}}
    init32 = tuple({k: v.float() if v.is_floating_point() else v for k, v in sd.items()} for sd in init64)
    rng = np.random.default_rng(seed)
    reals = digit_like(rng, steps * batch).reshape(steps, batch, 1, 28, 28)
    keys = jax.random.split(jax.random.key(seed), steps)
    base = Config(batch_size=batch, steps_per_epoch=steps_per_epoch)
    with highest_precision():
        with jax.enable_x64(True):
            for order in ("g_then_d", "d_then_g"):
                config = base.replace(order=order, dtype="float64")
                zs = np.stack([np.asarray(train_step_noise(config, k, batch)) for k in keys])
                runs[f"jax64 {order}"] = jax_run(init64, config, reals, keys)
                runs[f"torch64 {order}"] = torch_run(init64, order, reals, zs, steps_per_epoch, torch.float64)
        config = base.replace(order="g_then_d", dtype="float32")
        zs = np.stack([np.asarray(train_step_noise(config, k, batch)) for k in keys]).astype(np.float64)
        runs["jax32"] = jax_run(init32, config, reals.astype(np.float32), keys)
        runs["torch32"] = torch_run(init32, "g_then_d", reals, zs, steps_per_epoch, torch.float32)
        runs["torch64 ref"] = torch_run(init64, "g_then_d", reals, zs, steps_per_epoch, torch.float64)
    return runs


def _distances(run, ref, init):
    """A float32 run's distance to the float64 reference: max and mean |diff| of the per-step
    metrics, and |final params - reference| / |reference's movement from init| (global L2)."""
    params = [k for k in ref[1] if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    norm = lambda arrays: math.sqrt(sum(float(np.sum(np.square(a))) for a in arrays))
    moved = norm(ref[1][k] - init[k] for k in params)
    step_diff = np.abs(run[0] - ref[0])
    return (float(step_diff.max()), float(step_diff.mean()), norm(run[1][k] - ref[1][k] for k in params) / moved)


def trajectory_rows(runs):
    rows = []
    for order in ("g_then_d", "d_then_g"):
        group = f"{'tutorial G-then-D' if order == 'g_then_d' else 'D-then-G'}, {len(runs[f'jax64 {order}'][0])} steps (f64)"
        (j_hist, j_final), (t_hist, t_final) = runs[f"jax64 {order}"], runs[f"torch64 {order}"]
        for i, metric in enumerate(METRICS):
            rows.append(diff_row(group, f"per-step {metric}", j_hist[:, i], t_hist[:, i], STEP_TOL))
        for label in ("G", "D"):
            keys = [k for k in t_final if k.startswith(label + ".") and not k.endswith("num_batches_tracked")]
            rows += state_rows(group, f"final {label}", {k[2:]: j_final[k] for k in keys},
                               {k[2:]: t_final[k] for k in keys}, [k[2:] for k in keys], FINAL_TOL)
    ref, init = runs["torch64 ref"], runs["init"]
    group = "float32 G-then-D vs a float64 reference"
    # Step 1's metrics come from the initial weights alone (G-then-D updates nothing before them),
    # so they are forward quantities that float32 reproduces to FORWARD_TOL, unlike later steps.
    rows.append(diff_row(group, "step 1 metrics (initial weights): JAX f32", runs["jax32"][0][0], ref[0][0],
                         FORWARD_TOL, note=f"PyTorch f32 {_diff(runs['torch32'][0][0], ref[0][0])[0]:.1e}"))
    names = ("per-step metrics, max |diff|", "per-step metrics, mean |diff|", "final params, |diff| / |moved|")
    for name, j_dist, t_dist in zip(names, _distances(runs["jax32"], ref, init), _distances(runs["torch32"], ref, init)):
        rows.append(Row(group, f"{name}: JAX / PyTorch", j_dist / max(t_dist, 1e-12), FLOAT32_RATIO, "ratio",
                        note=f"JAX f32 {j_dist:.2e}, PyTorch f32 {t_dist:.2e}"))
    return rows


# --- conversion and the tutorial's file -----------------------------------------------------

def round_trip_rows(seed: int):
    """flax -> torch -> flax and torch -> flax -> torch reproduce every value bit for bit."""
    G, D = reference_models(seed)
    rows = []
    rng = np.random.default_rng(seed)
    for (label, model, _, _, _), net in zip(_networks(), (G, D)):
        variables = torch_to_flax(net.state_dict(), model)
        variables["batch_stats"] = jax.tree.map(  # statistics that are not all 0 and 1
            lambda v: jnp.asarray(rng.uniform(0.5, 1.5, v.shape), v.dtype), variables["batch_stats"])
        back = torch_to_flax(flax_to_torch(variables, model), model)
        flat = lambda tree: dict(jax.tree_util.tree_flatten_with_path(tree)[0])
        ok = jax.tree.structure(back) == jax.tree.structure(variables)
        worst = max(_diff(back_leaf, flat(variables)[p])[0] for p, back_leaf in flat(back).items()) if ok else math.inf
        rows.append(Row("round trip (exact)", f"{label} flax -> torch -> flax", worst, 0.0, "exact", worst))
        state = net.state_dict()
        again = flax_to_torch(torch_to_flax(state, model), model)
        worst = max(_diff(again[k], state[k])[0] for k in state if not k.endswith("num_batches_tracked"))
        rows.append(Row("round trip (exact)", f"{label} torch -> flax -> torch", worst, 0.0, "exact", worst))
    return rows


def tutorial_file_rows(path: str, seed: int, batch: int = 16):
    """The tutorial author's trained D from `path`: JAX logits = PyTorch logits, in eval mode
    (its running statistics) and train mode (batch statistics), on digit-like images."""
    net = load_tutorial_module(path).float()
    model = "discriminator" if isinstance(net, reference.Discriminator) else "generator"
    variables = torch_to_flax(net.state_dict(), model)
    rng = np.random.default_rng(seed)
    x = digit_like(rng, batch).astype(np.float32) if model == "discriminator" else \
        rng.standard_normal((batch, LATENTS, 1, 1)).astype(np.float32)
    flax_module = Discriminator() if model == "discriminator" else Generator(LATENTS)
    x_jax = jnp.asarray(x.transpose(0, 2, 3, 1) if model == "discriminator" else x[:, :, 0, 0])
    rows = []
    with highest_precision(), torch.no_grad():
        for mode, train in (("eval", False), ("train", True)):
            net.train(train)
            t_out = net(torch.from_numpy(x))
            j_out = flax_module.apply(variables, x_jax, train=train, mutable=["batch_stats"] if train else False)
            j_out = j_out[0] if train else j_out
            rows.append(diff_row("tutorial's trained file (f32)", f"{model} output, {mode} mode", _nchw(j_out),
                                 t_out, FORWARD_TOL, note=f"max |torch| {float(t_out.abs().max()):.2f}"))
    return rows
