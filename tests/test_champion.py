"""The rule by which a study picks the fine-tuned model it recommends (alias ``champion``): the same selection
images for every candidate, never a flagged run, differences inside the noise are ties won by the most images."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
from torch import nn

from segft import study
from segft.config import StudyConfig
from segft.data.imageset import ImageSet
from segft.data.split import StudySplit
from segft.runs import RunResult
from segft.champion import Candidate, candidates_of, choose_champion, flag_candidates, selection_sets
from segft.plan import PlannedRun
from segft.study import selection_tables

POOL = tuple(f"p{i:02d}" for i in range(20))
#: Per-image Dice that differ from image to image, as real ones do: differences between candidates are paired.
SPREAD = np.random.default_rng(7).uniform(0.6, 0.9, len(POOL))


def c(key: str, n_images: int, repeat: int, dice: float | np.ndarray, degenerate: str = "") -> Candidate:
    """A candidate scored on the 20 pool images: ``dice`` per image, or one number added to ``SPREAD``."""
    values = dice if isinstance(dice, np.ndarray) else SPREAD + dice
    return Candidate(key, f"models:/segft-finetuned/{key}", n_images, repeat,
                     tuple(zip(POOL, map(float, values))), degenerate)


CHAMPION_CASES = [  # name, candidates, expected key
    ("n=20 can win", [c("n5", 5, 0, 0.0), c("n10", 10, 0, 0.02), c("n20", 20, 0, 0.08)], "n20"),
    ("a clear lead wins even with fewer images", [c("n5", 5, 0, 0.1), c("n20", 20, 0, 0.0)], "n5"),
    ("a lead inside the noise is a tie won by more images",
     [c("n10", 10, 0, SPREAD + 0.000006 + np.where(np.arange(20) % 2, 0.05, -0.05)), c("n20", 20, 0, 0.0)], "n20"),
    ("equal scores: more images, then the lower repeat",
     [c("a", 10, 2, 0.0), c("b", 10, 1, 0.0), c("c", 5, 0, 0.0)], "b"),
    ("a flagged run never wins, even with the best score",
     [c("best", 20, 0, 0.2, "marks 5.0x as many pixels"), c("n10", 10, 0, 0.0)], "n10"),
    ("a run without selection scores never wins",
     [Candidate("old", "models:/segft-finetuned/old", 20, 0, ()), c("n5", 5, 0, 0.0)], "n5"),
]


@pytest.mark.parametrize("name, candidates, expected", CHAMPION_CASES, ids=[case[0] for case in CHAMPION_CASES])
def test_choose_champion(name, candidates, expected):
    assert choose_champion(candidates).champion.key == expected


def test_a_tie_is_reported_and_a_clear_lead_is_not():
    noisy = SPREAD + 0.000006 + np.where(np.arange(20) % 2, 0.05, -0.05)
    tie = choose_champion([c("finetune/n10/r0", 10, 0, noisy), c("finetune/n20/r1", 20, 1, 0.0)])
    assert set(tie.tied) == {"finetune/n10/r0", "finetune/n20/r1"}
    assert "2 candidates tied within noise" in tie.reason
    assert "the best of 2 unflagged candidates, finetune/n10/r0" in tie.reason
    lead = choose_champion([c("finetune/n5/r0", 5, 0, 0.1), c("finetune/n20/r0", 20, 0, 0.0)])
    assert lead.tied == ("finetune/n5/r0",) and "below it beyond noise" in lead.reason


def test_the_reason_names_the_winner_its_images_and_the_flagged_runs():
    choice = choose_champion([c("finetune/n20/r1", 20, 1, 0.1), c("finetune/n5/r0", 5, 0, 0.0),
                              c("finetune/n10/r0", 10, 0, 0.3, "marks 4.0x as many pixels")])
    assert choice.champion.key == "finetune/n20/r1"
    assert choice.reason.startswith("finetune/n20/r1: best mean Dataset 2 Dice on the 20 Dataset 2 pool images (")
    assert f"({choice.champion.mean_dice:.3f}) among 2 unflagged candidates" in choice.reason
    assert "1 candidate(s) flagged as degenerate on their selection images: finetune/n10/r0" in choice.reason


def test_all_flagged_no_champion_and_the_reason_says_why():
    choice = choose_champion([c("finetune/n5/r0", 5, 0, 0.1, "finds only 0.10x of the object pixels"),
                              c("finetune/n10/r0", 10, 0, 0.0, "gives exactly the same masks")])
    assert choice.champion is None
    assert choice.reason.startswith("no champion: all 2 fine-tuned candidates are out")
    assert "finetune/n5/r0 finds only 0.10x" in choice.reason and "finetune/n10/r0 gives exactly" in choice.reason


def test_no_candidates_no_champion():
    choice = choose_champion([])
    assert choice.champion is None and choice.reason.startswith("no champion")


# ---- from per-image selection tables to candidates: the flags of segft.quality on both datasets

D1 = tuple(f"d{i}" for i in range(4))


def selection_table(dice: float, d1_fp: int = 10, digest: str = "") -> pd.DataFrame:
    """A run's selection table: the 20 pool images (Dataset 2) and 4 Dataset 1 training images, 100 true pixels
    each; ``d1_fp`` false positives per Dataset 1 image."""
    rows = [{"dataset": "dataset2", "image": name, "dice": dice + spread, "tp": 90, "fp": 10, "fn": 10,
             "prediction_digest": f"{digest or dice}-{name}"} for name, spread in zip(POOL, SPREAD)]
    rows += [{"dataset": "dataset1", "image": name, "dice": 0.9, "tp": 90, "fp": d1_fp, "fn": 10,
              "prediction_digest": f"{digest or dice}-{name}"} for name in D1]
    return pd.DataFrame(rows)


def plan_of(*sizes: int) -> list[PlannedRun]:
    return [PlannedRun("finetune", n, 0, tuple(range(n))) for n in sizes]


def results_of(plan: list[PlannedRun], tables: dict[str, pd.DataFrame]) -> dict[str, RunResult]:
    return {p.key: RunResult(f"run-{p.key}", f"models:/segft-finetuned/{p.n_images}", {}, {"val_dice_dataset2": 0.8},
                             tables[p.key]) for p in plan}


def test_a_run_that_forgot_dataset1_is_flagged_and_skipped():
    plan = plan_of(5, 20)
    tables = {"finetune/n5/r0": selection_table(0.0), "finetune/n20/r0": selection_table(0.1, d1_fp=400)}
    flags = flag_candidates(plan, tables)
    assert list(flags) == ["finetune/n20/r0"]
    assert "its dataset1 selection images" in flags["finetune/n20/r0"]
    assert "over-segmentation" in flags["finetune/n20/r0"]
    candidates = candidates_of(plan, results_of(plan, tables), selection_tables(plan, results_of(plan, tables)))
    assert [len(c.dice) for c in candidates] == [20, 20]  # Dataset 2's pool images only
    choice = choose_champion(candidates)
    assert choice.champion.key == "finetune/n5/r0" and "finetune/n20/r0" in choice.reason


def test_identical_masks_at_two_sizes_on_the_selection_images_flag_both():
    plan = plan_of(5, 10, 20)
    tables = {"finetune/n5/r0": selection_table(0.0, digest="stuck"),
              "finetune/n10/r0": selection_table(0.01, digest="stuck"), "finetune/n20/r0": selection_table(0.02)}
    assert set(flag_candidates(plan, tables)) == {"finetune/n5/r0", "finetune/n10/r0"}


def test_candidates_hold_each_pool_image_dice_and_the_run_model():
    plan = plan_of(20)
    tables = {"finetune/n20/r0": selection_table(0.05)}
    (candidate,) = candidates_of(plan, results_of(plan, tables), tables)
    assert candidate.model_uri == "models:/segft-finetuned/20" and candidate.n_images == 20
    assert [image for image, _ in candidate.dice] == sorted(POOL)
    assert candidate.mean_dice == pytest.approx(float(np.mean(SPREAD + 0.05)))


# ---- the selection images a study's finetune runs are scored on

def image_set(name: str, names: tuple[str, ...]) -> ImageSet:
    pixels = tuple(np.zeros((4, 4), np.uint8) for _ in names)
    return ImageSet(name, names, pixels, tuple(p.astype(bool) for p in pixels), "synthetic:test")


SPLIT = StudySplit(base_train=image_set("dataset1", D1), finetune_pool=image_set("dataset2", POOL),
                   test_dataset1=image_set("dataset1", ("t1",)), test_dataset2=image_set("dataset2", ("t2",)))


def test_selection_images_are_the_whole_pool_and_dataset1_training_images_never_test_images():
    pool, dataset1 = selection_sets(SPLIT)
    assert pool.names == POOL and dataset1.names == D1
    assert not {*pool.names, *dataset1.names} & {*SPLIT.test_dataset1.names, *SPLIT.test_dataset2.names}


@pytest.mark.parametrize("arm, n_images, expected", [("finetune", 5, ("dataset2", "dataset1")),
                                                     ("finetune", 20, ("dataset2", "dataset1")), ("scratch", 20, ())])
def test_every_finetune_run_validates_on_the_selection_images_and_other_arms_on_none(monkeypatch, arm, n_images,
                                                                                     expected):
    monkeypatch.setattr(study, "model_from_base", lambda base, config: (nn.Identity(), config))
    monkeypatch.setattr(study, "fresh_model", lambda config: nn.Identity())
    prepared = dataclasses.make_dataclass("Prepared", ["split"])(SPLIT)
    base = dataclasses.make_dataclass("Base", ["uri"])("models:/segft-base/1")
    spec, _ = study._arm_run(PlannedRun(arm, n_images, 0, tuple(range(n_images))), StudyConfig(), prepared, base, {})
    assert tuple(s.name for s in spec.validation_sets) == expected
    if expected:
        assert spec.validation_sets[0].names == POOL  # n=20 included: every size on the same images
