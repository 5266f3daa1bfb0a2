"""dcgan_jax against the PyTorch tutorial: forward passes (float32), losses, gradients, BatchNorm
statistics and 20-step training trajectories of both alternations (float64), and a float32
trajectory judged against float64. Tolerances are parity.compare's constants."""
import jax
import jax.numpy as jnp
import pytest

from parity import compare
from parity.tests.conftest import assert_rows_pass

pytestmark = pytest.mark.slow  # trains both frameworks step by step


def test_layer_shapes_and_forward_float32(seed):
    """Every block's output shape (docs/tutorial.md) and values in train and eval mode; running
    statistics after one train-mode forward."""
    rows = compare.forward_rows(seed, batch=8)
    assert {r.group for r in rows} == {"shapes (C,H,W)", "forward f32 train", "forward f32 eval",
                                       "BN stats after 1 forward (f32)"}
    assert_rows_pass(rows, seed)


def test_losses_gradients_and_statistics_float64(seed):
    """The tutorial's two losses, every parameter's gradient, and the BatchNorm statistics after
    the G step (D's included) and D's two passes, including what running_var means."""
    assert_rows_pass(compare.gradient_rows(seed, batch=8), seed)


@pytest.fixture(scope="module")
def trajectory_rows(seed):
    return compare.trajectory_rows(compare.trajectories(seed, batch=4, steps=20))


@pytest.mark.parametrize("group", ["tutorial G-then-D, 20 steps (f64)", "D-then-G, 20 steps (f64)",
                                   "float32 G-then-D vs a float64 reference"])
def test_training_trajectories(trajectory_rows, group, seed):
    assert_rows_pass([r for r in trajectory_rows if r.group == group], seed)


def test_float64_checks_leave_jax_in_float32(trajectory_rows):
    assert not jax.config.jax_enable_x64
    assert jnp.zeros(1).dtype == jnp.float32 and jnp.asarray(1.0).dtype == jnp.float32
