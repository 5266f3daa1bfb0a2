"""Data parallelism: 8 (forced host) devices train exactly what 1 device trains for the same global batch.

The device count is fixed when JAX starts, so the check runs in a subprocess with
XLA_FLAGS=--xla_force_host_platform_device_count=8. It runs in float64: 8 devices reduce
BatchNorm statistics and gradients in another order than 1, and float32 rounding differences
grow through Adam (see docs/tutorial.md#parity-notes); in float64 a real bug (per-device
BatchNorm statistics, a dropped shard) is still off by orders of magnitude more than 1e-5.
"""
import json
import os
import subprocess
import sys
import textwrap
import pytest

pytestmark = pytest.mark.slow  # a subprocess with 8 devices compiles the run in float64

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = textwrap.dedent("""
    import json, os, sys
    import jax, numpy as np
    jax.config.update("jax_enable_x64", True)
    from dcgan_jax import preset, create_train_state, epoch_key, run_keys, train_epoch
    from dcgan_jax.config import ConfigError
    from dcgan_jax.data import Dataset
    from dcgan_jax.parallel import DataParallel
    from dcgan_jax.run import fit

    assert jax.device_count() == 8, jax.devices()
    rng = np.random.default_rng(0)
    data = Dataset(rng.integers(0, 256, (16, 28, 28, 1), dtype=np.uint8), np.zeros(16, np.uint8), "test", None)
    config = preset("quick", dtype="float64", batch_size=8, steps_per_epoch=2, epochs=1, loop="steps")
    run_dir = sys.argv[1]
    quiet = lambda _: None

    # 1 device: the epoch runner on the default device (a mesh of one).
    init_key, _, train_key = run_keys(config.seed)
    one, one_metrics = train_epoch(create_train_state(config.for_dataset(16), init_key),
                                   jax.device_put(data.images), epoch_key(train_key, 1), loop="steps")
    # 8 devices: the driver with its default mesh over all devices.
    dp = DataParallel()
    eight = fit(config, run_dir, progress=False, log=quiet, data=data, parallel=dp)

    def max_rel(a, b):
        a, b = np.asarray(a), dp.to_host(b)
        return float(np.max(np.abs(a - b)) / max(np.max(np.abs(a)), 1e-30))
    diffs = jax.tree.map(max_rel, one, eight)
    leaves = jax.tree.leaves(eight)
    record = json.loads(open(os.path.join(run_dir, "metrics.jsonl")).readline())
    from dcgan_jax.train import epoch_programs
    batch_hlo = epoch_programs(dp.mesh)[1].lower(eight, dp.replicate(data.images), np.zeros((2, 8), np.int32),
                                                 np.zeros((2, 2), np.uint32), np.int32(0)).as_text()
    try:
        dp.check_batch_size(12)
        batch_error = None
    except ConfigError as e:
        batch_error = str(e)
    # The checkpoint restores onto the mesh (the run is finished: restore, no training).
    resumed = fit(config, run_dir, resume=True, progress=False, log=quiet, data=data, parallel=dp)
    print(json.dumps({
        "max_rel_diff": max(jax.tree.leaves(diffs)),
        "worst": max(jax.tree_util.tree_flatten_with_path(diffs)[0], key=lambda kv: kv[1])[0].__str__(),
        "replicated": all(x.sharding.is_fully_replicated and len(x.sharding.device_set) == 8 for x in leaves),
        "loss_d_diff": abs(record["loss_d"] - float(np.mean(one_metrics["loss_d"], dtype=np.float64))),
        # the gathered batch is constrained to the mesh's batch axis (Shardy or GSPMD spelling)
        "batch_sharded_8_ways": '[{"batch"}, {}, {}, {}]' in batch_hlo or "devices=[8,1,1,1]" in batch_hlo,
        "batch_error": batch_error,
        "resumed_equal": all(np.array_equal(dp.to_host(a), dp.to_host(b))
                             for a, b in zip(leaves, jax.tree.leaves(resumed))),
        "resumed_replicated": all(x.sharding.is_fully_replicated and len(x.sharding.device_set) == 8
                                  for x in jax.tree.leaves(resumed)),
    }))
""")


def test_eight_devices_train_what_one_device_trains(tmp_path):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu",
               PYTHONPATH=os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "run")], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["max_rel_diff"] < 1e-5, result
    assert result["loss_d_diff"] < 1e-6, result  # metrics are float32
    assert result["replicated"], "params / optimizer state must stay replicated on all 8 devices"
    assert result["batch_sharded_8_ways"], "the global batch must be split over the 8 devices"
    assert result["batch_error"] == "batch_size=12: must be a multiple of the 8 devices the batch is split across"
    assert result["resumed_equal"] and result["resumed_replicated"]
