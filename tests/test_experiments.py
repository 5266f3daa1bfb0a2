"""The experiment scripts on a small run directory (an initialised, untrained model: the scripts
only read the layout documented in dcgan_jax/outputs.py)."""
import json
import os
import shutil

import jax
import numpy as np
import pytest
from PIL import Image

from dcgan_jax import metrics, outputs, preset
from dcgan_jax.train import build_models
from experiments import evaluate, figures, latent_scale


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("run"))
    # batch 20 = the latent-scale experiment's batch: one compiled generator shape serves all.
    config = preset("quick", batch_size=20, epochs=3, steps_per_epoch=2)
    generator, discriminator = build_models(config)
    outputs.write_config(root, config)
    outputs.save_variables(root, generator.init(jax.random.key(0), np.zeros((1, 10), np.float32), train=False),
                           discriminator.init(jax.random.key(1), np.zeros((1, 28, 28, 1), np.float32), train=False))
    rng = np.random.default_rng(0)
    history = {k: rng.uniform(0.3, 1.0, 6) for k in outputs.METRIC_KEYS}
    outputs.write_step_metrics(root, history)
    for epoch in range(1, 4):
        outputs.save_grid(os.path.join(root, "samples", f"epoch_{epoch:03d}.png"), rng.random((16, 28, 28, 1)))
    return root


@pytest.mark.slow
def test_latent_scale_train_mode_removes_the_scale_eval_mode_does_not(run_dir, capsys):
    config, g_vars, _ = outputs.load_variables(run_dir)
    z = jax.random.normal(jax.random.key(1), (20, config.latent_dim))
    results = latent_scale.measure(config, g_vars, z)
    # Batch statistics remove |c| exactly but for BatchNorm's eps, negligible once |c| is large ...
    huge = [np.asarray(latent_scale.generator_output(config, g_vars, c * z, "batch")) for c in (1e4, 5e4)]
    np.testing.assert_allclose(huge[0], huge[1], atol=1e-5)
    # ... and worth ~eps / (2 var) relative at c = 1 (first-layer batch variance ~4e-3 at init).
    for c in latent_scale.SCALES:
        assert results["batch"][c][2] < 1e-2
    assert results["batch"][-10000.0][1] > 0.1        # c < 0 is another sample, -z
    assert results["running"][50000.0][2] > 0.1       # running statistics keep the scale

    out = os.path.join(run_dir, "latent.png")
    assert latent_scale.main([run_dir, "--out", out]) == 0
    assert "In train mode G(c*z) equals G(sign(c)*z)" in capsys.readouterr().out
    assert Image.open(out).size[0] > 300


@pytest.mark.slow
def test_evaluate_writes_eval_json_and_figure(run_dir, idx_dir, capsys):
    assert evaluate.main([run_dir, "--data-dir", idx_dir, "--num-samples", "40"]) == 0
    with open(os.path.join(run_dir, "eval.json")) as f:
        report = json.load(f)
    generated = report["generated"]
    assert generated["num_samples"] == 40 and generated["num_reference"] == 32
    assert len(generated["class_histogram"]) == 10 and sum(generated["class_histogram"]) == pytest.approx(1)
    assert report["real_baselines"]["train_subset_vs_test"]["num_samples"] == 40
    assert os.path.exists(os.path.join(run_dir, "eval.png"))
    assert "real train subset" in capsys.readouterr().out


