"""The tutorial's generator and discriminator as flax.linen modules (NHWC).

Layer for layer what ../shared/REFERENCE.md tabulates. Submodule names follow the PyTorch
state_dict nesting (`layer1_0` is `layer1.0`, `conv_3` is `conv.3`) so weight conversion in
`parity/` is a renaming plus layout changes.
"""
import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import flax.linen as nn
from jax import lax

Dtype = Any

# PyTorch's ConvTranspose2d(k, s, padding=p) is a convolution of the s-dilated input with the
# spatially flipped kernel and (k - 1 - p) padding on each side; the tutorial always uses
# p = (k - 1) // 2 (its TCBR ignores the padding argument it is given).
conv_init = nn.initializers.normal(0.02)


def bn_scale_init(key, shape, dtype=jnp.float32):
    return 1.0 + 0.02 * jax.random.normal(key, shape, dtype)


def torch_default_uniform(fan_in: int):
    """PyTorch's default bias init (and Linear weight init): U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / fan_in ** 0.5

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def on_platform(platform, operands, cpu, default):
    """cpu(*operands) in a program XLA:CPU compiles, default(*operands) in any other. A known
    `platform` (a jax Device.platform: "cpu", "gpu", "tpu") chooses while tracing; None leaves the
    choice to lowering (lax.platform_dependent), which traces and differentiates both forms: 40 %
    of the training step's trace time (benchmarks/NOTES.md, "Sixth CPU session")."""
    if platform is None:
        return lax.platform_dependent(*operands, cpu=cpu, default=default)
    return (cpu if platform == "cpu" else default)(*operands)


def pad_hw(x, padding):
    """Zero-pad the spatial axes of NHWC `x`; padding = ((lo, hi), (lo, hi)), negative crops."""
    return lax.pad(x, jnp.zeros((), x.dtype), ((0, 0, 0), *((lo, hi, 0) for lo, hi in padding), (0, 0, 0)))


def _lax_conv(x, kernel, stride: int, padding):
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


def _dense_conv(x, kernel, stride: int, padding):
    """The convolution as one matmul with its (H*W*C_in, H'*W'*C_out) matrix, gathered from the
    kernel: no multiplications by padding (3/4 of the patch form's for layer2_0)."""
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
def _single_output_conv(x, kernel, padding):
    """Stride-1 convolution to one channel (layer4_3) as a matmul of the input's pixels with the
    kernel's taps, then a shifted sum of the k_h * k_w planes. The gradients are matmuls of the
    same form, the weight gradient contracting the pixels of both operands in place."""
    k_h, k_w, c_in, _ = kernel.shape
    planes = jnp.dot(x.reshape(-1, c_in), kernel.reshape(k_h * k_w, c_in).T)
    return _sum_shifted_planes(planes.reshape(*x.shape[:3], k_h * k_w), (k_h, k_w), padding)


def _single_output_conv_fwd(x, kernel, padding):
    return _single_output_conv(x, kernel, padding), (x, kernel)


def _single_output_conv_bwd(padding, residuals, dy):
    x, kernel = residuals
    k_h, k_w, c_in, _ = kernel.shape
    planes = jax.ShapeDtypeStruct((*x.shape[:3], k_h * k_w), dy.dtype)
    d_planes = jax.linear_transpose(lambda z: _sum_shifted_planes(z, (k_h, k_w), padding), planes)(dy)[0]
    d_planes = d_planes.reshape(-1, k_h * k_w)
    dx = jnp.dot(d_planes, kernel.reshape(k_h * k_w, c_in)).reshape(x.shape)
    dw = lax.dot_general(d_planes, x.reshape(-1, c_in), (((0,), (0,)), ((), ())))
    return dx, dw.reshape(kernel.shape)


