"""Sample-quality metrics: each formula against an independent computation, then end to end with
the committed extractor on synthetic stroke images (no real MNIST needed)."""
import hashlib
import os

import numpy as np
import pytest
import scipy.linalg
from scipy.ndimage import gaussian_filter

from conftest import write_idx
from dcgan_jax import extractor, metrics


def strokes(n, rng, one=False):
    """(n, 28, 28, 1) float images of thick pen strokes: random 2-3 segment scribbles, or, with
    one=True, near-vertical bars (what an MNIST classifier calls a '1')."""
    yy, xx = np.mgrid[0:28, 0:28].astype(np.float64)
    out = np.zeros((n, 28, 28))
    for i in range(n):
        if one:
            x0 = rng.uniform(12, 16)
            segments = [((5, x0), (23, x0 + rng.uniform(-3, 3)))]
        else:
            pts = rng.uniform(6, 22, (rng.integers(3, 5), 2))
            segments = list(zip(pts[:-1], pts[1:]))
        width = rng.uniform(1.2, 2.0)
        for (y0, x0), (y1, x1) in segments:
            d = np.array([y1 - y0, x1 - x0])
            t = np.clip(((yy - y0) * d[0] + (xx - x0) * d[1]) / max(d @ d, 1e-9), 0, 1)
            dist = np.hypot(yy - (y0 + t * d[0]), xx - (x0 + t * d[1]))
            out[i] = np.maximum(out[i], np.clip(width + 0.5 - dist, 0, 1))
    return out[..., None].astype(np.float32)


@pytest.fixture(scope="module")
def stroke_mnist(tmp_path_factory):
    """An IDX folder whose 'test split' is 300 scribbles: the reference set for sample_quality."""
    root = tmp_path_factory.mktemp("strokes")
    rng = np.random.default_rng(0)
    test = strokes(300, rng)
    write_idx(os.path.join(root, "t10k-images-idx3-ubyte.gz"), np.round(test[..., 0] * 255), 2051)
    write_idx(os.path.join(root, "t10k-labels-idx1-ubyte.gz"), np.zeros(300), 2049)
    return str(root), np.round(test * 255) / 255


# --- formulas ----------------------------------------------------------------------------------

def test_frechet_distance_matches_the_sqrtm_formula():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(400, 6)) @ rng.normal(size=(6, 6))
    b = rng.normal(0.3, 1.5, size=(300, 6))
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    expected = (np.sum((a.mean(0) - b.mean(0)) ** 2) + np.trace(ca + cb)
                - 2 * np.trace(scipy.linalg.sqrtm(ca @ cb)).real)
    assert metrics.frechet_distance(a, b) == pytest.approx(expected, rel=1e-8)
    assert abs(metrics.frechet_distance(a, a)) < 1e-8 * np.trace(ca)


