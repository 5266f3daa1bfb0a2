"""Weights between the tutorial's PyTorch state_dicts and dcgan_jax's flax variables, both ways.

Layouts (PyTorch -> flax):
  Conv2d.weight          (out, in, kh, kw) -> Conv.kernel (kh, kw, in, out)
  ConvTranspose2d.weight (in, out, kh, kw) -> ConvTranspose.kernel (kh, kw, in, out), spatially
                         flipped: dcgan_jax writes PyTorch's transposed convolution as a plain
                         convolution of the dilated input (transpose_kernel=False), which needs the
                         kernel that PyTorch's gradient-of-conv formulation uses, rotated by 180°.
  Linear.weight          (out, in) -> Dense.kernel (in, out)
  BatchNorm2d            weight/bias -> params scale/bias; running_mean/running_var ->
                         batch_stats mean/var unchanged: both sides store the *unbiased* batch
                         variance in the running average (dcgan_jax.models.BatchNorm does so to
                         match PyTorch). num_batches_tracked has no flax counterpart: with
                         momentum=0.1 PyTorch never reads it, so it is checked and dropped, and
                         `flax_to_torch` writes the value it is given.
Every function is strict: a missing, extra or mis-shaped entry raises ConversionError naming it.
"""
import collections

import jax
import jax.numpy as jnp
import numpy as np
import torch

from dcgan_jax.models import DISCRIMINATOR_BLOCKS, GENERATOR_BLOCKS, Discriminator, Generator

MODELS = ("generator", "discriminator")


class ConversionError(ValueError):
    """A state_dict or variables tree that does not fit the model; the message names the key."""


# kind -> (PyTorch array -> flax array, flax array -> PyTorch array)
_LAYOUTS = {
    "conv": (lambda w: w.transpose(2, 3, 1, 0), lambda k: k.transpose(3, 2, 0, 1)),
    "conv_transpose": (lambda w: w[:, :, ::-1, ::-1].transpose(2, 3, 0, 1),
                       lambda k: k.transpose(2, 3, 0, 1)[:, :, ::-1, ::-1]),
    "dense": (lambda w: w.T, lambda k: k.T),
    "vector": (lambda v: v, lambda v: v),
}


def _entries(model: str):
    """(torch key, flax collection, flax path, layout kind) in the tutorial's state_dict order."""
    def block(torch_name, flax_name, transpose):
        conv = ("conv_transpose" if transpose else "conv")
        yield f"{torch_name}.0.weight", "params", (flax_name, "conv", "kernel"), conv
        for t, collection, f in (("weight", "params", "scale"), ("bias", "params", "bias"),
                                 ("running_mean", "batch_stats", "mean"),
                                 ("running_var", "batch_stats", "var")):
            yield f"{torch_name}.1.{t}", collection, (flax_name, "bn", f), "vector"
        yield f"{torch_name}.1.num_batches_tracked", None, None, None

    if model == "generator":
        for flax_name, _, _, _, transpose in GENERATOR_BLOCKS:
            yield from block(flax_name.replace("_", "."), flax_name, transpose)
        yield "layer4.3.weight", "params", ("layer4_3", "kernel"), "conv"
        yield "layer4.3.bias", "params", ("layer4_3", "bias"), "vector"
    elif model == "discriminator":
        for flax_name, _, _, _, transpose in DISCRIMINATOR_BLOCKS:
            yield from block(flax_name.replace("_", "."), flax_name, transpose)
        yield "fc.weight", "params", ("fc", "kernel"), "dense"
        yield "fc.bias", "params", ("fc", "bias"), "vector"
    else:
        raise ConversionError(f"model={model!r}: must be one of {', '.join(MODELS)}")


def _flax_shapes(model: str, latent_dim: int):
    module = Generator(latent_dim) if model == "generator" else Discriminator()
    x = jnp.zeros((1, latent_dim) if model == "generator" else (1, 28, 28, 1))
    shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), x, train=False))
    return {c: {p: a.shape for p, a in _flatten(tree)} for c, tree in shapes.items()}