@pytest.mark.slow
def test_evaluate_reports_a_missing_dataset(run_dir, tmp_path, capsys):
    assert evaluate.main([run_dir, "--data-dir", str(tmp_path / "none"), "--num-samples", "20"]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_scripts_reject_a_folder_that_is_not_a_run(tmp_path):
    with pytest.raises(SystemExit, match="not a finished run directory"):
        latent_scale.main([str(tmp_path)])


@pytest.mark.slow
def test_figures(run_dir, idx_dir):
    out = os.path.join(run_dir, "figs")
    assert figures.main([run_dir, "--data-dir", idx_dir, "--out", out]) == 0
    gif = Image.open(os.path.join(out, "samples.gif"))
    assert gif.n_frames == 3
    for name in ("losses.png", "interpolation.png", "real_vs_generated.png"):
        assert os.path.getsize(os.path.join(out, name)) > 1000


@pytest.mark.slow
def test_figures_checks_its_inputs_before_creating_the_out_folder(run_dir, tmp_path, capsys):
    out = str(tmp_path / "figs")
    assert figures.main([run_dir, "--data-dir", str(tmp_path / "none"), "--out", out]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert not os.path.exists(out)
    no_samples = shutil.copytree(run_dir, tmp_path / "run", ignore=shutil.ignore_patterns("samples"))
    assert figures.main([str(no_samples), "--data-dir", str(tmp_path / "none"), "--out", out]) == 1
    assert "no epoch_*.png" in capsys.readouterr().err
    assert not os.path.exists(out)


@pytest.mark.slow
def test_a_full_disk_ends_the_scripts_with_one_line(run_dir, idx_dir, tmp_path, capsys, monkeypatch):
    import errno

    def no_space(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(outputs.os, "fsync", no_space)
    out = tmp_path / "latent.png"
    assert latent_scale.main([run_dir, "--out", str(out)]) == 1
    assert capsys.readouterr().err == f"error: cannot write {out}: no space left on device\n"
    assert figures.main([run_dir, "--data-dir", idx_dir, "--out", str(tmp_path / "figs")]) == 1
    assert capsys.readouterr().err == f"error: cannot write {tmp_path}/figs/samples.gif: no space left on device\n"
    assert sorted(os.listdir(tmp_path)) == ["figs", "mnist"] and os.listdir(tmp_path / "figs") == []  # no temporaries


def test_epoch_grids_parse_and_sort_the_number_past_epoch_999(tmp_path):
    os.makedirs(tmp_path / "samples")
    for name in ("epoch_1000.png", "epoch_999.png", "epoch_002.png", "epoch_002.png.tmp.png"):
        (tmp_path / "samples" / name).touch()
    assert [e for e, _ in figures.epoch_grids(str(tmp_path))] == [2, 999, 1000]   # text order: 002, 1000, 999


def test_loss_plot_smoothed_curves_line_up_in_both_panels():
    n, steps_per_epoch = 25, 30                                  # window = 30 // 10 = 3
    rng = np.random.default_rng(0)
    series = {k: rng.random(n) for k in outputs.METRIC_KEYS}
    fig = figures.loss_plot(series, steps_per_epoch)
    mean3 = lambda y: np.array([(y[i - 2] + y[i - 1] + y[i]) / 3 for i in range(2, n)])
    for ax, keys in zip(fig.axes, (("loss_g", "loss_d"), ("d_real", "d_fake"))):
        curves = [line for line in ax.get_lines() if len(line.get_xdata()) > 2]   # not the axhlines
        assert len(curves) == 4                                  # light per step and dark mean, per key
        for (light, dark), key in zip(zip(curves[::2], curves[1::2]), keys):
            np.testing.assert_array_equal(light.get_xdata(), np.arange(n))
            np.testing.assert_allclose(light.get_ydata(), series[key])
            np.testing.assert_array_equal(dark.get_xdata(), np.arange(2, n))   # mean at its last step
            np.testing.assert_allclose(dark.get_ydata(), mean3(series[key]))
    figures._pyplot().close(fig)


def test_evaluate_table_prints_a_one_class_entropy_as_zero():
    def entropy_cell(predicted):
        scores = dict(fid=1.0, kid=0.0, kid_std=0.0, inception_score=1.0, precision=0.0, recall=0.0,
                      density=0.0, coverage=0.0, **metrics.class_coverage(np.eye(10)[predicted]))
        return next(l for l in evaluate.table(scores, None).splitlines() if l.startswith("class entropy")).split()[-1]

    assert entropy_cell([3] * 8) == "0.000"                     # one class: 0 bits, not -0.000
    assert entropy_cell([3, 7] * 4) == "1.000"                  # two equal classes: log2(2) bits
    assert entropy_cell(list(range(10))) == f"{np.log2(10):.3f}"


def test_evaluate_table_gives_each_kid_its_std():
    scores = dict(fid=1.0, kid=0.5, kid_std=0.25, inception_score=1.0, precision=0.0, recall=0.0,
                  density=0.0, coverage=0.0, **metrics.class_coverage(np.eye(10)))
    real = dict(scores, kid=0.0066, kid_std=0.256)
    text = evaluate.table(scores, {"train_subset_vs_test": real, "inception_score_test": 9.8})
    kid = next(l for l in text.splitlines() if l.startswith("KID"))
    assert kid.split() == ["KID", "0.50000", "±", "0.25000", "0.00660", "±", "0.25600"]


def test_parity_check_help_shows_the_whole_description(capsys):
    from parity import check
    with pytest.raises(SystemExit) as exit_:
        check.main(["--help"])
    assert exit_.value.code == 0
    assert ("one table row per layer and quantity, with its max abs / rel difference and pass or fail. "
            "Exit code 0 if every row passes.") in " ".join(capsys.readouterr().out.split())


def test_slerp_stays_on_the_great_circle():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(2, 5, 10))
    b *= np.linalg.norm(a, axis=1, keepdims=True) / np.linalg.norm(b, axis=1, keepdims=True)
    t = np.linspace(0, 1, 7)[:, None, None]
    path = figures.slerp(a[None], b[None], t)
    np.testing.assert_allclose(path[0], a, atol=1e-12)
    np.testing.assert_allclose(path[-1], b, atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(path, axis=-1), np.broadcast_to(np.linalg.norm(a, axis=-1), (7, 5)))
    angle = lambda x, y: np.arccos(np.sum(x * y, -1) / np.linalg.norm(x, axis=-1) / np.linalg.norm(y, axis=-1))
    np.testing.assert_allclose(angle(a, path[3]), angle(a, b) / 2, rtol=1e-9)
    np.testing.assert_allclose(figures.slerp(a, a, 0.5), a)   # parallel vectors: no 0/0


@pytest.mark.slow
def test_compare_frameworks_torch_side_and_table():
    from dcgan_jax.data import Dataset
    from experiments import compare_frameworks as cf
    config = preset("quick", batch_size=2, epochs=2, steps_per_epoch=1, seed=3)
    images = np.random.default_rng(0).integers(0, 256, (4, 28, 28, 1), dtype=np.uint8)
    data = Dataset(images, np.zeros(4, np.uint8), "test", None)
    summary, samples = cf.train_torch(config, data, num_samples=3)
    again, samples_again = cf.train_torch(config, data, num_samples=3)
    assert samples.shape == (3, 28, 28, 1) and samples.min() >= 0 and samples.max() <= 1
    np.testing.assert_array_equal(samples, samples_again)          # seeded: a rerun is identical
    assert summary["loss_d"] == again["loss_d"] and np.isfinite(summary["loss_g"])

    with pytest.raises(cf.ConfigError, match="d_steps"):
        cf.check_reference_supports(config.replace(d_steps=2))
    runs = [{k: float(i + j) for j, (k, _, _) in enumerate(cf.COLUMNS)} for i in (0, 2)]
    stats = cf.summarise(runs)
    assert stats["fid"] == (np.mean([4.0, 6.0]), np.std([4.0, 6.0]))
    table = cf.markdown_table({"pytorch": stats, "dcgan_jax": stats}, "header")
    assert table.count("\n| ") == 3 and "5.00 ± 1.00" in table