_single_output_conv.defvjp(_single_output_conv_fwd, _single_output_conv_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv_padded_input_grad(x, kernel, stride: int, padding, platform):
    return _lax_conv(x, kernel, stride, padding)


def _conv_padded_input_grad_fwd(x, kernel, stride, padding, platform):
    return _lax_conv(x, kernel, stride, padding), (x, kernel)


def _weight_grad_from_padded_input(x, dy, kernel, stride, padding):
    return jax.vjp(lambda w: _lax_conv(pad_hw(x, padding), w, stride, "VALID"), kernel)[1](dy)[0]


def _weight_grad_as_conv_of_dy(x, dy, kernel, padding):
    """A stride-1 weight gradient as a convolution of dy (its channels as the batch) with x as the
    kernel: XLA:CPU then makes dy batch-minor (7x7x128 for layer3_0) instead of the padded
    input (10x10x256): CPU step -1 % (benchmarks/NOTES.md, CPU attempt 14)."""
    (k_h, k_w), ((lo_h, hi_h), (lo_w, hi_w)) = kernel.shape[:2], padding
    out = lax.conv_general_dilated(dy, x, (1, 1), ((k_h - 1 - lo_h, k_h - 1 - hi_h), (k_w - 1 - lo_w, k_w - 1 - hi_w)),
                                   dimension_numbers=("CHWN", "IHWO", "NHWC"))
    return out[:, ::-1, ::-1, :].transpose(1, 2, 3, 0)


def stride1_weight_grad(x, dy, kernel, padding, *, platform=None):
    """The weight gradient of a stride-1 convolution whose padding is at most k - 1 (layer3_0)."""
    return on_platform(platform, (x, dy), cpu=lambda x, dy: _weight_grad_as_conv_of_dy(x, dy, kernel, padding),
                       default=lambda x, dy: _weight_grad_from_padded_input(x, dy, kernel, 1, padding))


def _conv_padded_input_grad_bwd(stride, padding, platform, residuals, dy):
    x, kernel = residuals
    dx = jax.vjp(lambda x: _lax_conv(x, kernel, stride, padding), x)[1](dy)[0]
    if stride != 1 or any(k - 1 - p < 0 for k, pair in zip(kernel.shape, padding) for p in pair):
        return dx, _weight_grad_from_padded_input(x, dy, kernel, stride, padding)
    return dx, stride1_weight_grad(x, dy, kernel, padding, platform=platform)


_conv_padded_input_grad.defvjp(_conv_padded_input_grad_fwd, _conv_padded_input_grad_bwd)


def conv(x, kernel, stride: int = 1, padding=0, platform=None):
    """Convolution, NHWC x HWIO; `padding` zeros on each side, or ((lo, hi), (lo, hi)), negative
    crops; `platform` as for on_platform. Computed in the form XLA lowers best for the shape
    (benchmarks/NOTES.md, CPU attempts 6, 7 and 9; 2 cores, batch 100):

    - a kernel wider than the output (layer1_1, layer2_0, D's conv_4: 2x2 and 3x3 outputs): one
      matmul over patches. XLA:CPU swaps such a convolution's operands into its generic loop,
      20x slower than PyTorch (layer2_0 forward+backward: 181 ms vs 9 ms). On CPU, where the
      input has no more pixels than the kernel (layer1_1, layer2_0), one matmul with the
      convolution's dense matrix instead: layer2_0's patches are 3/4 padding (20 -> 6 ms; CPU
      attempt 13);
    - one output channel (layer4_3): a matmul to per-tap planes and their shifted sum; XLA:CPU's
      convolution runs it at ~20 GFLOP/s and transposes the 28x28x64 input for its weight
      gradient (CPU step -1 %; benchmarks/NOTES.md, CPU attempt 12; other backends: lax);
    - an output larger than the input (layer3_0, 6x6 -> 7x7): the weight gradient from the
      explicitly padded input; XLA:CPU runs the padded window's in its generic loop (852 ms vs
      30 ms);
    - otherwise lax's padded convolution: its input gradient covers only the real pixels, and its
      weight gradient's transposed copy of the input has no pad folded in (a pad+transpose loop
      fusion: 30 ms instead of 15-20 for a 28x28x64 layer), and is shared by the four phases of a
      transposed layer.
    """
    if isinstance(padding, int):
        padding = ((padding, padding),) * 2
    crop = tuple((min(lo, 0), min(hi, 0)) for lo, hi in padding)
    if any(c for pair in crop for c in pair):
        x = pad_hw(x, crop)
    padding = tuple((max(lo, 0), max(hi, 0)) for lo, hi in padding)
    size = x.shape[1:3]
    out = [(n + lo + hi - k) // stride + 1 for n, (lo, hi), k in zip(size, padding, kernel.shape)]
    if any(k > o for k, o in zip(kernel.shape, out)):
        if size[0] * size[1] > kernel.shape[0] * kernel.shape[1]:
            return _padded_patches_conv(x, kernel, stride, padding)
        return small_input_conv(x, kernel, stride, padding, platform=platform)
    if kernel.shape[-1] == 1 and stride == 1:
        return single_output_conv(x, kernel, padding, platform=platform)
    if any(o > n for o, n in zip(out, size)):
        return _conv_padded_input_grad(x, kernel, stride, padding, platform)
    return _lax_conv(x, kernel, stride, padding)


# The choices of conv() that depend on the backend, one named function each, called with a keyword
# `platform` (benchmarks.ab_step swaps them to measure a form on another backend): XLA:CPU's form
# where it measured faster there, lax's or the patch form elsewhere.
def _padded_patches_conv(x, kernel, stride, padding):
    return _patches_conv(pad_hw(x, padding), kernel, stride)


def small_input_conv(x, kernel, stride, padding, *, platform=None):
    """A convolution whose input has no more pixels than its kernel (layer1_1, layer2_0)."""
    return on_platform(platform, (x, kernel), cpu=lambda x, k: _dense_conv(x, k, stride, padding),
                       default=lambda x, k: _padded_patches_conv(x, k, stride, padding))


def single_output_conv(x, kernel, padding, *, platform=None):
    """A stride-1 convolution to one channel (layer4_3)."""
    return on_platform(platform, (x, kernel), cpu=lambda x, k: _single_output_conv(x, k, padding),
                       default=lambda x, k: _lax_conv(x, k, 1, padding))


def _flax_conv(lhs, rhs, window_strides, padding, platform=None, **unused):
    """nn.Conv's `conv_general_dilated` hook (the models use square strides)."""
    assert window_strides[0] == window_strides[1], window_strides
    return conv(lhs, rhs, window_strides[0], tuple(map(tuple, padding)), platform)


def conv_transpose_dilated(x, kernel, stride: int, pad: int, platform=None):
    """PyTorch's ConvTranspose2d as flax computes it: a stride-1 convolution of the stride-dilated
    input (NHWC) with `kernel` (kh, kw, in, out, PyTorch's weight spatially flipped), `pad` = k-1-p."""
    if stride == 1:
        return conv(x, kernel, 1, pad, platform)
    return lax.conv_general_dilated(x, kernel, (1, 1), ((pad, pad),) * 2, lhs_dilation=(stride,) * 2,
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _phase(size: int, k: int, stride: int, pad: int, a: int):
    """Output phase `a` (outputs o = stride*m + a) of a dilated convolution along one axis: the
    kernel taps that meet real (non-inserted) inputs, r::stride, and the padding of the undilated
    input that lines them up: out[m] = sum_u x[m - lo + u] * kernel[r + stride*u]."""
    r = (pad - a) % stride
    lo = (pad - a - r) // stride
    taps = len(range(r, k, stride))
    outputs = ((size - 1) * stride + 2 * pad - k + 2) // stride
    return slice(r, None, stride), (lo, outputs + taps - lo - size - 1)


def conv_transpose_phased(x, kernel, stride: int, pad: int, platform=None):
    """The same as conv_transpose_dilated, as stride**2 stride-1 convolutions of the undilated input
    (one per output phase, each with only the kernel taps that meet real inputs), interleaved.

    The dilated form multiplies (stride**2 - 1) / stride**2 of its inputs by inserted zeros, and its
    weight gradient is a dilated convolution: XLA:CPU runs it ~30x slower than a plain one (4.1 s
    for layer4_0 at batch 100 on 2 cores), cuDNN at ~12 TFLOP/s on an H100 (13.7 % of the step).
    Needs an output size divisible by the stride.
    """
    size = x.shape[1:3]
    out = [(n - 1) * stride + 2 * pad - kernel.shape[d] + 2 for d, n in enumerate(size)]
    if any(o % stride for o in out):
        raise ValueError(f"conv_transpose_phased: output size {out} is not a multiple of stride {stride}")
    phases = [[_phase(n, kernel.shape[d], stride, pad, a) for a in range(stride)]
              for d, n in enumerate(size)]
    rows = []
    for taps_h, pad_h in phases[0]:
        rows.append(jnp.stack([
            conv(x, kernel[taps_h, taps_w], 1, (pad_h, pad_w), platform)
            for taps_w, pad_w in phases[1]], axis=3))
    y = jnp.stack(rows, axis=2)                     # (N, H', stride, W', stride, C)
    n, h, _, w, _, c = y.shape
    return y.reshape(n, h * stride, w * stride, c)


class ConvTranspose(nn.Module):
    """nn.ConvTranspose (transpose_kernel=False, explicit padding k-1-p, no bias) with the same
    `kernel` parameter, computed in phases (conv_transpose_phased) where the output size allows.

    Phases beat the dilated form on both backends measured: XLA:CPU 24.6 s -> 4.3 s per step (its
    dilated weight gradients), H100 fp32 2.01 s -> 1.92 s per epoch (cuDNN runs the dilated weight
    gradients at ~12 TFLOP/s). See benchmarks/NOTES.md."""
    features: int
    kernel_size: int
    stride: int
    padding: int                    # PyTorch's p; the dilated form pads k - 1 - p
    kernel_init: Any = conv_init
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    platform: str | None = None     # see on_platform

    @nn.compact
    def __call__(self, x):
        k = self.kernel_size
        kernel = self.param("kernel", self.kernel_init, (k, k, x.shape[-1], self.features),
                            self.param_dtype)
        x, kernel = nn.dtypes.promote_dtype(x, kernel, dtype=self.dtype)
        pad, s = k - 1 - self.padding, self.stride
        out_size = ((x.shape[1] - 1) * s + 2 * pad - k + 2, (x.shape[2] - 1) * s + 2 * pad - k + 2)
        if s == 1 or any(n % s for n in out_size):
            return conv_transpose_dilated(x, kernel, s, pad, self.platform)
        return conv_transpose_phased(x, kernel, s, pad, self.platform)


def _channel_sum_as_dot(a):
    # Batch first (rows of H*W*C contiguous floats), then pixels: two streaming matrix-vector
    # products, and pairwise-like accuracy (sums of N, then of H*W terms, not one of N*H*W).
    ones = lambda n: jnp.ones(n, a.dtype)
    per_pixel = jnp.dot(ones(a.shape[0]), a.reshape(a.shape[0], -1), precision=lax.Precision.HIGHEST)
    per_pixel = per_pixel.reshape(-1, a.shape[-1])
    return jnp.dot(ones(per_pixel.shape[0]), per_pixel, precision=lax.Precision.HIGHEST)


def channel_sum(a, *, platform=None):
    """Sum over every axis but the last (channels).

    On CPU as a matmul with ones: XLA:CPU rewrites a reduction over more than 32 elements into a
    reduce-window tree that runs at ~5 GB/s and never fuses its producer, while its matmul reads
    the same 20 MB in ~1 ms (BatchNorm+ReLU forward+backward at 28x28x64: 39 -> 27 ms;
    benchmarks/NOTES.md, CPU attempt 10). Other backends fuse the reduction.
    """
    return on_platform(platform, (a,), cpu=_channel_sum_as_dot, default=lambda a: a.sum(tuple(range(a.ndim - 1))))


def _batch_stats(x, *, platform=None):
    """Per-channel mean and biased variance over N, H, W, reduced in at least float32."""
    xs = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    n = x.size // x.shape[-1]
    mean = channel_sum(xs, platform=platform) / n
    return mean, channel_sum(jnp.square(xs - mean), platform=platform) / n


def _normalize(x, mean, var, scale, bias, epsilon, dtype):
    mul = jax.lax.rsqrt(var + epsilon) * scale
    return ((x - mean.astype(dtype)) * mul.astype(dtype) + bias.astype(dtype)).astype(dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _batch_norm(x, scale, bias, epsilon, dtype, platform):
    """Train-mode BatchNorm output (batch statistics) with the closed-form gradient: two
    reductions and one elementwise pass, where autodiff through the two-pass variance makes
    XLA:CPU run more (CPU step 1.03 s -> 0.92 s; benchmarks/NOTES.md, CPU attempt 8)."""
    return _normalize(x, *_batch_stats(x, platform=platform), scale, bias, epsilon, dtype)


def _batch_norm_fwd(x, scale, bias, epsilon, dtype, platform):
    mean, var = _batch_stats(x, platform=platform)
    return _normalize(x, mean, var, scale, bias, epsilon, dtype), (x, mean, var, scale, bias)


def _batch_norm_bwd(epsilon, dtype, platform, residuals, dy):
    x, mean, var, scale, bias = residuals
    n = x.size // x.shape[-1]
    rstd = jax.lax.rsqrt(var + epsilon)
    x_hat = (x.astype(mean.dtype) - mean) * rstd
    dy = dy.astype(mean.dtype)
    sum_dy, sum_dy_x_hat = channel_sum(dy, platform=platform), channel_sum(dy * x_hat, platform=platform)
    dx = (scale * rstd / n).astype(mean.dtype) * (n * dy - sum_dy - x_hat * sum_dy_x_hat)
    return dx.astype(x.dtype), sum_dy_x_hat.astype(scale.dtype), sum_dy.astype(bias.dtype)


_batch_norm.defvjp(_batch_norm_fwd, _batch_norm_bwd)


class BatchNorm(nn.Module):
    """BatchNorm2d with PyTorch's semantics, flax's variable names (`scale`, `bias`, `mean`, `var`).

    flax.linen.BatchNorm stores an average of the *biased* batch variance; PyTorch stores the
    unbiased one (n / (n - 1) times larger), which changes every eval-mode output and the saved
    statistics. The tutorial is reproduced exactly, so this module keeps PyTorch's statistic.
    `momentum` uses flax's convention: running = momentum * running + (1 - momentum) * batch,
    i.e. 0.9 here is PyTorch's momentum=0.1. Statistics are reduced in at least float32 so
    bfloat16 compute keeps stable normalisation.
    """
    momentum: float = 0.9
    epsilon: float = 1e-5
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    platform: str | None = None     # see on_platform

    @nn.compact
    def __call__(self, x, train: bool):
        features = x.shape[-1]
        scale = self.param("scale", bn_scale_init, (features,), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (features,), self.param_dtype)
        stats_dtype = jnp.promote_types(self.param_dtype, jnp.float32)
        ra_mean = self.variable("batch_stats", "mean", jnp.zeros, (features,), stats_dtype)
        ra_var = self.variable("batch_stats", "var", jnp.ones, (features,), stats_dtype)
        dtype = self.dtype or x.dtype
        if not train:
            return _normalize(x, ra_mean.value, ra_var.value, scale, bias, self.epsilon, dtype)
        if not self.is_initializing():
            # The same reductions as inside _batch_norm: XLA computes them once.
            mean, var = jax.lax.stop_gradient(_batch_stats(x, platform=self.platform))
            n, m = x.size // features, self.momentum
            ra_mean.value = m * ra_mean.value + (1 - m) * mean.astype(stats_dtype)
            ra_var.value = m * ra_var.value + (1 - m) * (var * n / max(n - 1, 1)).astype(stats_dtype)
        return _batch_norm(x, scale, bias, self.epsilon, dtype, self.platform)


def _divide_by_runtime_one(activation, like):
    return activation / jax.lax.stop_gradient(like * 0 + 1)


def stored_once(activation, like, *, platform=None):
    """`activation` unchanged, computed so that XLA:CPU stores it once instead of recomputing it.

    XLA:CPU fuses cheap elementwise producers into every consumer, so the weight gradient's
    batch-minor transposed copy of a BatchNorm+ReLU output recomputes BatchNorm+ReLU from the
    convolution output, reading it with a 200 KB stride (19-36 ms for a 28x28x64 layer). A float
    division is an op XLA will not duplicate: dividing by a ones tensor it cannot fold (`like` *
    0 + 1, exact unless `like` is inf or NaN) makes the transposed copy read the stored activation
    (6-12 ms), for one division in the pass that stores it (CPU step -4 %; benchmarks/NOTES.md, CPU
    attempt 11). Other backends get the activation as is.
    """
    return on_platform(platform, (activation, like), cpu=_divide_by_runtime_one,
                       default=lambda activation, like: activation)


class ConvBNReLU(nn.Module):
    """The tutorial's CBR / CBLR (identical: plain ReLU) and, with transpose=True, TCBR."""
    features: int
    kernel: int
    stride: int
    transpose: bool = False
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    platform: str | None = None     # see on_platform

    @nn.compact
    def __call__(self, x, train: bool):
        k, p = self.kernel, (self.kernel - 1) // 2
        if self.transpose:
            x = ConvTranspose(self.features, k, self.stride, p, dtype=self.dtype,
                              param_dtype=self.param_dtype, platform=self.platform, name="conv")(x)
        else:
            x = nn.Conv(self.features, (k, k), (self.stride, self.stride), padding=((p, p), (p, p)),
                        use_bias=False, kernel_init=conv_init,
                        conv_general_dilated=functools.partial(_flax_conv, platform=self.platform),
                        dtype=self.dtype, param_dtype=self.param_dtype, name="conv")(x)
        y = BatchNorm(dtype=self.dtype, param_dtype=self.param_dtype, platform=self.platform, name="bn")(x, train)
        return stored_once(nn.relu(y), x, platform=self.platform)


# (name, features, kernel, stride, transpose) in the tutorial's order.
GENERATOR_BLOCKS: Sequence[tuple] = (
    ("layer1_0", 256, 4, 2, True), ("layer1_1", 128, 3, 1, False),
    ("layer2_0", 256, 4, 1, True), ("layer2_1", 256, 4, 2, True),
    ("layer3_0", 128, 4, 1, True), ("layer3_1", 128, 4, 2, True), ("layer3_2", 128, 3, 1, False),
    ("layer4_0", 64, 4, 2, True), ("layer4_1", 64, 3, 1, False), ("layer4_2", 64, 3, 1, False),
)
DISCRIMINATOR_BLOCKS: Sequence[tuple] = (
    ("conv_0", 32, 3, 2, False), ("conv_1", 64, 3, 1, False), ("conv_2", 128, 3, 2, False),
    ("conv_3", 128, 3, 2, False), ("conv_4", 64, 3, 2, False),
)


class Generator(nn.Module):
    """z (N, latent_dim) or (N, 1, 1, latent_dim) -> images (N, 28, 28, 1) in [-1, 1] (Tanh).
    `platform`: where its programs run, if known when tracing (see on_platform)."""
    latent_dim: int = 10
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    platform: str | None = None

    @nn.compact
    def __call__(self, z, train: bool = True):
        if z.ndim == 2:
            z = z[:, None, None, :]
        if z.shape[1:] != (1, 1, self.latent_dim):
            raise ValueError(f"Generator expects z of shape (N, {self.latent_dim}) or "
                             f"(N, 1, 1, {self.latent_dim}), got {z.shape}")
        x = z.astype(self.dtype or z.dtype)
        for name, features, kernel, stride, transpose in GENERATOR_BLOCKS:
            x = ConvBNReLU(features, kernel, stride, transpose, self.dtype, self.param_dtype,
                           self.platform, name=name)(x, train)
        x = nn.Conv(1, (3, 3), padding=((1, 1), (1, 1)), kernel_init=conv_init,
                    conv_general_dilated=functools.partial(_flax_conv, platform=self.platform),
                    bias_init=torch_default_uniform(64 * 3 * 3),
                    dtype=self.dtype, param_dtype=self.param_dtype, name="layer4_3")(x)
        return jnp.tanh(x)


class Discriminator(nn.Module):
    """images (N, 28, 28, 1) -> logits (N, 2); index 1 is "real". `platform` as for Generator."""
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    platform: str | None = None

    @nn.compact
    def __call__(self, x, train: bool = True):
        x = x.astype(self.dtype or x.dtype)
        for name, features, kernel, stride, transpose in DISCRIMINATOR_BLOCKS:
            x = ConvBNReLU(features, kernel, stride, transpose, self.dtype, self.param_dtype,
                           self.platform, name=name)(x, train)
        x = x.mean(axis=(1, 2))  # AdaptiveAvgPool2d(1) + flatten
        return nn.Dense(2, kernel_init=torch_default_uniform(64), bias_init=torch_default_uniform(64),
                        dtype=self.dtype, param_dtype=self.param_dtype, name="fc")(x)
