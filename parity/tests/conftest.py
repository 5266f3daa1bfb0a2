"""Fixtures for the parity tests. Seed 0 unless PARITY_SEED says otherwise: PARITY_SEED=random draws
a fresh one (printed on failure; rerun it with PARITY_SEED=<seed>), to explore other weights and
inputs than CI's."""
import os

import numpy as np
import pytest

# The tutorial author's trained discriminator is not in the repository (its tests skip without it).
TUTORIAL_DISCRIMINATOR = os.environ.get("PARITY_TUTORIAL_PTH", "")


@pytest.fixture(scope="session")
def seed():
    value = os.environ.get("PARITY_SEED", "0")
    return int(np.random.SeedSequence().entropy % 2**31) if value == "random" else int(value)


def assert_rows_pass(rows, seed):
    assert rows, "no comparison was made"
    failed = [r for r in rows if not r.passed]
    assert not failed, f"PARITY_SEED={seed}: " + "; ".join(
        f"{r.group} / {r.name}: {r.check} {r.value:.3g} > {r.limit:g} {r.note}" for r in failed)
