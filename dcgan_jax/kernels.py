"""Drop-in layers for `models.Kernels`: the same values as flax's layers, in forms XLA compiles to
faster programs for this model's shapes. Why each form exists, and what it measured, is in
docs/performance.md; tests/test_kernels.py checks every form against flax's layers in float64.

`select(name)` picks a set once per run (config.kernels):
- "flax": models.py's plain layers (nn.Conv, nn.ConvTranspose, models.BatchNorm);
- "xla": transposed convolutions in phases, patch-matmul convolutions where the kernel is wider
  than the output, the closed-form BatchNorm gradient: the forms faster under XLA's GPU lowering;
- "cpu": those, with the XLA:CPU forms below (`CPU_FORMS`);
- "auto": "cpu" where JAX's default backend is the CPU, else "xla".
"""
import dataclasses
import functools
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from . import models
from .config import KERNELS



def _jaxlib_version() -> tuple:
    from jaxlib import version
    return tuple(int(part) for part in version.__version__.split(".")[:2] if part.isdigit())


# XLA:CPU hands convolutions to YNNPACK (jaxlib >= 0.9, which alone knows the option), whose weight
# gradients are slow for this model's shapes; YNNPACK for dots only keeps Eigen's convolutions.
# Other backends ignore it. jax.jit keywords for the training step's programs.
STEP_JIT_KWARGS = ({"compiler_options": {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}}
                   if _jaxlib_version() >= (0, 9) else {})


def resolve(name: str) -> str:
    """The kernel set `name` stands for on this process's default backend."""
    if name not in KERNELS:
        raise ValueError(f"kernels={name!r}: must be one of {', '.join(KERNELS)}")
    if name == "auto":
        return "cpu" if jax.default_backend() == "cpu" else "xla"
    return name


def select(name: str) -> models.Kernels:
    return {"flax": models.Kernels(), "xla": XLA, "cpu": CPU}[resolve(name)]


# --- convolution forms ----------------------------------------------------------------------

def pad_hw(x, padding):
    """Zero-pad the spatial axes of NHWC `x`; padding = ((lo, hi), (lo, hi)), negative crops."""
    return lax.pad(x, jnp.zeros((), x.dtype), ((0, 0, 0), *((lo, hi, 0) for lo, hi in padding), (0, 0, 0)))


