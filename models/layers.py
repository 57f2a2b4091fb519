"""The custom layers of the whole-image model, registered so ``load_model`` finds them.

Import this module before ``keras.models.load_model`` (``worker.classifier`` does): no
Lambda layers, so models load in Keras' safe mode.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
from keras import ops

PACKAGE = "mammo"
FEATURES = 9


@keras.saving.register_keras_serializable(package=PACKAGE)
class LocalContrast(keras.layers.Layer):
    """Each breast pixel relative to the breast around it: ``0.5 + gain * (x - local mean)``.

    The local mean is a Gaussian average (``sigma`` pixels) over breast pixels only
    (normalised convolution: background and the image's edges never darken it), so a mass
    stands out by how much denser it is than its surroundings, not by how dense the breast
    is. Background (0) stays 0. The motive: the plain model's top false alarms are dense
    normal breasts. On mini-MIAS it did not beat run-to-run noise (README, measured with
    tests/benchmarks/model_variants.py), so ``mammo train`` adds it only when asked
    (``--local-contrast``).
    """

    def __init__(self, sigma: float = 24.0, gain: float = 2.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.sigma = float(sigma)
        self.gain = float(gain)
        # A wide Gaussian is smooth: blur a copy shrunk by ``factor`` and enlarge it back.
        # Full-resolution 145-tap convolutions made oneDNN ask for tens of GiB of scratch.
        self.factor = max(1, int(self.sigma // 3))
        small_sigma = self.sigma / self.factor
        radius = max(1, round(3.0 * small_sigma))
        taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / small_sigma) ** 2)
        self._taps = (taps / taps.sum()).astype(np.float32)

    def _blur(self, x: Any) -> Any:
        height, width = int(x.shape[1]), int(x.shape[2])
        small = ops.average_pool(x, self.factor, strides=self.factor, padding="same")
        n = self._taps.size  # separable: a column pass, then a row pass
        small = ops.conv(small, ops.convert_to_tensor(self._taps.reshape(n, 1, 1, 1)),
                         padding="same")
        small = ops.conv(small, ops.convert_to_tensor(self._taps.reshape(1, n, 1, 1)),
                         padding="same")
        return ops.image.resize(small, (height, width), interpolation="bilinear")

    def call(self, x: Any) -> Any:
        x = ops.cast(x, "float32")
        mask = ops.cast(x > 0.0, "float32")
        local_mean = self._blur(x * mask) / ops.maximum(self._blur(mask), 1e-3)
        return ops.clip(0.5 + self.gain * (x - local_mean), 0.0, 1.0) * mask

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return input_shape

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "sigma": self.sigma, "gain": self.gain}


@keras.saving.register_keras_serializable(package=PACKAGE)
class LesionEvidence(keras.layers.Layer):
    """Per-image evidence from a per-location probability map (n, gh, gw, 3).

    For benign, malignant and abnormal (= benign + malignant): the log-odds of the largest
    location, of the mean of the ``top_k`` largest and of the mean of all, i.e. 9 features.
    A finding is local, so the strongest few locations carry most of the evidence (Shen et
    al. 2019 pool by max); the mean says how much of the breast looks suspicious.
    """

    def __init__(self, top_k: int = 5, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.top_k = top_k

    def call(self, probabilities: Any) -> Any:
        benign = probabilities[..., 1]
        malignant = probabilities[..., 2]
        maps = ops.stack([benign, malignant, benign + malignant], axis=1)  # (n, 3, gh, gw)
        locations = int(probabilities.shape[1]) * int(probabilities.shape[2])
        flat = ops.reshape(maps, (-1, 3, locations))
        k = min(self.top_k, locations)
        top = ops.top_k(flat, k=k)[0]  # (n, 3, k), sorted descending
        # Plus the mean over all locations: how much of the breast looks suspicious.
        stats = ops.concatenate([top[..., 0], ops.mean(top, axis=-1), ops.mean(flat, axis=-1)],
                                axis=-1)  # (n, 9)
        stats = ops.clip(stats, 1e-6, 1.0 - 1e-6)
        return ops.log(stats) - ops.log(1.0 - stats)

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, int]:
        return (input_shape[0], FEATURES)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "top_k": self.top_k}


@keras.saving.register_keras_serializable(package=PACKAGE)
class AbnormalityMap(keras.layers.Layer):
    """1 - P(normal) per location: the heatmap stored with each prediction, in [0, 1]."""

    def call(self, probabilities: Any) -> Any:
        return 1.0 - probabilities[..., 0]

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return tuple(input_shape[:-1])


@keras.saving.register_keras_serializable(package=PACKAGE)
class Flip(keras.layers.Layer):
    """Mirror a (n, h, w, c) tensor along ``axes`` (1 = rows, 2 = columns): test-time
    augmentation runs the trunk on a flipped image and flips its map back."""

    def __init__(self, axes: Sequence[int] = (2,), **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.axes = tuple(int(a) for a in axes)

    def call(self, x: Any) -> Any:
        for axis in self.axes:
            x = ops.flip(x, axis=axis)
        return x

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return input_shape

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "axes": list(self.axes)}


@keras.saving.register_keras_serializable(package=PACKAGE)
class RankedProbabilities(keras.layers.Layer):
    """Evidence (n, 9) -> (n, 3) normal / benign / malignant probabilities.

    Two calibrated scores, each a fixed linear read-out of the evidence through a sigmoid
    (Platt scaling fitted on held-out evidence): q_a = P(abnormal), q_m = P(malignant).
    Then P(normal) = 1 - q_a, P(malignant) = min(q_m, q_a), P(benign) = the rest. So the
    abnormal score ranks images exactly as its evidence does (a multinomial head over all
    nine features let the many normal images pull every prediction to "normal" and lost
    that ranking), and P(malignant) keeps its own evidence's ranking unless it would exceed
    P(abnormal).
    """

    def __init__(self, abnormal: Sequence[float], abnormal_bias: float,
                 malignant: Sequence[float], malignant_bias: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.abnormal = [float(v) for v in abnormal]
        self.malignant = [float(v) for v in malignant]
        self.abnormal_bias = float(abnormal_bias)
        self.malignant_bias = float(malignant_bias)

    def call(self, evidence: Any) -> Any:
        evidence = ops.cast(evidence, "float32")
        q_a = ops.sigmoid(ops.matmul(evidence, ops.convert_to_tensor(self.abnormal))
                          + self.abnormal_bias)
        q_m = ops.sigmoid(ops.matmul(evidence, ops.convert_to_tensor(self.malignant))
                          + self.malignant_bias)
        p_m = ops.minimum(q_m, q_a)
        return ops.stack([1.0 - q_a, q_a - p_m, p_m], axis=-1)

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, int]:
        return (input_shape[0], 3)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "abnormal": self.abnormal,
                "abnormal_bias": self.abnormal_bias, "malignant": self.malignant,
                "malignant_bias": self.malignant_bias}