def _flatten(tree, prefix=()):
    for k, v in tree.items():
        if isinstance(v, dict) or hasattr(v, "items"):
            yield from _flatten(v, prefix + (k,))
        else:
            yield prefix + (k,), v


def _numpy(value):
    return value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)


def _latent_dim(model: str, first_kernel_shape, axis: int):
    """The generator's latent size is its first kernel's input channels; D has none."""
    if model == "generator" and len(first_kernel_shape) == 4:
        return first_kernel_shape[axis]
    return 10


def torch_to_flax(state_dict, model: str):
    """A tutorial state_dict (tensors or arrays) -> {"params": ..., "batch_stats": ...} of jax
    arrays in the state_dict's dtype (float64 needs jax_enable_x64)."""
    entries = list(_entries(model))
    _check_keys(set(state_dict), {e[0] for e in entries}, "state_dict")
    shapes = _flax_shapes(model, _latent_dim(model, np.shape(_numpy(state_dict[entries[0][0]])), 0))
    variables = {"params": {}, "batch_stats": {}}
    for key, collection, path, kind in entries:
        value = _numpy(state_dict[key])
        if collection is None:
            if value.size != 1:
                raise ConversionError(f"state_dict[{key!r}]: expected a scalar counter, got shape {value.shape}")
            continue
        to_flax, to_torch = _LAYOUTS[kind]
        expected = _torch_shape(shapes[collection][path], to_torch)
        if value.shape != expected:
            raise ConversionError(f"state_dict[{key!r}]: shape {tuple(value.shape)}, expected {expected}")
        node = variables[collection]
        for name in path[:-1]:
            node = node.setdefault(name, {})
        # a copy: .numpy() shares the tensor's memory, and jax < 0.10.1 on CPU keeps using it, so
        # torch's in-place updates (BatchNorm statistics in train mode) would show up in flax
        node[path[-1]] = jnp.array(to_flax(value))
    return variables


def flax_to_torch(variables, model: str, num_batches_tracked: int = 0):
    """flax {"params", "batch_stats"} -> an OrderedDict state_dict of CPU tensors that the
    tutorial's module loads with strict=True. `num_batches_tracked` fills every BatchNorm counter
    (the tutorial's discriminator saw 3 forward passes per iteration, its generator 1)."""
    entries = list(_entries(model))
    flat = {}
    for collection in ("params", "batch_stats"):
        if collection not in variables:
            raise ConversionError(f"variables: missing collection {collection!r}")
        flat.update({(collection,) + p: v for p, v in _flatten(variables[collection])})
    extra_collections = set(variables) - {"params", "batch_stats"}
    if extra_collections:
        raise ConversionError(f"variables: unexpected collection(s) {sorted(extra_collections)}")
    names = lambda keys: {"/".join(k) for k in keys}
    _check_keys(names(flat), names((c,) + p for _, c, p, _ in entries if c), "variables")
    shapes = _flax_shapes(model, _latent_dim(model, np.shape(flat[("params",) + entries[0][2]]), 2))
    state_dict = collections.OrderedDict()
    for key, collection, path, kind in entries:
        if collection is None:
            state_dict[key] = torch.tensor(num_batches_tracked, dtype=torch.long)
            continue
        value = np.asarray(flat[(collection,) + path])
        if value.shape != shapes[collection][path]:
            raise ConversionError(f"variables[{'/'.join((collection,) + path)!r}]: shape {value.shape}, "
                                  f"expected {shapes[collection][path]}")
        state_dict[key] = torch.from_numpy(np.array(_LAYOUTS[kind][1](value)))  # a writable copy
    return state_dict


def _torch_shape(flax_shape, to_torch):
    return to_torch(np.empty(flax_shape, np.int8)).shape


def _check_keys(got, expected, what):
    missing, extra = sorted(expected - got), sorted(got - expected)
    if missing:
        raise ConversionError(f"{what}: missing key(s) {', '.join(missing)}")
    if extra:
        raise ConversionError(f"{what}: unexpected key(s) {', '.join(extra)}")
