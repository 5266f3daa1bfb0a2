"""Fixtures for the parity tests: a fresh seed per run (reproduce a failure with PARITY_SEED=<seed>)."""
import os

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TUTORIAL_DISCRIMINATOR = os.environ.get(
    "PARITY_TUTORIAL_PTH", os.path.join(REPO, "..", "shared", "reference", "DCGAN_Discriminator.pth"))


@pytest.fixture(scope="session")
def seed():
    return int(os.environ.get("PARITY_SEED", np.random.SeedSequence().entropy % 2**31))


def assert_rows_pass(rows, seed):
    assert rows, "no comparison was made"
    failed = [r for r in rows if not r.passed]
    assert not failed, f"PARITY_SEED={seed}: " + "; ".join(
        f"{r.group} / {r.name}: {r.check} {r.value:.3g} > {r.limit:g} {r.note}" for r in failed)
