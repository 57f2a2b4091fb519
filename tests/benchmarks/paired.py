"""The printout of a paired benchmark: arms trained from the same patch-trained trunks per
split, one row per (split, arm), and each later arm's gain over the first, per split and
averaged over the splits."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def print_paired(rows: Sequence[dict[str, Any]], seeds: Sequence[int], column: str,
                 detail: str = "") -> None:
    """``rows``: per seed, one row per arm, the reference arm first (keys of
    ``whole_image_finetune.score`` plus "seed" and "minutes"); ``column`` heads the arm
    column; ``detail`` is a key of the later arms' rows to append to their gain lines."""
    print(f"| split (seed) | {column} | AUC abnormal | AUC malignant | ECE | peak in circle |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(table_row(r))
    gains: dict[str, list[tuple[float, float]]] = {}
    for seed in seeds:
        first, *others = (r for r in rows if r["seed"] == seed)
        for other in others:
            gain = ((other["auc_abnormal"] + other["auc_malignant"])
                    - (first["auc_abnormal"] + first["auc_malignant"])) / 2
            moved = 100 * (other["localisation"] - first["localisation"])
            gains.setdefault(other["trunks"], []).append((gain, moved))
            extra = f"{detail}: {other[detail]}; " if detail else ""
            print(f"seed {seed}: {other['trunks']} against {first['trunks']} moved the mean "
                  f"of the two AUCs by {gain:+.3f} and the localisation by {moved:+.0f} points"
                  f" ({extra}{other['minutes']} min)")
    for name, pairs in gains.items():
        print(f"mean over {len(pairs)} splits, {name}: two-AUC mean "
              f"{sum(g for g, _ in pairs) / len(pairs):+.3f} (worst split "
              f"{min(g for g, _ in pairs):+.3f}), localisation "
              f"{sum(m for _, m in pairs) / len(pairs):+.1f} points")


def table_row(r: dict[str, Any]) -> str:
    """One (split, arm) row of ``print_paired``'s table."""
    return (f"| {r['seed']} | {r['trunks']} | {r['auc_abnormal']:.3f} | "
            f"{r['auc_malignant']:.3f} | {r['ece']:.3f} | {r['localisation']:.0%} |")
