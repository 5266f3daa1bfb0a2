"""Variants for benchmarks.ab_step: the "xla" kernel set (dcgan_jax/kernels.py) against models.py's
plain flax layers, as --kernels xla and --kernels flax train.

  python -m benchmarks.ab_step benchmarks/ab_variants_kernels.py --loop scan --steps 100 --rounds 10   # GPU
"""
VARIANTS = {"xla": {"kernels": "xla"}, "flax": {"kernels": "flax"}}
