"""Sample-quality metrics for MNIST generators, computed with the committed MNIST classifier.

The usual GAN metrics with `extractor.MnistCNN` in Inception's place: its 128 penultimate
features for FID, KID, precision/recall and density/coverage, its class posterior for the
Inception Score and class coverage. Scores are comparable between runs and frameworks (same
weights, same test set), not with Inception-based numbers from papers.

`sample_quality(images)` scores generated images against the MNIST test set;
`real_baselines()` gives the same scores for real train images (the floor a perfect generator
would reach) and the Inception Score of the test set itself.
"""
import functools
from typing import Optional

import numpy as np

from . import extractor
from .data import load_mnist

COVERAGE_THRESHOLD = 0.02   # a digit with a smaller share of the samples counts as missing


# --- distances between feature sets ------------------------------------------------------------

def frechet_distance(features_a, features_b) -> float:
    """||mu_a - mu_b||^2 + Tr(C_a + C_b - 2 (C_a C_b)^(1/2)) of Gaussians fitted to the features.

    Tr((C_a C_b)^(1/2)) is computed as the sum of square roots of the eigenvalues of the symmetric
    PSD matrix C_a^(1/2) C_b C_a^(1/2) (same spectrum), which stays real and stable where a general
    sqrtm of C_a C_b can return complex noise.
    """
    a, b = np.asarray(features_a, np.float64), np.asarray(features_b, np.float64)
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    sqrt_a = _psd_sqrt(cov_a)
    eig = np.linalg.eigvalsh(sqrt_a @ cov_b @ sqrt_a)
    tr_sqrt = np.sqrt(np.clip(eig, 0, None)).sum()
    return float(np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2 * tr_sqrt)


def _psd_sqrt(m):
    w, v = np.linalg.eigh(m)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def kernel_inception_distance(features_a, features_b, subsets: int = 100, subset_size: int = 1000,
                              seed: int = 0):
    """Unbiased MMD^2 with the cubic polynomial kernel (x.y / d + 1)^3 (Binkowski et al. 2018).

    Averaged over `subsets` random subsets of `subset_size` from each set (capped at the smaller
    set); returns (mean, std over subsets). Unbiased: about 0 for two samples of one distribution.
    """
    a, b = np.asarray(features_a, np.float64), np.asarray(features_b, np.float64)
    m = min(subset_size, len(a), len(b))
    if m < 2:
        raise ValueError("KID needs at least 2 samples in each set")
    d = a.shape[1]
    rng = np.random.default_rng(seed)
    kernel = lambda x, y: (x @ y.T / d + 1) ** 3
    values = []
    for _ in range(subsets):
        x = a[rng.choice(len(a), m, replace=False)]
        y = b[rng.choice(len(b), m, replace=False)]
        kxx, kyy, kxy = kernel(x, x), kernel(y, y), kernel(x, y)
        off = m * (m - 1)
        values.append((kxx.sum() - np.trace(kxx)) / off + (kyy.sum() - np.trace(kyy)) / off
                      - 2 * kxy.mean())
    return float(np.mean(values)), float(np.std(values))


def _sq_distances(x, y):
    return np.clip((x ** 2).sum(1)[:, None] + (y ** 2).sum(1)[None, :] - 2 * x @ y.T, 0, None)


def _knn_radii(x, k: int, chunk: int):
    """Squared distance from each row of x to its k-th nearest other row."""
    return np.concatenate([np.partition(_sq_distances(x[i:i + chunk], x), k, axis=1)[:, k]
                           for i in range(0, len(x), chunk)])


def _inside_manifold(points, support, radii, chunk: int):
    """Fraction of `points` inside at least one ball (support_j, radius_j)."""
    inside = [(_sq_distances(points[i:i + chunk], support) <= radii[None, :]).any(1)
              for i in range(0, len(points), chunk)]
    return float(np.concatenate(inside).mean())


def precision_recall(real_features, fake_features, k: int = 3, chunk: int = 1000):
    """Improved precision and recall (Kynkaanniemi et al. 2019) with k-NN balls.

    precision: share of fake samples inside the real manifold (union of balls around each real
    sample reaching its k-th nearest real neighbour); recall: share of real samples inside the
    fake manifold built the same way.
    """
    real, fake = np.asarray(real_features, np.float64), np.asarray(fake_features, np.float64)
    if min(len(real), len(fake)) <= k:
        raise ValueError(f"precision/recall with k={k} needs more than {k} samples in each set")
    precision = _inside_manifold(fake, real, _knn_radii(real, k, chunk), chunk)
    recall = _inside_manifold(real, fake, _knn_radii(fake, k, chunk), chunk)
    return precision, recall


