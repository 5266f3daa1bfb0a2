"""Variants for benchmarks.ab_step: two of the CPU forms (BatchNorm sums as matmuls, activations stored
once; docs/performance.md) switched back to the plain ones, one at a time."""
from dataclasses import replace

from dcgan_jax.kernels import CPU_FORMS, XLA_FORMS

VARIANTS = {
    "cpu forms": {"kernels": "cpu"},
    "fused reductions": {"kernels": replace(CPU_FORMS, channel_sum=XLA_FORMS.channel_sum)},
    "activations recomputed": {"kernels": replace(CPU_FORMS, stored_once=XLA_FORMS.stored_once)},
}
