"""Which runs a study consists of: every arm x size x repeat (``plan_runs``), the pool images each size uses in
each repeat (``draw_pool_indices``), and which repeats train a base model (``base_repeats``). Pure functions of
the study's settings and the pool's size: nothing here trains, reads data or talks to MLflow.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from segft import schema
from segft.config import StudyConfig


@dataclass(frozen=True)
class PlannedRun:
    """One child run of a study: an arm trained with ``n_images`` Dataset 2 images in repeat ``repeat``."""

    arm: str
    n_images: int
    repeat: int
    pool_indices: tuple[int, ...]

    @property
    def key(self) -> str:
        """Stable identity within a study, stored as the run's ``segft.run_key`` tag."""
        return f"{self.arm}/n{self.n_images}/r{self.repeat}"


def draw_pool_indices(pool_size: int, sizes: tuple[int, ...], repeat: int, seed: int, resample: bool) -> dict[int, tuple[int, ...]]:
    """Which pool images each size uses in one repeat; every larger size contains the smaller ones.

    Repeat 0 (and every repeat when ``resample`` is off) takes the first ``n`` images, as the original protocol
    does; other repeats take the first ``n`` of a random permutation seeded by ``(seed, repeat)``.
    """
    order = np.arange(pool_size)
    if resample and repeat > 0:
        order = np.random.default_rng([seed, repeat]).permutation(pool_size)
    return {n: tuple(sorted(int(i) for i in order[:n])) for n in sizes}


def plan_runs(config: StudyConfig, pool_size: int) -> list[PlannedRun]:
    """Every trained child run of the study (not the base model, not ``threshold``), in execution order
    (repeat, size, arm)."""
    plan = []
    trained = [arm for arm in config.arms if arm != schema.THRESHOLD_ARM]
    for repeat in range(config.repeats):
        subsets = draw_pool_indices(pool_size, config.sizes, repeat, config.train.seed, config.resample)
        for n in sorted(config.sizes):
            plan.extend(PlannedRun(arm, n, repeat, subsets[n]) for arm in trained)
    return plan


def base_repeats(config: StudyConfig) -> range:
    """The repeats that train a base model: every repeat with ``base_per_repeat``, else repeat 0 only."""
    return range(config.repeats if config.base_per_repeat else 1)


def base_run_key(repeat: int) -> str:
    """Run key of the base model (raw arm) of ``repeat``."""
    return f"base/r{repeat}"
