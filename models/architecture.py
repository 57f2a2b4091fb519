"""A small all-convolutional patch classifier, and the whole-image model built from it.

Following Shen et al. (2019, "Deep learning to improve breast cancer detection on screening
mammography"): the network first learns normal / benign / malignant on small patches cut
around the annotated circles, where the signal is dense; the same convolutions then slide
over the whole image (no retraining needed, it is fully convolutional), giving a
per-location probability map. A tiny head turns the map's strongest evidence into
calibrated image probabilities, and the map itself is the heatmap.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

STRIDE = 16  # input pixels per output location
WIDTHS = (24, 48, 96, 144, 192)
# Test-time flips of the shipped model (axes of a (n, h, w, 1) batch; () = as is). Model
# 1.1.0 read each image and its left-right mirror: in its own ablation the mirror moved the
# AUCs by -0.01 / +0.00 (noise) for twice the compute, so from 1.2.0 the image is read once
# and every training run measures the mirror as the alternative (MODEL_CARD.md).
TTA_FLIPS: tuple[tuple[int, ...], ...] = ((),)
MIRROR_TTA: tuple[tuple[int, ...], ...] = ((), (2,))
# ``mammo train --local-contrast``: the trunks read each pixel against the breast around it
# (models.layers.LocalContrast, Gaussian sigma in input pixels). Measured against the plain
# image with tests/benchmarks/model_variants.py and not better within noise, so off by default.
LOCAL_CONTRAST_SIGMA = 24.0


def build_trunk(name: str, *, widths: Sequence[int] = WIDTHS, stage_convs: int = 1,
                dropout: float = 0.2) -> Any:
    """Conv layers mapping (h, w, 1) to per-location class logits (h/16, w/16, 3).

    ``stage_convs``: 3 x 3 convolutions in each of the three stages after a pooling (VGG's
    stacking: more non-linearity and a wider receptive field at the same resolution).
    """
    import keras

    def conv(width: int, **kw: Any) -> list[Any]:
        return [keras.layers.Conv2D(width, 3, padding="same", use_bias=False, **kw),
                keras.layers.BatchNormalization(momentum=0.9), keras.layers.ReLU()]

    layers: list[Any] = [keras.Input((None, None, 1)), *conv(widths[0], strides=2)]
    for width in widths[1:4]:
        layers += [keras.layers.MaxPooling2D(2)]
        for _ in range(stage_convs):
            layers += conv(width)
    layers += [*conv(widths[4]), keras.layers.SpatialDropout2D(dropout),
               keras.layers.Conv2D(3, 1, kernel_regularizer=keras.regularizers.L2(1e-4))]
    return keras.Sequential(layers, name=name)


def build_patch_model(trunk: Any, patch: int) -> Any:
    """Trunk + average over the patch's locations + softmax: what patches are trained with."""
    import keras

    inputs = keras.Input((patch, patch, 1))
    logits = keras.layers.GlobalAveragePooling2D()(trunk(inputs))
    return keras.Model(inputs, keras.layers.Softmax()(logits), name="patch_classifier")


def trunk_logits(trunk: Any, inputs: Any, flips: Sequence[Sequence[int]] = ((),)) -> Any:
    """The trunk's per-location logits, averaged over ``flips`` of the input (test-time
    augmentation): each flipped copy's map is flipped back so locations line up. A lesion
    has no orientation, and the maps of mirrored copies disagree mostly where they are
    noise. Empty axes = the image itself."""
    import keras

    from models.layers import Flip

    maps = [Flip(axes)(trunk(Flip(axes)(inputs))) if axes else trunk(inputs) for axes in flips]
    return maps[0] if len(maps) == 1 else keras.layers.Average()(maps)


def build_whole_image_model(
    trunks: Sequence[Any], *, input_size: tuple[int, int], patch: int,
    evidence_stats: Sequence[tuple[np.ndarray, np.ndarray]], head: dict[str, Any],
    flips: Sequence[Sequence[int]] = TTA_FLIPS, top_k: int = 5,
    local_contrast: float | None = None,
) -> Any:
    """Ensemble of trunks (each with flip TTA) -> per-trunk standardised evidence, averaged
    -> ``RankedProbabilities`` (``head`` is its config, see ``models.calibration``).

    Outputs ``{"probabilities": (n, 3), "heatmap": (n, gh, gw)}`` from one forward pass.
    ``evidence_stats`` holds each trunk's (mean, std) of its evidence on its own training
    images: trunks from different folds speak on different scales, and the head was fitted
    on standardised evidence. The heatmap is the trunks' mean P(abnormal) map.
    ``local_contrast`` (a sigma) puts the trunks behind ``LocalContrast``, as they trained.
    """
    import keras

    from models.layers import AbnormalityMap, LesionEvidence, LocalContrast, RankedProbabilities

    inputs = keras.Input((*input_size, 1), name="image")
    seen = inputs if local_contrast is None else LocalContrast(local_contrast)(inputs)
    evidences, heatmaps = [], []
    for trunk, (mean, std) in zip(trunks, evidence_stats, strict=True):
        logits = keras.layers.AveragePooling2D(patch // STRIDE, strides=1)(
            trunk_logits(trunk, seen, flips))
        probabilities = keras.layers.Softmax(axis=-1)(logits)
        scale = keras.layers.Normalization(mean=np.asarray(mean, np.float32),
                                           variance=np.asarray(std, np.float32) ** 2)
        evidences.append(scale(LesionEvidence(top_k=top_k)(probabilities)))
        heatmaps.append(AbnormalityMap()(probabilities))
    evidence = evidences[0] if len(evidences) == 1 else keras.layers.Average()(evidences)
    heatmap = heatmaps[0] if len(heatmaps) == 1 else keras.layers.Average()(heatmaps)
    outputs = {"probabilities": RankedProbabilities(**head, name="probabilities")(evidence),
               "heatmap": keras.layers.Identity(name="heatmap")(heatmap)}
    return keras.Model(inputs, outputs, name="mammo_patch_fcn")


def build_map_model(trunks: Sequence[Any], *, input_size: tuple[int, int], patch: int,
                    flips: Sequence[Sequence[int]] = ((),), top_k: int = 5) -> Any:
    """Trunks -> ``{"evidence": (n, 9), "heatmap": (n, gh, gw)}``: the head's inputs."""
    import keras

    from models.layers import AbnormalityMap, LesionEvidence

    inputs = keras.Input((*input_size, 1))
    maps = [trunk_logits(t, inputs, flips) for t in trunks]
    logits = maps[0] if len(maps) == 1 else keras.layers.Average()(maps)
    logits = keras.layers.AveragePooling2D(patch // STRIDE, strides=1)(logits)
    probabilities = keras.layers.Softmax(axis=-1)(logits)
    return keras.Model(inputs, {"evidence": LesionEvidence(top_k=top_k)(probabilities),
                                "heatmap": AbnormalityMap()(probabilities)})
