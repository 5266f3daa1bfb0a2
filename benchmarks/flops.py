"""FLOPs of one training iteration, counted from the layer shapes in dcgan_jax.models.

Convention (as fvcore and most papers): a multiply-add is 2 FLOPs; a convolution costs
2 * N * out_pixels * Cout * Cin * k * k; a transposed convolution costs the same with its *input*
pixels (each input pixel is scattered through the k x k kernel). The backward pass of a layer costs
one forward for the input gradient and one for the weight gradient. BatchNorm, activations, the loss
and Adam are elementwise (< 1% here) and not counted.
"""
import dataclasses

from dcgan_jax.models import DISCRIMINATOR_BLOCKS, GENERATOR_BLOCKS


@dataclasses.dataclass(frozen=True)
class Layer:
    name: str
    macs: int             # multiply-adds per example, forward


def _conv_out(size, k, s, transpose):
    p = (k - 1) // 2
    return (size - 1) * s - 2 * p + k if transpose else (size + 2 * p - k) // s + 1


def generator_layers(latent_dim: int = 10):
    layers, size, cin = [], 1, latent_dim
    for name, cout, k, s, transpose in GENERATOR_BLOCKS:
        out = _conv_out(size, k, s, transpose)
        pixels = size * size if transpose else out * out
        layers.append(Layer(name, pixels * cin * cout * k * k))
        size, cin = out, cout
    layers.append(Layer("layer4_3", size * size * cin * 1 * 3 * 3))
    return layers


def discriminator_layers():
    layers, size, cin = [], 28, 1
    for name, cout, k, s, _ in DISCRIMINATOR_BLOCKS:
        size = _conv_out(size, k, s, False)
        layers.append(Layer(name, size * size * cin * cout * k * k))
        cin = cout
    layers.append(Layer("fc", cin * 2))
    return layers


def _forward(layers):
    return sum(l.macs for l in layers)


def _backward(layers, weight_grads: bool, input_grad: bool):
    """Backward MACs: weight gradients of every layer (if wanted) and the input gradient of every
    layer but the first (plus the first's if the network input needs a gradient)."""
    macs = sum(l.macs for l in layers) if weight_grads else 0
    macs += sum(l.macs for l in layers[1:]) + (layers[0].macs if input_grad else 0)
    return macs


def step_flops(batch_size: int = 100, latent_dim: int = 10, d_weight_grads_in_g_step: bool = False):
    """FLOPs of one G-then-D (or D-then-G: the same work) iteration with one D step.

    G step: G forward, D forward on the fake, backward through D (input gradients) and G
    (weights and inputs). D step: D forward on real and on fake, backward (weights, inputs but
    not the images'). `d_weight_grads_in_g_step`: PyTorch's loss_G.backward() also computes D's
    weight gradients, which zero_grad() then discards; JAX does not compute them.
    """
    g, d = generator_layers(latent_dim), discriminator_layers()
    g_step = (_forward(g) + _forward(d) + _backward(d, d_weight_grads_in_g_step, True)
              + _backward(g, True, False))
    d_step = 2 * (_forward(d) + _backward(d, True, False))
    return 2 * batch_size * (g_step + d_step)


if __name__ == "__main__":
    g, d = generator_layers(), discriminator_layers()
    for l in g + d:
        print(f"{l.name:10s} {2 * l.macs / 1e6:9.2f} MFLOP/example forward")
    print(f"G forward {2 * _forward(g) / 1e6:.1f} MFLOP/example, D forward {2 * _forward(d) / 1e6:.1f}")
    print(f"step (batch 100): {step_flops() / 1e9:.1f} GFLOP (needed), "
          f"{step_flops(d_weight_grads_in_g_step=True) / 1e9:.1f} GFLOP (as PyTorch computes it)")
