"""Variants for benchmarks.ab_step: the CPU-only lowerings of CPU attempts 10-11 switched off."""
VARIANTS = {
    "as is": {},
    "fused reductions": {"channel_sum": lambda a, platform=None: a.sum(tuple(range(a.ndim - 1)))},
    "activations recomputed": {"stored_once": lambda activation, like, platform=None: activation},
}
