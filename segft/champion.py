"""The champion rule: which fine-tuned model a study recommends, and why (``choose_champion``).

The candidates are a study's ``finetune`` runs, scored on selection images that are never test images
(``selection_sets``: the whole Dataset 2 pool and Dataset 1's training images); a candidate flagged as
degenerate there (``flag_candidates``, ``segft.quality``) is out; differences inside the noise are ties, and a
tie goes to the run with the most images. ``segft.study`` gathers the scores and points the ``champion`` alias
at the choice.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from segft import quality, schema
from segft.data.imageset import ImageSet
from segft.data.split import StudySplit
from segft.plan import PlannedRun
from segft.runs import RunResult


#: The champion rule's image bootstrap: resamples, coverage of the interval and seed (fixed: the same runs always
#: give the same champion).
BOOTSTRAP_RESAMPLES, BOOTSTRAP_CONFIDENCE, BOOTSTRAP_SEED = 2000, 0.95, 0


@dataclass(frozen=True)
class Candidate:
    """A fine-tuned model a study may recommend.

    Attributes:
        key: Its run key (``finetune/n20/r1``).
        model_uri: Its registered model version.
        n_images: Dataset 2 images it trained on.
        repeat: Its repeat.
        dice: ``(image, Dice)`` on each Dataset 2 selection image (the whole fine-tuning pool), sorted by image.
        degenerate: Why ``segft.quality`` flags it on its selection images; empty when it does not.
    """

    key: str
    model_uri: str
    n_images: int
    repeat: int
    dice: tuple[tuple[str, float], ...]
    degenerate: str = ""

    @property
    def mean_dice(self) -> float:
        """Mean Dice over its Dataset 2 selection images (nan without any)."""
        return float(np.mean([d for _, d in self.dice])) if self.dice else float("nan")


@dataclass(frozen=True)
class ChampionChoice:
    """What ``choose_champion`` decided: the champion (None when no candidate is left), one sentence saying why,
    and the keys of the candidates tied with the best one within noise (the best included)."""

    champion: Candidate | None
    reason: str
    tied: tuple[str, ...] = ()


def choose_champion(candidates: list[Candidate]) -> ChampionChoice:
    """The fine-tuned model a study recommends, and why; it never looks at test images.

    Rule:

    1. *Selection images, the same for every candidate*: every ``finetune`` run is scored after training on the
       whole Dataset 2 fine-tuning pool and on Dataset 1's base-training images (``val_*`` metrics, never test
       images), so every size, n=20 included, competes on the same images. Some of them are the candidate's own
       training images (more for larger n): the score favours fitting them, which is why rule 3 treats small
       differences as ties.
    2. *Never a flagged run*: a candidate flagged by ``segft.quality.flag_runs`` on its selection images
       (foreground ratio outside [1/3, 3] on either dataset's: Dataset 1's catches a model that forgot Dataset 1;
       or the same masks as another size of its repeat) is out, as is one without Dataset 2 selection scores.
    3. *Differences inside the noise are ties*: the best candidate has the highest mean Dataset 2 selection Dice;
       every candidate whose paired per-image difference to the best (on the images both were scored on) has a
       95 % percentile-bootstrap interval (``BOOTSTRAP_RESAMPLES`` image resamples, fixed seed) containing 0 is
       tied with it. Among the tied candidates the one trained on the most images wins, then the lowest repeat.

    Returns:
        The champion (None when every candidate is out), the reason in one sentence and the tied keys.
    """
    flagged = [c for c in candidates if c.degenerate]
    unscored = [c for c in candidates if not c.degenerate and not c.dice]
    sound = [c for c in candidates if not c.degenerate and c.dice]
    left_out = "".join(
        f"; {len(group)} candidate(s) {why}: {', '.join(c.key for c in group)}"
        for group, why in ((flagged, "flagged as degenerate on their selection images"),
                           (unscored, "without Dataset 2 selection scores")) if group)
    if not candidates:
        return ChampionChoice(None, "no champion: the study has no fine-tuned candidate.")
    if not sound:
        details = "".join(f" {c.key} {c.degenerate}." for c in flagged)
        return ChampionChoice(None, f"no champion: all {len(candidates)} fine-tuned candidates are out{left_out}."
                                    f"{details}")
    best = max(sound, key=lambda c: (c.mean_dice, c.n_images, -c.repeat))
    tied = [c for c in sound if c is best or _tied(best, c)]
    champion = max(tied, key=lambda c: (c.n_images, -c.repeat))
    pool = f"the {len(best.dice)} Dataset 2 pool images"
    if champion is best:
        why = f"best mean Dataset 2 Dice on {pool} ({best.mean_dice:.3f}) among {len(sound)} unflagged candidates"
    else:
        why = (f"mean Dataset 2 Dice {champion.mean_dice:.3f} on {pool}, tied with the best of {len(sound)} "
               f"unflagged candidates, {best.key} ({best.mean_dice:.3f})")
    noise = f"{BOOTSTRAP_CONFIDENCE:.0%} paired image bootstrap"
    if len(tied) > 1:
        why += (f"; {len(tied)} candidates tied within noise ({noise}): the one with the most images (then the "
                "lowest repeat) wins")
    else:
        why += f"; every other is below it beyond noise ({noise})"
    return ChampionChoice(champion, f"{champion.key}: {why}{left_out}.", tuple(c.key for c in tied))


def _tied(best: Candidate, other: Candidate) -> bool:
    """Whether the 95 % percentile-bootstrap interval of the mean paired difference ``best - other`` over the
    images both were scored on contains 0 (no image in common: not comparable, not tied)."""
    theirs = dict(other.dice)
    differences = np.array([d - theirs[image] for image, d in best.dice if image in theirs])
    if differences.size == 0:
        return False
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    means = differences[rng.integers(0, differences.size, (BOOTSTRAP_RESAMPLES, differences.size))].mean(axis=1)
    tail = (1 - BOOTSTRAP_CONFIDENCE) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return bool(low <= 0 <= high)


def selection_sets(split: StudySplit) -> tuple[ImageSet, ImageSet]:
    """The images a study's ``finetune`` runs are scored on to choose the champion (``choose_champion``), the same
    for every run and never a test image: the whole Dataset 2 fine-tuning pool and Dataset 1's base-training
    images."""
    return split.finetune_pool, split.base_train


def flag_candidates(plan: list[PlannedRun], tables: dict[str, pd.DataFrame]) -> dict[str, str]:
    """``{run key: reason}`` of the fine-tuned runs that are degenerate on their selection images of either
    dataset (``segft.quality.flag_runs``: foreground ratio out of range, or the same masks as another size of
    the same repeat); ``tables`` as ``selection_tables`` returns them."""
    planned = {p.key: p for p in plan}
    parts = [table.assign(run_id=key, arm=planned[key].arm, n_images=planned[key].n_images,
                          repeat=planned[key].repeat) for key, table in tables.items()]
    if not parts:
        return {}
    flags = quality.flag_runs(pd.concat(parts, ignore_index=True), where="its {dataset} selection images")
    reasons: dict[str, list[str]] = {}
    for key, reason in zip(flags["run_id"], flags["reason"]):  # one row per flagged (run, dataset)
        reasons.setdefault(key, []).append(reason)
    return {key: "; ".join(text) for key, text in reasons.items()}


def candidates_of(plan: list[PlannedRun], results: dict[str, RunResult],
                  tables: dict[str, pd.DataFrame]) -> list[Candidate]:
    """The study's finetune runs as ``Candidate``s: their Dataset 2 selection Dice per image and their flags."""
    flags = flag_candidates(plan, tables)
    candidates = []
    for p in plan:
        if p.arm != schema.FINETUNE_ARM:
            continue
        table = tables.get(p.key)
        dice = () if table is None else tuple(sorted(
            (str(row.image), float(row.dice)) for row in table[table["dataset"] == schema.DATASET2].itertuples()))
        candidates.append(Candidate(p.key, results[p.key].model_uri, p.n_images, p.repeat, dice,
                                    flags.get(p.key, "")))
    return candidates