def density_coverage(real_features, fake_features, k: int = 5, chunk: int = 1000):
    """Density and coverage (Naeem et al. 2020), from k-NN balls around the real samples only.

    density: the mean number of real balls that hold a fake sample, divided by k (about 1 when the
    fakes are distributed as the real samples; unbounded); coverage: the share of real samples
    whose ball holds a fake one. The few real outliers have balls wide enough to hold collapsed
    or blank samples, so these score precision ~1 (1,000 all-black images: 1.000); coverage counts
    real samples instead and stays near 0 for them.
    """
    real, fake = np.asarray(real_features, np.float64), np.asarray(fake_features, np.float64)
    if len(real) <= k or not len(fake):
        raise ValueError(f"density/coverage with k={k} needs more than {k} real samples and a fake one")
    radii = _knn_radii(real, k, chunk)
    fakes_inside = np.zeros(len(real), np.int64)   # per real ball
    for i in range(0, len(fake), chunk):
        fakes_inside += (_sq_distances(fake[i:i + chunk], real) <= radii[None, :]).sum(0)
    return float(fakes_inside.sum() / (k * len(fake))), float((fakes_inside > 0).mean())


# --- scores from class posteriors --------------------------------------------------------------

def inception_score(probs, eps: float = 1e-12) -> float:
    """exp(E_x KL(p(y|x) || p(y))): 1 for a single class, 10 for confident, balanced digits."""
    p = np.asarray(probs, np.float64)
    marginal = p.mean(0, keepdims=True)
    kl = (p * (np.log(p + eps) - np.log(marginal + eps))).sum(1)
    return float(np.exp(kl.mean()))


def class_coverage(probs, threshold: float = COVERAGE_THRESHOLD) -> dict:
    """Histogram of predicted digits, its entropy (bits; log2(10) = 3.32 when balanced) and
    the digits whose share is below `threshold` (mode collapse shows up here)."""
    predicted = np.asarray(probs).argmax(1)
    hist = np.bincount(predicted, minlength=extractor.NUM_CLASSES) / len(predicted)
    nonzero = hist[hist > 0]
    return {"class_histogram": [float(h) for h in hist],
            "class_entropy": float(-(nonzero * np.log2(nonzero)).sum()) + 0.0,   # one class: 0.0, not -0.0
            "missing_digits": [int(d) for d in np.flatnonzero(hist < threshold)]}


# --- entry points ------------------------------------------------------------------------------

@functools.lru_cache(maxsize=4)
def test_set_outputs(data_dir: Optional[str] = None, tfds_data_dir: Optional[str] = None):
    """(probs, features) of the MNIST test set, found as training finds MNIST; cached."""
    images = load_mnist("test", data_dir, tfds_data_dir).images
    return extractor.extract(images.astype(np.float32) / 255)


def compare(probs, features, ref_features, k: int = 3, kid_subsets: int = 100,
            kid_subset_size: int = 1000, seed: int = 0) -> dict:
    """All scores of one sample (its classifier outputs) against reference features."""
    kid, kid_std = kernel_inception_distance(features, ref_features, kid_subsets, kid_subset_size, seed)
    precision, recall = precision_recall(ref_features, features, k)
    density, coverage = density_coverage(ref_features, features)
    return {"fid": frechet_distance(features, ref_features), "kid": kid, "kid_std": kid_std,
            "inception_score": inception_score(probs), "precision": precision, "recall": recall,
            "density": density, "coverage": coverage, **class_coverage(probs),
            "num_samples": len(features), "num_reference": len(ref_features)}


def sample_quality(images, data_dir: Optional[str] = None, *, tfds_data_dir: Optional[str] = None,
                   k: int = 3, kid_subsets: int = 100, kid_subset_size: int = 1000, seed: int = 0) -> dict:
    """Score generated images against the MNIST test set.

    images: (N, 28, 28, 1) floats in [0, 1] (values outside are clipped), from any framework.
    data_dir: the IDX folder, or None for TFDS 'mnist' (as `load_mnist`).
    Returns fid, kid, kid_std, inception_score, precision, recall, density, coverage,
    class_histogram, class_entropy, missing_digits, num_samples, num_reference.
    """
    probs, features = extractor.extract(images)
    _, ref_features = test_set_outputs(data_dir, tfds_data_dir)
    return compare(probs, features, ref_features, k, kid_subsets, kid_subset_size, seed)


def real_baselines(data_dir: Optional[str] = None, *, tfds_data_dir: Optional[str] = None,
                   num_train: int = 10000, seed: int = 0, **compare_kw) -> dict:
    """What real data scores: a random train subset of `num_train` images scored against the
    test set exactly as generated samples are (the floor for FID/KID, the ceiling for
    precision/recall), and the Inception Score of the test set itself."""
    train = load_mnist("train", data_dir, tfds_data_dir).images
    pick = np.random.default_rng(seed).choice(len(train), min(num_train, len(train)), replace=False)
    train_probs, train_features = extractor.extract(train[np.sort(pick)].astype(np.float32) / 255)
    test_probs, test_features = test_set_outputs(data_dir, tfds_data_dir)
    train_vs_test = compare(train_probs, train_features, test_features, seed=seed, **compare_kw)
    return {"train_subset_vs_test": train_vs_test, "inception_score_test": inception_score(test_probs)}
