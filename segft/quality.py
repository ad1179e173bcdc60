"""Degenerate models, caught from their predictions: how much foreground a run predicts against the truth, and
whether its masks are identical to those of a run trained with another number of images.

A fine-tuned model that collapsed to "everything is foreground" (or to "nothing") still gets a Dice, and the
study still ranks it. Two signs give it away without looking at the images:

- the **foreground ratio**, predicted / true foreground pixels summed over a dataset's images, above
  ``DEGENERATE_RATIO`` (3: it calls background objects) or below its inverse (it misses most of the objects);
- **identical masks** at two sizes of the same arm and repeat on every image both were scored on: training on
  more images changed nothing, the mark of a model stuck on a constant answer.

Plain numpy and pandas, so the study (on validation images, to choose its champion) and the analysis (on test
images, to flag runs in the report) apply the same rule.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd

#: A run predicting more than this many times the true foreground, or less than its inverse, is flagged.
DEGENERATE_RATIO = 3.0
#: Columns ``flag_runs`` needs, one row per (run, dataset, image).
FLAG_COLUMNS = ["run_id", "arm", "n_images", "repeat", "dataset", "image", "tp", "fp", "fn", "prediction_digest"]


def foreground_ratio(tp: int, fp: int, fn: int) -> float:
    """Predicted / true foreground pixels, ``(tp + fp) / (tp + fn)``; 1 when both are 0, inf when only the truth is."""
    predicted, true = tp + fp, tp + fn
    if true == 0:
        return 1.0 if predicted == 0 else float("inf")
    return predicted / true


def prediction_digest(mask: np.ndarray) -> str:
    """A short fingerprint of a binary mask (shape and pixels): equal digests mean identical masks."""
    mask = np.asarray(mask).astype(bool)
    return hashlib.sha1(repr(mask.shape).encode() + np.packbits(mask).tobytes()).hexdigest()[:16]


def ratio_problem(ratio: float, where: str) -> str | None:
    """A sentence for a biologist when ``ratio`` is out of [1/``DEGENERATE_RATIO``, ``DEGENERATE_RATIO``], else None."""
    if ratio > DEGENERATE_RATIO:
        return (f"marks {ratio:.1f}x as many pixels as the objects really cover on {where}: it calls background "
                "foreground (over-segmentation)")
    if ratio < 1 / DEGENERATE_RATIO:
        return f"finds only {ratio:.2f}x of the object pixels on {where}: it misses most objects (under-segmentation)"
    return None


def flag_runs(table: pd.DataFrame, where: str = "{dataset} test images") -> pd.DataFrame:
    """Flag the degenerate runs of a per-image table.

    Args:
        table: Columns ``FLAG_COLUMNS`` (``prediction_digest`` may be missing for runs logged before it existed:
            those are only checked by ratio).
        where: How to name the images in the message; ``{dataset}`` is filled in.

    Returns:
        One row per flagged (run, dataset): ``run_id, arm, n_images, repeat, dataset, fg_ratio, reason``.
    """
    columns = ["run_id", "arm", "n_images", "repeat", "dataset", "fg_ratio", "reason"]
    if table.empty:
        return pd.DataFrame(columns=columns)
    keys = ["run_id", "arm", "n_images", "repeat", "dataset"]
    totals = table.groupby(keys, sort=True)[["tp", "fp", "fn"]].sum().reset_index()
    reasons: dict[tuple, list[str]] = {}
    ratios = {}
    for row in totals.itertuples(index=False):
        key = (row.run_id, row.arm, row.n_images, row.repeat, row.dataset)
        ratios[key] = foreground_ratio(row.tp, row.fp, row.fn)
        problem = ratio_problem(ratios[key], where.format(dataset=row.dataset))
        if problem:
            reasons.setdefault(key, []).append(problem)
    if "prediction_digest" in table.columns:
        for key, reason in _identical_sizes(table, where).items():
            reasons.setdefault(key, []).append(reason)
    rows = [dict(zip(columns, (*key, ratios[key], "; ".join(text)))) for key, text in sorted(reasons.items(), key=str)]
    return pd.DataFrame(rows, columns=columns)


def _identical_sizes(table: pd.DataFrame, where: str) -> dict[tuple, str]:
    """Runs of one arm and repeat whose masks equal those of another size on every image both were scored on."""
    found: dict[tuple, str] = {}
    scored = table.dropna(subset=["prediction_digest"])
    for (arm, repeat, dataset), group in scored.groupby(["arm", "repeat", "dataset"], sort=True):
        runs = {(run, n): part.set_index("image")["prediction_digest"]
                for (run, n), part in group.groupby(["run_id", "n_images"], sort=True)}
        for (run, n), digests in runs.items():
            same = sorted(other_n for (other, other_n), other_digests in runs.items() if other != run
                          and _same_masks(digests, other_digests))
            if same:
                sizes = ", ".join(f"n={m}" for m in same)
                found[(run, arm, n, repeat, dataset)] = (
                    f"gives exactly the same masks as the {arm} run with {sizes} (repeat {repeat}) on "
                    f"{where.format(dataset=dataset)}: more training images changed nothing, the sign of a "
                    "model stuck on one answer")
    return found


def _same_masks(a: pd.Series, b: pd.Series) -> bool:
    common = a.index.intersection(b.index)
    return len(common) > 0 and bool((a[common] == b[common]).all())
