"""Do the study's intervals cover? Simulated studies with a known mean, a repeat spread and an image spread,
y[r, i] = mu + a_r + b_i + e_ri (repeats crossed with test images), scored with ``analysis.summary.crossed_ci``
and, for comparison, with the scheme it replaced (images drawn, then repeats redrawn within each image).

``tests/test_intervals.py`` asserts the coverage; this script writes it for the README:

    python benchmarks/interval_coverage.py --out benchmarks/results/interval-coverage.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from analysis import summary

MU = 0.6
STUDIES = 300
RESAMPLES = 999


def simulated_study(rng: np.random.Generator, repeats: int, images: int, sd_repeat: float, sd_image: float,
                    sd_noise: float) -> pd.DataFrame:
    """One study's cell: every repeat scored on the same test images."""
    y = (MU + rng.normal(0, sd_repeat, (repeats, 1)) + rng.normal(0, sd_image, (1, images))
         + rng.normal(0, sd_noise, (repeats, images)))
    repeat, image = np.meshgrid(np.arange(repeats), np.arange(images), indexing="ij")
    return pd.DataFrame({"repeat": repeat.ravel(), "image": [f"{i:03d}" for i in image.ravel()], "dice": y.ravel()})


def nested_ci(study: pd.DataFrame, rng: np.random.Generator) -> tuple[float, float]:
    """The scheme this module replaced: draw images, then redraw repeats independently within each drawn image."""
    y = study.pivot(index="image", columns="repeat", values="dice").to_numpy()
    images, repeats = y.shape
    drawn = rng.integers(0, images, (RESAMPLES, images))
    within = rng.integers(0, repeats, (RESAMPLES, images, repeats))
    means = y[drawn[..., None], within].mean(axis=(1, 2))
    low, high = np.quantile(means, [0.025, 0.975])
    return float(low), float(high)


def coverage(repeats: int, images: int, sd_repeat: float, sd_image: float, sd_noise: float,
             scheme: str = "crossed") -> float:
    """Share of ``STUDIES`` simulated studies whose 95 % interval covers ``MU``."""
    rng = np.random.default_rng(20)
    hits = 0
    for index in range(STUDIES):
        study = simulated_study(rng, repeats, images, sd_repeat, sd_image, sd_noise)
        if scheme == "crossed":
            low, high = summary.crossed_ci(study, n_resamples=RESAMPLES, random_state=index)
        else:
            low, high = nested_ci(study, rng)
        hits += low <= MU <= high
    return hits / STUDIES


COVERAGE_CASES = [  # name, repeats, images, sd repeat, sd image, sd noise
    ("5 repeats, 11 images (issue 20's case)", 5, 11, 0.1, 0.1, 0.05),
    ("3 repeats, 11 images, large repeat spread", 3, 11, 0.15, 0.1, 0.05),
    ("1 repeat: the image bootstrap", 1, 11, 0.0, 0.1, 0.05),
]


def main() -> None:
    from provenance import provenance

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    cases = [{"case": name, "repeats": r, "images": i, "sd_repeat": a, "sd_image": b, "sd_noise": e,
              "crossed": coverage(r, i, a, b, e), "nested": coverage(r, i, a, b, e, "nested") if r > 1 else None}
             for name, r, i, a, b, e in COVERAGE_CASES]
    record = {**provenance("intervals"), "studies": STUDIES, "resamples": RESAMPLES, "true_mean": MU,
              "ci_method": summary.CI_METHOD, "cases": cases}
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps(cases, indent=1))


if __name__ == "__main__":
    main()