def lax_conv(x, kernel, stride: int, padding):
    return lax.conv_general_dilated(x, kernel, (stride, stride), padding,
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _patches_conv(x, kernel, stride: int):
    """VALID convolution as one matmul over the kernel's patches (N, H', W', k_h * k_w * C)."""
    k_h, k_w, c_in, c_out = kernel.shape
    out_h, out_w = (x.shape[1] - k_h) // stride + 1, (x.shape[2] - k_w) // stride + 1
    patches = jnp.concatenate([
        x[:, i:i + stride * (out_h - 1) + 1:stride, j:j + stride * (out_w - 1) + 1:stride]
        for i in range(k_h) for j in range(k_w)], axis=-1)
    return jnp.dot(patches, kernel.reshape(k_h * k_w * c_in, c_out))


def padded_patches_conv(x, kernel, stride: int, padding):
    return _patches_conv(pad_hw(x, padding), kernel, stride)


def dense_conv(x, kernel, stride: int, padding):
    """The convolution as one matmul with its (H*W*C_in, H'*W'*C_out) matrix, gathered from the
    kernel: no multiplications by padding, which is most of a small input's patches."""
    n, h, w, c_in = x.shape
    k_h, k_w, _, c_out = kernel.shape
    (lo_h, hi_h), (lo_w, hi_w) = padding
    out_h, out_w = (h + lo_h + hi_h - k_h) // stride + 1, (w + lo_w + hi_w - k_w) // stride + 1

    def taps(size, out, lo, k):  # kernel tap joining input i to output o; k (a zero tap) if none
        tap = np.arange(size)[:, None] - stride * np.arange(out)[None, :] + lo
        return np.where((tap >= 0) & (tap < k), tap, k)
    kernel = jnp.pad(kernel, ((0, 1), (0, 1), (0, 0), (0, 0)))
    matrix = kernel[taps(h, out_h, lo_h, k_h)[:, None, :, None], taps(w, out_w, lo_w, k_w)[None, :, None, :]]
    matrix = matrix.transpose(0, 1, 4, 2, 3, 5).reshape(h * w * c_in, out_h * out_w * c_out)
    return jnp.dot(x.reshape(n, -1), matrix).reshape(n, out_h, out_w, c_out)


def _sum_shifted_planes(z, kernel_size, padding):
    """out[n, i, j] = sum over taps (a, b) of padded z[n, i + a, j + b, a * k_w + b]."""
    k_h, k_w = kernel_size
    z = pad_hw(z, padding)
    out_h, out_w = z.shape[1] - k_h + 1, z.shape[2] - k_w + 1
    return sum(z[:, a:a + out_h, b:b + out_w, a * k_w + b] for a in range(k_h) for b in range(k_w))[..., None]


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def tap_matmul_conv(x, kernel, padding):
    """Stride-1 convolution to one channel as a matmul of the input's pixels with the kernel's
    taps, then a shifted sum of the k_h * k_w planes. The gradients are matmuls of the same form,
    the weight gradient contracting the pixels of both operands in place."""
    k_h, k_w, c_in, _ = kernel.shape
    planes = jnp.dot(x.reshape(-1, c_in), kernel.reshape(k_h * k_w, c_in).T)
    return _sum_shifted_planes(planes.reshape(*x.shape[:3], k_h * k_w), (k_h, k_w), padding)


def _tap_matmul_conv_fwd(x, kernel, padding):
    return tap_matmul_conv(x, kernel, padding), (x, kernel)


def _tap_matmul_conv_bwd(padding, residuals, dy):
    x, kernel = residuals
    k_h, k_w, c_in, _ = kernel.shape
    planes = jax.ShapeDtypeStruct((*x.shape[:3], k_h * k_w), dy.dtype)
    d_planes = jax.linear_transpose(lambda z: _sum_shifted_planes(z, (k_h, k_w), padding), planes)(dy)[0]
    d_planes = d_planes.reshape(-1, k_h * k_w)
    dx = jnp.dot(d_planes, kernel.reshape(k_h * k_w, c_in)).reshape(x.shape)
    dw = lax.dot_general(d_planes, x.reshape(-1, c_in), (((0,), (0,)), ((), ())))
    return dx, dw.reshape(kernel.shape)


tap_matmul_conv.defvjp(_tap_matmul_conv_fwd, _tap_matmul_conv_bwd)


def weight_grad_from_padded_input(x, dy, kernel, padding, stride: int = 1):
    return jax.vjp(lambda w: lax_conv(pad_hw(x, padding), w, stride, "VALID"), kernel)[1](dy)[0]


def weight_grad_as_conv_of_dy(x, dy, kernel, padding):
    """A stride-1 weight gradient as a convolution of dy (its channels as the batch) with x as the
    kernel, so that XLA:CPU makes dy batch-minor instead of the larger padded input."""
    (k_h, k_w), ((lo_h, hi_h), (lo_w, hi_w)) = kernel.shape[:2], padding
    out = lax.conv_general_dilated(dy, x, (1, 1), ((k_h - 1 - lo_h, k_h - 1 - hi_h), (k_w - 1 - lo_w, k_w - 1 - hi_w)),
                                   dimension_numbers=("CHWN", "IHWO", "NHWC"))
    return out[:, ::-1, ::-1, :].transpose(1, 2, 3, 0)


def sum_as_dot(a):
    """Sum over every axis but the last, as two matrix-vector products with ones: batch first,
    then pixels (sums of N, then of H*W terms, not one of N*H*W)."""
    ones = lambda n: jnp.ones(n, a.dtype)
    per_pixel = jnp.dot(ones(a.shape[0]), a.reshape(a.shape[0], -1), precision=lax.Precision.HIGHEST)
    per_pixel = per_pixel.reshape(-1, a.shape[-1])
    return jnp.dot(ones(per_pixel.shape[0]), per_pixel, precision=lax.Precision.HIGHEST)


def divide_by_runtime_one(activation, like):
    """`activation` unchanged, divided by ones XLA cannot fold (`like` * 0 + 1, exact unless `like`
    is inf or NaN). XLA:CPU does not duplicate a division into its consumers, so the activation is
    stored once instead of recomputed, with a strided read of its input, in every consumer."""
    return activation / lax.stop_gradient(like * 0 + 1)


@dataclasses.dataclass(frozen=True)
class Forms:
    """The choices that differ between the "xla" and "cpu" sets, one function each."""
    small_input_conv: Callable       # (x, kernel, stride, padding): input no larger than the kernel
    single_output_conv: Callable     # (x, kernel, padding): stride 1, one output channel
    stride1_weight_grad: Callable    # (x, dy, kernel, padding): output larger than the input
    channel_sum: Callable            # (a): sum over all axes but the last
    stored_once: Callable            # (activation, like): the BatchNorm output


XLA_FORMS = Forms(small_input_conv=padded_patches_conv,
                  single_output_conv=lambda x, kernel, padding: lax_conv(x, kernel, 1, padding),
                  stride1_weight_grad=weight_grad_from_padded_input,
                  channel_sum=lambda a: a.sum(tuple(range(a.ndim - 1))),
                  stored_once=lambda activation, like: activation)
CPU_FORMS = Forms(small_input_conv=dense_conv, single_output_conv=tap_matmul_conv,
                  stride1_weight_grad=weight_grad_as_conv_of_dy, channel_sum=sum_as_dot,
                  stored_once=divide_by_runtime_one)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv_padded_input_grad(x, kernel, stride: int, padding, forms: Forms):
    return lax_conv(x, kernel, stride, padding)


def _conv_padded_input_grad_fwd(x, kernel, stride, padding, forms):
    return lax_conv(x, kernel, stride, padding), (x, kernel)


def _conv_padded_input_grad_bwd(stride, padding, forms, residuals, dy):
    x, kernel = residuals
    dx = jax.vjp(lambda x: lax_conv(x, kernel, stride, padding), x)[1](dy)[0]
    if stride != 1 or any(k - 1 - p < 0 for k, pair in zip(kernel.shape, padding) for p in pair):
        return dx, weight_grad_from_padded_input(x, dy, kernel, padding, stride)
    return dx, forms.stride1_weight_grad(x, dy, kernel, padding)


_conv_padded_input_grad.defvjp(_conv_padded_input_grad_fwd, _conv_padded_input_grad_bwd)


def conv(x, kernel, stride: int, padding, forms: Forms):
    """Convolution, NHWC x HWIO, padding ((lo, hi), (lo, hi)) (negative crops), in the form for
    its shape (docs/performance.md):
    - a kernel wider than the output: one matmul over the padded patches or, for an input no
      larger than the kernel, `forms.small_input_conv`;
    - one output channel at stride 1: `forms.single_output_conv`;
    - an output larger than the input: lax's convolution with `forms.stride1_weight_grad`;
    - otherwise lax's convolution.
    """
    crop = tuple((min(lo, 0), min(hi, 0)) for lo, hi in padding)
    if any(c for pair in crop for c in pair):
        x = pad_hw(x, crop)
    padding = tuple((max(lo, 0), max(hi, 0)) for lo, hi in padding)
    size = x.shape[1:3]
    out = [(n + lo + hi - k) // stride + 1 for n, (lo, hi), k in zip(size, padding, kernel.shape)]
    if any(k > o for k, o in zip(kernel.shape, out)):
        if size[0] * size[1] > kernel.shape[0] * kernel.shape[1]:
            return padded_patches_conv(x, kernel, stride, padding)
        return forms.small_input_conv(x, kernel, stride, padding)
    if kernel.shape[-1] == 1 and stride == 1:
        return forms.single_output_conv(x, kernel, padding)
    if any(o > n for o, n in zip(out, size)):
        return _conv_padded_input_grad(x, kernel, stride, padding, forms)
    return lax_conv(x, kernel, stride, padding)


def _flax_conv(lhs, rhs, window_strides, padding, *, forms: Forms, **unused):
    """nn.Conv's `conv_general_dilated` hook (the models use square strides, no dilation)."""
    assert window_strides[0] == window_strides[1], window_strides
    return conv(lhs, rhs, window_strides[0], tuple(map(tuple, padding)), forms)


def _phase(size: int, k: int, stride: int, pad: int, a: int):
    """Output phase `a` (outputs o = stride*m + a) of a dilated convolution along one axis: the
    kernel taps that meet real (non-inserted) inputs, r::stride, and the padding of the undilated
    input that lines them up: out[m] = sum_u x[m - lo + u] * kernel[r + stride*u]."""
    r = (pad - a) % stride
    lo = (pad - a - r) // stride
    taps = len(range(r, k, stride))
    outputs = ((size - 1) * stride + 2 * pad - k + 2) // stride
    return slice(r, None, stride), (lo, outputs + taps - lo - size - 1)


def conv_transpose(x, kernel, stride: int, pad: int, forms: Forms):
    """nn.ConvTranspose's value (the stride-dilated input convolved with `pad` = k - 1 - p padding)
    as stride**2 stride-1 convolutions of the undilated input, one per output phase with only the
    kernel taps that meet real inputs, interleaved: no multiplications by inserted zeros, and no
    dilated convolution in the weight gradient. At stride 1, or an output size the stride does
    not divide, the dilated convolution itself."""
    size = x.shape[1:3]
    out = [(n - 1) * stride + 2 * pad - kernel.shape[d] + 2 for d, n in enumerate(size)]
    if stride == 1:
        return conv(x, kernel, 1, ((pad, pad),) * 2, forms)
    if any(o % stride for o in out):
        return lax.conv_general_dilated(x, kernel, (1, 1), ((pad, pad),) * 2, lhs_dilation=(stride,) * 2,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))
    phases = [[_phase(n, kernel.shape[d], stride, pad, a) for a in range(stride)] for d, n in enumerate(size)]
    rows = [jnp.stack([conv(x, kernel[taps_h, taps_w], 1, (pad_h, pad_w), forms) for taps_w, pad_w in phases[1]],
                      axis=3)
            for taps_h, pad_h in phases[0]]
    y = jnp.stack(rows, axis=2)                     # (N, H', stride, W', stride, C)
    n, h, _, w, _, c = y.shape
    return y.reshape(n, h * stride, w * stride, c)


class ConvTranspose(nn.ConvTranspose):
    """nn.ConvTranspose (its `kernel` parameter, no bias, square stride, symmetric explicit
    padding, transpose_kernel=False) computed by `conv_transpose`."""
    forms: Forms = XLA_FORMS

    @nn.compact
    def __call__(self, x):
        if self.use_bias or self.transpose_kernel:
            raise ValueError("kernels.ConvTranspose: use_bias and transpose_kernel are not supported")
        kernel = self.param("kernel", self.kernel_init, (*self.kernel_size, x.shape[-1], self.features),
                            self.param_dtype)
        x, kernel = nn.dtypes.promote_dtype(x, kernel, dtype=self.dtype)
        (pad, _), _ = self.padding
        return conv_transpose(x, kernel, self.strides[0], pad, self.forms)


def _batch_moments(x, channel_sum):
    """Per-channel mean and biased variance over N, H, W, reduced in at least float32."""
    xs = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    n = x.size // x.shape[-1]
    mean = channel_sum(xs) / n
    return mean, channel_sum(jnp.square(xs - mean)) / n


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _batch_norm(x, scale, bias, epsilon, dtype, channel_sum):
    """Train-mode BatchNorm with the closed-form gradient (two reductions and one elementwise
    pass), where autodiff through the two-pass variance makes XLA run more."""
    return models.normalize(x, *_batch_moments(x, channel_sum), scale, bias, epsilon, dtype)


def _batch_norm_fwd(x, scale, bias, epsilon, dtype, channel_sum):
    mean, var = _batch_moments(x, channel_sum)
    return models.normalize(x, mean, var, scale, bias, epsilon, dtype), (x, mean, var, scale, bias)


def _batch_norm_bwd(epsilon, dtype, channel_sum, residuals, dy):
    x, mean, var, scale, bias = residuals
    n = x.size // x.shape[-1]
    rstd = lax.rsqrt(var + epsilon)
    x_hat = (x.astype(mean.dtype) - mean) * rstd
    dy = dy.astype(mean.dtype)
    sum_dy, sum_dy_x_hat = channel_sum(dy), channel_sum(dy * x_hat)
    dx = (scale * rstd / n).astype(mean.dtype) * (n * dy - sum_dy - x_hat * sum_dy_x_hat)
    return dx.astype(x.dtype), sum_dy_x_hat.astype(scale.dtype), sum_dy.astype(bias.dtype)


_batch_norm.defvjp(_batch_norm_fwd, _batch_norm_bwd)


class BatchNorm(models.BatchNorm):
    """models.BatchNorm with the closed-form gradient, `forms.channel_sum` reductions and the
    output `forms.stored_once`. The statistics it also returns for the running averages are the
    same reductions as inside `_batch_norm`: XLA computes them once."""
    forms: Forms = XLA_FORMS

    def moments(self, x):
        return _batch_moments(x, self.forms.channel_sum)

    def normalize_batch(self, x, mean, var, scale, bias, dtype):
        y = _batch_norm(x, scale, bias, self.epsilon, dtype, self.forms.channel_sum)
        return self.forms.stored_once(y, x)


def _kernels(forms: Forms) -> models.Kernels:
    return models.Kernels(conv=functools.partial(nn.Conv, conv_general_dilated=functools.partial(_flax_conv, forms=forms)),
                          conv_transpose=functools.partial(ConvTranspose, forms=forms),
                          batch_norm=functools.partial(BatchNorm, forms=forms))


XLA = _kernels(XLA_FORMS)
CPU = _kernels(CPU_FORMS)
