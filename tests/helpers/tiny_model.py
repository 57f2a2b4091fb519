"""A tiny real Keras model for tests: same file format and metadata as a shipped model."""

from __future__ import annotations

import shutil
from pathlib import Path

from models.registry import MODEL_FILE, write_model_dir
from shared.imaging.preprocess import PREPROCESSING_VERSION

TINY_INPUT = (96, 80)


# A bilateral head like a trained one's (models.bilateral), so that exam results in the
# pipeline tests go through the bilateral reading.
TINY_BILATERAL = {"abnormal": {"own": 1.2, "partner": -0.9, "bias": -0.4},
                  "malignant": {"own": 1.0, "partner": -0.3, "bias": -0.5}}


def build_tiny_model(directory: Path, *, seed: int = 7, version: str = "0.0.1") -> Path:
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((*TINY_INPUT, 1))
    x = keras.layers.Conv2D(4, 5, strides=4, activation="relu")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(3, activation="softmax")(x)
    model = keras.Model(inputs, outputs)
    directory.mkdir(parents=True, exist_ok=True)
    model.save(directory / MODEL_FILE)
    write_model_dir(directory, name="tiny-test-model", version=version, input_size=TINY_INPUT,
                    preprocessing_version=PREPROCESSING_VERSION,
                    extra={"note": "random weights; tests only",
                           "bilateral": {"scores": ["abnormal", "malignant"],
                                         "head": TINY_BILATERAL, "images_paired": 0}})
    return directory


def change_model_files(change: str, live: Path, model_ref: Path, other_version: Path) -> None:
    """What happens to a running worker's model files: ``replaced`` (re-copied with
    ``other_version``'s), ``deleted`` (cleaned up after a newer version was activated), or
    ``symlink_moved`` (``model_ref``, a symlink, now points at ``other_version``)."""
    if change == "replaced":
        for name in (MODEL_FILE, "metadata.json"):
            shutil.copy(other_version / name, live / name)
    elif change == "deleted":
        shutil.rmtree(live)
    else:
        model_ref.unlink()
        model_ref.symlink_to(other_version, target_is_directory=True)
