"""The trunks' input transform: each breast pixel against the breast around it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("keras")


def _breast(level: float, size: int = 128) -> np.ndarray:
    """A half-disc of uniform tissue at ``level`` against the chest wall, background 0."""
    rows, cols = np.mgrid[0:size, 0:size]
    image = np.zeros((size, size), np.float32)
    image[(rows - size / 2) ** 2 + cols**2 < (0.45 * size) ** 2] = level
    return image


def _seen(image: np.ndarray, sigma: float = 6.0) -> np.ndarray:
    from models.layers import LocalContrast

    return np.asarray(LocalContrast(sigma)(image[np.newaxis, :, :, np.newaxis]))[0, :, :, 0]


def test_uniform_tissue_is_mid_grey_and_background_stays_black() -> None:
    image = _breast(0.7)
    seen = _seen(image)
    inside, outside = image > 0, image == 0
    # Normalised convolution: the skin line and the image's edge never pull the mean down.
    np.testing.assert_allclose(seen[inside], 0.5, atol=1e-4)
    assert np.all(seen[outside] == 0.0)


def test_a_mass_stands_out_by_its_contrast_not_by_the_breast_density() -> None:
    results = []
    for density in (0.3, 0.6):  # a fatty and a dense breast, the same mass on each
        image = _breast(density)
        image[60:68, 20:28] += 0.2
        seen = _seen(image)
        results.append(seen)
        assert seen[62:66, 22:26].mean() > 0.75  # the mass
        assert abs(float(seen[30, 10]) - 0.5) < 0.02  # tissue far from it
    np.testing.assert_allclose(results[0], results[1], atol=1e-4)


def test_the_training_transform_is_the_shipped_models_layer(tmp_path: Path) -> None:
    """Trunks train on ``seen_by_trunks`` pixels; the saved model applies the same layer."""
    import keras

    from models.architecture import build_map_model, build_trunk, build_whole_image_model
    from models.calibration import fit_head
    from models.datasets import LabelledImage
    from models.layers import LocalContrast
    from models.prepared import PreparedSet
    from models.training import seen_by_trunks
    from shared.enums import Label

    keras.utils.set_random_seed(3)
    rng = np.random.default_rng(3)
    pixels = np.stack([_breast(0.4 + 0.1 * k, 64) + rng.uniform(0, 0.05, (64, 64))
                       * (_breast(1.0, 64) > 0) for k in range(3)]).astype(np.float16)
    images = [LabelledImage(f"i{k}", tmp_path / f"i{k}.png", Label.NORMAL, f"p{k}")
              for k in range(3)]
    data = PreparedSet(images, pixels, [[], [], []], [])
    seen = seen_by_trunks(data, 6.0)
    assert seen_by_trunks(data, None) is data
    assert not np.allclose(seen.pixels, data.pixels)
    # Patches may still only be drawn where the original image has tissue.
    for k in range(3):
        np.testing.assert_array_equal(seen.tissue(k, 0.08)[0], data.tissue(k, 0.08)[0])

    trunk = build_trunk("t", widths=(4, 4, 4, 4, 4))
    last = trunk.layers[-1]  # a random trunk says ~1/3 everywhere: make its map input-driven
    last.set_weights([w * 30 for w in last.get_weights()])
    labels = np.repeat([0, 1, 2], 20)
    evidence = rng.normal(size=(60, 9)) + labels[:, None]
    model = build_whole_image_model([trunk], input_size=(64, 64), patch=32,
                                    evidence_stats=[(np.zeros(9), np.ones(9))],
                                    head=fit_head(evidence, labels).layer_config(),
                                    flips=((),), local_contrast=6.0)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras", compile=False, safe_mode=True)
    images = data.pixels.astype(np.float32)[..., np.newaxis]
    transformed = np.asarray(LocalContrast(6.0)(images))
    # Training stores the transformed pixels as float16, the only difference from the layer.
    np.testing.assert_allclose(seen.pixels.astype(np.float32), transformed[..., 0], atol=5e-4)
    as_trained = build_map_model([trunk], input_size=(64, 64), patch=32)(transformed)
    np.testing.assert_allclose(np.asarray(loaded(images)["heatmap"]),
                               np.asarray(as_trained["heatmap"]), atol=1e-5)
    untransformed = build_map_model([trunk], input_size=(64, 64), patch=32)(images)
    assert np.abs(np.asarray(untransformed["heatmap"]) - np.asarray(as_trained["heatmap"])).max() \
        > 0.01
