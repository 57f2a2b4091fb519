"""The printout of a paired benchmark: two arms trained from the same patch-trained trunks
per split, one row per (split, arm), and each split's gain of the second arm."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def print_paired(rows: Sequence[dict[str, Any]], seeds: Sequence[int], column: str,
                 change: str, detail: str = "") -> None:
    """``rows``: per seed, the first arm's row then the second's (keys of
    ``whole_image_finetune.score`` plus "seed" and "minutes"); ``column`` heads the arm
    column; ``change`` names what the second arm changes; ``detail`` is a key of the second
    arm's row to append to its split's line."""
    print(f"| split (seed) | {column} | AUC abnormal | AUC malignant | ECE | peak in circle |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['seed']} | {r['trunks']} | {r['auc_abnormal']:.3f} | "
              f"{r['auc_malignant']:.3f} | {r['ece']:.3f} | {r['localisation']:.0%} |")
    for seed in seeds:
        first, second = (r for r in rows if r["seed"] == seed)
        gain = ((second["auc_abnormal"] + second["auc_malignant"])
                - (first["auc_abnormal"] + first["auc_malignant"])) / 2
        extra = f"{detail}: {second[detail]}; " if detail else ""
        print(f"seed {seed}: {change} moved the mean of the two AUCs by {gain:+.3f} and the "
              f"localisation by {100 * (second['localisation'] - first['localisation']):+.0f}"
              f" points ({extra}{second['minutes']} min)")
