"""The two custom layers of the whole-image model, registered so ``load_model`` finds them.

Import this module before ``keras.models.load_model`` (``worker.classifier`` does): no
Lambda layers, so models load in Keras' safe mode.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

PACKAGE = "mammo"
FEATURES = 9


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
