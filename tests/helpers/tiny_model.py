"""A tiny real Keras model for tests: same file format and metadata as a shipped model."""

from __future__ import annotations

from pathlib import Path

from models.registry import MODEL_FILE, write_model_dir
from shared.imaging.preprocess import PREPROCESSING_VERSION

TINY_INPUT = (96, 80)


def build_tiny_model(directory: Path, *, seed: int = 7) -> Path:
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((*TINY_INPUT, 1))
    x = keras.layers.Conv2D(4, 5, strides=4, activation="relu")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(3, activation="softmax")(x)
    model = keras.Model(inputs, outputs)
    directory.mkdir(parents=True, exist_ok=True)
    model.save(directory / MODEL_FILE)
    write_model_dir(directory, name="tiny-test-model", version="0.0.1", input_size=TINY_INPUT,
                    preprocessing_version=PREPROCESSING_VERSION,
                    extra={"note": "random weights; tests only"})
    return directory
