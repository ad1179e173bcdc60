"""Degenerate models caught from their masks (segft.quality): foreground ratio and identical masks across sizes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from segft.quality import DEGENERATE_RATIO, flag_runs, foreground_ratio, prediction_digest


@pytest.mark.parametrize("tp, fp, fn, expected", [
    (10, 0, 0, 1.0), (10, 20, 0, 3.0), (5, 0, 5, 0.5), (0, 0, 0, 1.0), (0, 4, 0, float("inf")), (0, 0, 9, 0.0),
])
def test_foreground_ratio(tp, fp, fn, expected):
    assert foreground_ratio(tp, fp, fn) == expected


def test_digest_tells_masks_apart():
    a = np.zeros((8, 8), bool)
    b = a.copy()
    b[3, 3] = True
    assert prediction_digest(a) == prediction_digest(a.astype(np.uint8) * 255)
    assert prediction_digest(a) != prediction_digest(b)
    assert prediction_digest(np.zeros((4, 16), bool)) != prediction_digest(np.zeros((8, 8), bool))


def rows(run: str, n: int, counts: list[tuple[int, int, int]], digests: list[str], arm: str = "finetune",
         repeat: int = 0, dataset: str = "dataset2") -> list[dict]:
    return [{"run_id": run, "arm": arm, "n_images": n, "repeat": repeat, "dataset": dataset, "image": f"img{i}",
             "tp": tp, "fp": fp, "fn": fn, "prediction_digest": d} for i, ((tp, fp, fn), d) in enumerate(zip(counts, digests))]


FLAG_CASES = [  # name, table rows, expected flagged (run, reason fragment)
    ("healthy runs", rows("a", 5, [(90, 10, 10)] * 2, ["x", "y"]) + rows("b", 10, [(95, 5, 5)] * 2, ["z", "w"]), []),
    ("over-segmentation", rows("a", 5, [(100, 301, 0)], ["x"]), [("a", "4.0x as many")]),
    ("just within the bound", rows("a", 5, [(100, 200, 0)], ["x"]), []),
    ("under-segmentation", rows("a", 5, [(10, 0, 90)], ["x"]), [("a", "finds only 0.10x")]),
    ("identical masks at two sizes", rows("a", 5, [(90, 10, 10)] * 2, ["x", "y"])
     + rows("b", 10, [(90, 10, 10)] * 2, ["x", "y"]), [("a", "same masks"), ("b", "same masks")]),
    ("same masks in another repeat are no sign", rows("a", 5, [(90, 10, 10)], ["x"])
     + rows("b", 10, [(90, 10, 10)], ["x"], repeat=1), []),
    ("one differing image is enough", rows("a", 5, [(90, 10, 10)] * 2, ["x", "y"])
     + rows("b", 10, [(90, 10, 10)] * 2, ["x", "q"]), []),
]


@pytest.mark.parametrize("name, table, expected", FLAG_CASES, ids=[case[0] for case in FLAG_CASES])
def test_flag_runs(name, table, expected):
    flags = flag_runs(pd.DataFrame(table))
    assert sorted(flags["run_id"]) == sorted(run for run, _ in expected)
    for run, fragment in expected:
        assert fragment in flags.set_index("run_id").loc[run, "reason"]


def test_ratio_bound_is_three():
    assert DEGENERATE_RATIO == 3.0
