"""Does a same-seed re-run of the training command reproduce a model's figures?

TensorFlow's CPU kernels are not bit-exact across thread counts and load, so a re-run never
gives the same bytes; the question is whether its validation figures stay within noise.
The noise yardstick is the model's own bootstrap 95% interval: a re-run reproduces the
model when both of its validation AUCs lie inside the half-width of that interval around
the model's. Ablation rows are listed too (matched by test-time flips and head), with
their largest move: they come from the same trunks but other heads, some of which (the
nine-feature regression) amplify small changes in the trunks, so they inform and do not
decide.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

_VALIDATION = (("AUC abnormal", "auc_abnormal"), ("AUC malignant", "auc_malignant"),
               ("sensitivity at 90% specificity", "sensitivity_at_90_specificity"),
               ("accuracy", "accuracy"), ("ECE", "ece"))


def _row(metric: str, this: float | None, rerun: float | None) -> dict[str, Any]:
    difference = None if this is None or rerun is None else rerun - this
    return {"metric": metric, "this": this, "rerun": rerun, "difference": difference}


def _half_width(meta: Mapping[str, Any]) -> float:
    """Mean half-width of the model's bootstrap 95% intervals of its two AUCs."""
    ci = meta["validation"].get("ci95") or {}
    widths = [(hi - lo) / 2 for lo, hi in (ci.get(k) or (None, None)
                                            for k in ("auc_abnormal", "auc_malignant"))
              if lo is not None and hi is not None]
    if not widths:
        raise ValueError("the model's metadata has no bootstrap intervals of its AUCs")
    return sum(widths) / len(widths)


def compare_runs(this: Mapping[str, Any], rerun: Mapping[str, Any]) -> dict[str, Any]:
    """The reproducibility record of ``this`` model's metadata against a ``rerun``'s."""
    if this.get("seed") != rerun.get("seed"):
        raise ValueError(f"seeds differ ({this.get('seed')} vs {rerun.get('seed')}): not a "
                         "same-seed re-run")
    this_data, rerun_data = this["training_data"]["sha256"], rerun["training_data"]["sha256"]
    if this_data != rerun_data:
        raise ValueError("the two runs trained on different data (training data sha256 "
                         f"{this_data[:12]} vs {rerun_data[:12]})")
    rows = [_row(label, this["validation"].get(key), rerun["validation"].get(key))
            for label, key in _VALIDATION]
    rows.append(_row("heatmap peak inside circle", this["localisation"]["peak_inside_circle"],
                     rerun["localisation"]["peak_inside_circle"]))
    theirs = {(r["flips"], r["head"]): r for r in rerun.get("ablation") or []}
    ablation_rows = [
        _row(f"{label}, flips {row['flips']}, {row['head']}", row[key], other[key])
        for row in this.get("ablation") or []
        if (other := theirs.get((row["flips"], row["head"]))) is not None
        for key, label in (("auc_abnormal", "AUC abnormal"), ("auc_malignant", "AUC malignant"))
    ]
    largest = max((abs(r["difference"]) for r in rows[:2] if r["difference"] is not None),
                  default=0.0)  # rows[:2]: the two validation AUCs
    ablation = max((abs(r["difference"]) for r in ablation_rows
                    if r["difference"] is not None), default=None)
    rows += ablation_rows
    half_width = _half_width(this)
    verdict = ("Within noise: both re-run validation AUCs lie inside this model's 95% "
               "interval half-width." if largest <= half_width else
               "NOT within noise: a re-run validation AUC moved by more than this model's "
               "95% interval half-width.")
    if ablation is not None:
        verdict += f" The ablation rows moved by up to {ablation:.3f}."
    return {
        "rerun": f"{rerun['name']} {rerun['version']}, sha256 {rerun['sha256'][:12]}",
        "date": dt.date.today().isoformat(),
        "rerun_minutes": round(rerun["training"]["seconds"] / 60, 1),
        "rerun_best_epochs": rerun["training"]["best_epochs"],
        "max_auc_difference": largest, "max_ablation_difference": ablation,
        "ci_half_width": half_width,
        "reproduced": largest <= half_width, "verdict": verdict, "rows": rows,
    }
