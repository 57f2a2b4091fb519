"""The traditional comparison: hand-made intensity and texture features of the breast, and
a logistic regression, evaluated on the same patient folds as the CNN.

Features (on the preprocessed image, breast pixels only): intensity moments and
percentiles, gradient-magnitude and local-contrast statistics, and grey-level
co-occurrence (GLCM) contrast, homogeneity, energy and correlation at 1 and 4 pixels.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

GLCM_LEVELS = 16


def _glcm_features(image: np.ndarray, mask: np.ndarray, offset: tuple[int, int]) -> list[float]:
    q = np.minimum((image * GLCM_LEVELS).astype(np.int64), GLCM_LEVELS - 1)
    dy, dx = offset
    a, b = q[: q.shape[0] - dy, : q.shape[1] - dx], q[dy:, dx:]
    both = mask[: mask.shape[0] - dy, : mask.shape[1] - dx] & mask[dy:, dx:]
    counts = np.bincount((a[both] * GLCM_LEVELS + b[both]),
                         minlength=GLCM_LEVELS**2).astype(np.float64)
    p = counts.reshape(GLCM_LEVELS, GLCM_LEVELS) / max(counts.sum(), 1.0)
    i, j = np.mgrid[0:GLCM_LEVELS, 0:GLCM_LEVELS]
    mu_i, mu_j = (p * i).sum(), (p * j).sum()
    sd_i = np.sqrt((p * (i - mu_i) ** 2).sum()) + 1e-9
    sd_j = np.sqrt((p * (j - mu_j) ** 2).sum()) + 1e-9
    return [float((p * (i - j) ** 2).sum()), float((p / (1.0 + np.abs(i - j))).sum()),
            float((p**2).sum()), float((p * (i - mu_i) * (j - mu_j)).sum() / (sd_i * sd_j))]


def image_features(image: np.ndarray) -> np.ndarray:
    image = image.astype(np.float32)
    mask = image > 0
    if mask.sum() < 16:
        mask = np.ones_like(mask)
    values = image[mask]
    mean, std = float(values.mean()), float(values.std()) + 1e-9
    centred = (values - mean) / std
    gradient = np.hypot(cv2.Sobel(image, cv2.CV_32F, 1, 0), cv2.Sobel(image, cv2.CV_32F, 0, 1))
    local_mean = cv2.blur(image, (9, 9))
    local_std = np.sqrt(np.maximum(cv2.blur(image**2, (9, 9)) - local_mean**2, 0.0))
    features = [mean, std, float((centred**3).mean()), float((centred**4).mean()),
                *np.percentile(values, [5, 25, 50, 75, 95, 99]).tolist(),
                float(mask.mean()),
                float(gradient[mask].mean()), float(gradient[mask].std()),
                float(local_std[mask].mean()), float(local_std[mask].std()),
                float(np.percentile(local_std[mask], 99))]
    for offset in ((0, 1), (1, 0), (0, 4), (4, 0)):
        features += _glcm_features(image, mask, offset)
    return np.asarray(features, dtype=np.float64)


def feature_matrix(pixels: np.ndarray) -> np.ndarray:
    return np.stack([image_features(p) for p in pixels])


def cross_validated_probabilities(features: np.ndarray, labels: np.ndarray,
                                  folds: Sequence[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Held-out class probabilities of a standardised logistic regression, fold by fold."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probs = np.zeros((len(labels), 3))
    for train, test in folds:
        model = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
        model.fit(features[train], labels[train])
        probs[np.ix_(test, model.classes_)] = model.predict_proba(features[test])
    return probs