def test_kid_is_the_unbiased_mmd_and_about_zero_for_one_distribution():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(12, 4)), rng.normal(size=(12, 4))
    k = lambda x, y: (x @ y / 4 + 1) ** 3
    m = 12
    expected = (sum(k(a[i], a[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
                + sum(k(b[i], b[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
                - 2 * sum(k(a[i], b[j]) for i in range(m) for j in range(m)) / m ** 2)
    kid, std = metrics.kernel_inception_distance(a, b, subsets=3, subset_size=m)
    assert kid == pytest.approx(expected, rel=1e-10) and std == pytest.approx(0, abs=1e-12)

    # Same distribution: the unbiased estimate averages to ~0, while the biased (V-statistic)
    # estimate would sit at ~2 E[k(x, x) - k(x, y)] / m > 0, and a shifted sample is far away.
    x, y = rng.normal(size=(2000, 8)), rng.normal(size=(2000, 8))
    kid, std = metrics.kernel_inception_distance(x, y, subsets=50, subset_size=100)
    kxx = np.mean((np.sum(x * x, 1) / 8 + 1) ** 3)
    biased_offset = 2 * (kxx - 1) / 100   # E k(x, y) = 1 + O(1/d) for independent x, y
    assert abs(kid) < 0.25 * biased_offset
    shifted, _ = metrics.kernel_inception_distance(x, y + 0.5, subsets=50, subset_size=100)
    assert shifted > 10 * (abs(kid) + std / np.sqrt(50))


def test_inception_score_extremes():
    one_class = np.tile(np.eye(10)[3], (50, 1))
    assert metrics.inception_score(one_class) == pytest.approx(1.0)
    balanced = np.eye(10)[np.arange(50) % 10]
    assert metrics.inception_score(balanced) == pytest.approx(10.0, rel=1e-9)
    uncertain = np.full((50, 10), 0.1)
    assert metrics.inception_score(uncertain) == pytest.approx(1.0)


def test_precision_recall_against_brute_force():
    rng = np.random.default_rng(3)
    real = rng.normal(size=(40, 3))
    fake = np.concatenate([rng.normal(size=(20, 3)), rng.normal(6, 1, size=(20, 3))])

    def manifold_share(points, support, k=3):
        d = np.linalg.norm(support[:, None] - support[None], axis=-1)
        radius = np.sort(d, axis=1)[:, k]         # column 0 is the point itself
        dist = np.linalg.norm(points[:, None] - support[None], axis=-1)
        return np.mean([(dist[i] <= radius).any() for i in range(len(points))])

    precision, recall = metrics.precision_recall(real, fake, k=3, chunk=7)
    assert precision == pytest.approx(manifold_share(fake, real))
    assert recall == pytest.approx(manifold_share(real, fake))
    assert metrics.precision_recall(real, real) == (1.0, 1.0)
    collapsed = real[:1] + 0.01 * rng.normal(size=(30, 3))   # all fakes near one real point
    precision, recall = metrics.precision_recall(real, collapsed)
    assert precision == 1.0 and recall < 0.2


def test_class_coverage_flags_missing_digits():
    probs = np.eye(10)[[7] * 95 + [1] * 5]
    cov = metrics.class_coverage(probs)
    assert cov["class_histogram"][7] == pytest.approx(0.95) and cov["class_histogram"][1] == pytest.approx(0.05)
    assert cov["missing_digits"] == [0, 2, 3, 4, 5, 6, 8, 9]
    assert cov["class_entropy"] == pytest.approx(-(0.95 * np.log2(0.95) + 0.05 * np.log2(0.05)))
    assert metrics.class_coverage(np.eye(10)[np.arange(100) % 10])["missing_digits"] == []


# --- the extractor and end to end ----------------------------------------------------------------

def test_extractor_weights_are_checked(monkeypatch):
    params = extractor.load_params()
    assert params["Dense_0"]["kernel"].shape[1] == extractor.FEATURE_DIM
    extractor.load_params.cache_clear()
    monkeypatch.setattr(extractor, "WEIGHTS_SHA256", hashlib.sha256(b"other").hexdigest())
    with pytest.raises(extractor.ExtractorError, match="sha256"):
        extractor.load_params()
    monkeypatch.undo()
    extractor.load_params.cache_clear()


def test_density_coverage_against_brute_force():
    rng = np.random.default_rng(5)
    real = rng.normal(size=(40, 3))
    fake = np.concatenate([rng.normal(size=(20, 3)), rng.normal(6, 1, size=(20, 3))])
    d = np.linalg.norm(real[:, None] - real[None], axis=-1)
    radius = np.sort(d, axis=1)[:, 5]                       # column 0 is the point itself
    inside = np.linalg.norm(fake[:, None] - real[None], axis=-1) <= radius[None, :]   # (fake, real ball)
    density, coverage = metrics.density_coverage(real, fake, k=5, chunk=7)
    assert density == pytest.approx(inside.sum() / (5 * len(fake)))
    assert coverage == pytest.approx(np.mean([inside[:, j].any() for j in range(len(real))]))
    assert metrics.density_coverage(real, real)[1] == 1.0


def test_coverage_is_not_fooled_by_a_real_outlier_as_precision_is():
    """The audit's case: real outliers' balls reach the bulk, and samples piled up between them
    score precision 1 (all-black images do on MNIST's features)."""
    rng = np.random.default_rng(6)
    real = np.concatenate([rng.normal(size=(200, 2)), [[30.0, 30.0], [31.0, 31.0], [30.0, 32.0]]])
    collapsed = np.full((50, 2), 15.0)                       # far from all but the outliers' balls
    precision, _ = metrics.precision_recall(real, collapsed)
    density, coverage = metrics.density_coverage(real, collapsed)
    assert precision == 1.0
    assert coverage <= 3 / len(real) and density <= 3 / 5


def test_sample_quality_end_to_end(stroke_mnist):
    data_dir, test_images = stroke_mnist
    same = metrics.sample_quality(test_images, data_dir, kid_subsets=10)
    assert set(same) >= {"fid", "kid", "kid_std", "inception_score", "precision", "recall", "density",
                         "coverage", "class_histogram", "missing_digits"}
    # Zero up to the square roots of near-zero eigenvalues (~1e-7 each) of a 300-sample covariance.
    trace = np.trace(np.cov(extractor.extract(test_images)[1], rowvar=False))
    assert abs(same["fid"]) < 1e-6 * trace and same["precision"] == same["recall"] == same["coverage"] == 1.0

    rng = np.random.default_rng(4)
    fresh = strokes(300, rng)          # a second sample of the same distribution
    fids = [metrics.sample_quality(np.clip(fresh + rng.normal(0, s, fresh.shape), 0, 1), data_dir,
                                   kid_subsets=10)["fid"] for s in (0.0, 0.15, 0.4)]
    blurred = metrics.sample_quality(gaussian_filter(fresh, (0, 1.5, 1.5, 0)), data_dir, kid_subsets=10)
    assert fids[0] < fids[1] < fids[2] and fids[0] < blurred["fid"]

    # Values outside [0, 1] are clipped, as generator outputs in [-1, 1] would be.
    clipped = metrics.sample_quality(fresh * 3 - 1, data_dir, kid_subsets=10)
    assert clipped["fid"] == pytest.approx(
        metrics.sample_quality(np.clip(fresh * 3 - 1, 0, 1), data_dir, kid_subsets=10)["fid"])


def test_a_one_digit_generator_is_detected(stroke_mnist):
    data_dir, _ = stroke_mnist
    ones = strokes(200, np.random.default_rng(5), one=True)
    scores = metrics.sample_quality(ones, data_dir, kid_subsets=10)
    assert scores["class_histogram"][1] > 0.9
    assert len(scores["missing_digits"]) >= 8 and 1 not in scores["missing_digits"]
    assert scores["inception_score"] < 1.3


def test_sample_quality_rejects_wrong_shapes():
    with pytest.raises(ValueError, match=r"\(N, 28, 28, 1\)"):
        metrics.sample_quality(np.zeros((4, 28, 28)))
