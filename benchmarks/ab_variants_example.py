"""Variants for benchmarks.ab_step: two of the CPU forms (BatchNorm sums as matmuls, activations stored
once; docs/performance.md) switched off."""
VARIANTS = {
    "as is": {},
    "fused reductions": {"channel_sum": lambda a, platform=None: a.sum(tuple(range(a.ndim - 1)))},
    "activations recomputed": {"stored_once": lambda activation, like, platform=None: activation},
}
