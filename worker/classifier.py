"""The Keras classifier: loaded once per process, one forward pass per chunk.

TensorFlow is imported inside ``load`` only. Building a model in a parent process and then
forking hangs the child (tensorflow#27074), so this object must be created after the fork.

Every call also returns a heatmap per image, from the same call: models that output
``{"probabilities", "heatmap"}`` (the shipped patch model) give their own per-location map;
any other Keras model gets Grad-CAM on its last convolutional feature map, computed in the
same traced function as the probabilities.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import zipfile
from dataclasses import dataclass
from typing import Any

import numpy as np

from models.registry import ModelSpec, verify_model
from shared.errors import ModelIntegrityError, first_line
from shared.extras import WORKER, installed

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ForwardPass:
    probabilities: np.ndarray  # (n, 3), rows sum to 1
    seconds: float
    heatmaps: np.ndarray | None = None  # (n, gh, gw) in [0, 1], model input frame


class Classifier:
    """Batched inference with a fixed batch shape, so the graph is traced once.

    ``micro_batch`` > 0 runs each batch as sequential steps of that many images inside the
    one traced call: TensorFlow otherwise runs the ensemble's trunks side by side over the
    whole batch and holds all their activations at once (a worker's peak RSS), while the
    steps cost no speed on a CPU. ``batch_size`` is rounded up to a multiple of it.
    """

    def __init__(
        self, spec: ModelSpec, *, batch_size: int, preprocessing_version: str,
        intra_op_threads: int = 0, inter_op_threads: int = 0, micro_batch: int = 0,
    ) -> None:
        self.spec = spec
        self.micro_batch = micro_batch if 0 < micro_batch < batch_size else 0
        step = self.micro_batch or batch_size
        self.batch_size = -(-batch_size // step) * step
        self._preprocessing_version = preprocessing_version
        self._threads = (intra_op_threads, inter_op_threads)
        self._model: Any = None
        self._infer: Any = None
        self._lock = threading.Lock()
        self.forward_passes = 0
        self.load_seconds = 0.0

    @property
    def input_size(self) -> tuple[int, int]:
        return self.spec.input_size

    def load(self) -> None:
        if self._model is not None:
            return
        started = time.perf_counter()
        verify_model(self.spec, preprocessing_version=self._preprocessing_version)
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TF loads: quiet C++ logs
        with installed(WORKER, needed_for="Classifying images"):
            import tensorflow as tf

            _configure_tensorflow(tf, *self._threads)
            import keras

            import models.layers  # noqa: F401 - registers the shipped model's custom layers

        keras.utils.set_random_seed(0)
        height, width = self.spec.input_size
        spec = tf.TensorSpec((self.batch_size, height, width, 1), tf.float32)
        # A model file Keras cannot load, or one that cannot take the metadata's input, is
        # the product's model error (exit 5, one line), never a traceback.
        unusable = (ValueError, TypeError, KeyError, OSError, zipfile.BadZipFile,
                    tf.errors.OpError)
        try:
            # safe_mode refuses Lambda layers carrying pickled Python code.
            model = keras.models.load_model(self.spec.model_path, compile=False,
                                            safe_mode=True)
        except unusable as exc:
            raise ModelIntegrityError(
                f"{self.spec.model_path} cannot be loaded by Keras ({_first_line(exc)}). "
                "Re-copy or retrain it.") from exc
        _require_input(model, self.spec)
        fn, has_map = _inference_fn(tf, keras, model)
        infer = tf.function(_in_steps(tf, fn, has_map, self.micro_batch),
                            input_signature=[spec], reduce_retracing=True)
        try:
            infer(tf.zeros(spec.shape, tf.float32))  # trace now, not on the first chunk
        except unusable as exc:
            raise ModelIntegrityError(
                f"{self.spec.model_path} cannot score {height}x{width} images, the input_size "
                f"its metadata gives ({_first_line(exc)}). Re-copy or retrain it.") from exc
        self._model, self._infer = model, infer
        self.load_seconds = time.perf_counter() - started
        log.info("model %s %s loaded in %.1f s", self.spec.name, self.spec.version,
                 self.load_seconds)

    def predict(self, batch: np.ndarray) -> ForwardPass:
        """Class probabilities for ``batch`` of shape (n, h, w, 1), n <= batch_size.

        The batch is zero-padded to ``batch_size`` so every call reuses one traced graph.
        """
        self.load()
        n = int(batch.shape[0])
        if n == 0 or n > self.batch_size:
            raise ValueError(f"batch of {n} images; expected 1..{self.batch_size}")
        padded = np.zeros((self.batch_size, *batch.shape[1:]), dtype=np.float32)
        padded[:n] = batch
        with self._lock:
            started = time.perf_counter()
            probabilities, heatmaps = self._infer(padded)
            out = np.asarray(probabilities)[:n].astype(np.float64)
            maps = None if heatmaps is None else np.clip(np.asarray(heatmaps)[:n], 0.0, 1.0)
            elapsed = time.perf_counter() - started
            self.forward_passes += 1
        if out.shape != (n, 3) or not np.all(np.isfinite(out)):
            raise RuntimeError(f"model returned {out.shape} / non-finite values; expected ({n}, 3)")
        out = np.clip(out, 0.0, None)
        out /= np.maximum(out.sum(axis=1, keepdims=True), 1e-12)
        return ForwardPass(out, elapsed, maps)


def _first_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {first_line(exc) or 'no message'}"[:300]


def _require_input(model: Any, spec: ModelSpec) -> None:
    """Refuse a model whose single-channel image input is not the metadata's input_size."""
    shapes = [tuple(getattr(i, "shape", ())) for i in getattr(model, "inputs", None) or ()]
    height, width = spec.input_size
    for shape in shapes:
        if len(shape) != 4 or None in shape[1:3]:
            continue
        if (shape[1], shape[2], shape[3]) != (height, width, 1):
            raise ModelIntegrityError(
                f"{spec.model_path} takes {shape[1]}x{shape[2]}x{shape[3]} images, but its "
                f"metadata gives input_size {height}x{width} (one channel): the metadata does "
                "not describe this model. Re-copy or retrain it.")


def _inference_fn(tf: Any, keras: Any, model: Any) -> tuple[Any, bool]:
    """A function giving (probabilities, heatmaps or None) for a batch in one call of the
    model, and whether it gives heatmaps."""
    sample = model.output
    if isinstance(sample, dict) and {"probabilities", "heatmap"} <= set(sample):

        def with_map(x: Any) -> Any:
            out = model(x, training=False)
            return out["probabilities"], out["heatmap"]

        return with_map, True
    feature_layer = next((layer for layer in reversed(model.layers)
                          if len(getattr(layer, "output", np.empty(0)).shape) == 4), None)
    if feature_layer is None:
        return (lambda x: (model(x, training=False), None)), False
    probe = keras.Model(model.inputs, [feature_layer.output, model.output])

    def grad_cam(x: Any) -> Any:
        # Grad-CAM (Selvaraju et al. 2017) of P(benign) + P(malignant): summing over the
        # batch keeps each image's gradient its own (no cross-image terms at inference).
        with tf.GradientTape() as tape:
            features, probabilities = probe(x, training=False)
            score = tf.reduce_sum(probabilities[:, 1] + probabilities[:, 2])
        grads = tape.gradient(score, features)
        weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
        cam = tf.nn.relu(tf.reduce_sum(weights * features, axis=-1))
        peak = tf.reduce_max(cam, axis=(1, 2), keepdims=True)
        return probabilities, tf.math.divide_no_nan(cam, peak)

    return grad_cam, True


def _in_steps(tf: Any, fn: Any, has_map: bool, step: int) -> Any:
    """``fn`` over sequential slices of ``step`` images (0: the whole batch in one go)."""
    if not step:
        return fn

    def stepped(x: Any) -> Any:
        steps = tf.reshape(x, (-1, step, *x.shape[1:]))

        def one(images: Any) -> Any:
            probabilities, heatmaps = fn(images)
            probabilities = tf.cast(probabilities, tf.float32)
            return (probabilities, tf.cast(heatmaps, tf.float32)) if has_map else probabilities

        kinds = (tf.float32, tf.float32) if has_map else tf.float32
        # parallel_iterations=1: one step's activations alive at a time is the point.
        out = tf.map_fn(one, steps, parallel_iterations=1, fn_output_signature=kinds)
        if not has_map:
            return tf.reshape(out, (-1, out.shape[-1])), None
        probabilities, heatmaps = out
        return (tf.reshape(probabilities, (-1, probabilities.shape[-1])),
                tf.reshape(heatmaps, (-1, *heatmaps.shape[2:])))

    return stepped


def _configure_tensorflow(tf: Any, intra: int, inter: int) -> None:
    try:
        if intra:
            tf.config.threading.set_intra_op_parallelism_threads(intra)
        if inter:
            tf.config.threading.set_inter_op_parallelism_threads(inter)
        for gpu in tf.config.list_physical_devices("GPU"):
            # Several worker processes on one GPU would each grab all of its memory.
            tf.config.experimental.set_memory_growth(gpu, True)
    except RuntimeError:
        # Already initialised in this process (a second Classifier): settings are fixed.
        pass
