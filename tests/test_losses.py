"""Tests for segft.losses: BCE, Tversky, Focal Tversky and the dynamic per-patch selection, against values
computed by hand.

Logits are chosen so that sigmoids are simple numbers: +-BIG -> 1 or 0 (hard counts), 0 -> 1/2,
+-ln 3 -> 3/4 or 1/4. Every expected value below is written out with ``math`` from those numbers.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from segft.config import LossConfig
from segft.losses import BRANCHES, BCELoss, DynamicLoss, FocalTverskyLoss, TverskyLoss
from segft.losses.tversky import tversky_index

#: The per-patch rule with the fix (the defaults are the original's, chosen on validation Dice: see the README).
PATCH = LossConfig(loss_scope="patch", bce_in_every_branch=True)
BIG = 100.0  # sigmoid(100) == 1 and sigmoid(-100) ~ 4e-44 in float32: hard 0/1 predictions
LN3 = math.log(3.0)  # sigmoid(ln 3) = 3/4, sigmoid(-ln 3) = 1/4
SMOOTH = 1e-5  # the losses' default smoothing term
ALPHA, BETA, GAMMA = 0.7, 0.3, 0.75  # the study's weights: alpha on false positives, beta on false negatives


def t(values, side: int = 2) -> torch.Tensor:
    """A (1, 1, side, side) float32 tensor from a flat list, row-major."""
    return torch.tensor(values, dtype=torch.float32).reshape(1, 1, side, side)


def ti(tp: float, fp: float, fn: float, alpha: float = ALPHA, beta: float = BETA) -> float:
    """Tversky index by hand."""
    return (tp + SMOOTH) / (tp + alpha * fp + beta * fn + SMOOTH)


# ---------------------------------------------------------------------------------------------------- BCE

BCE_CASES = [  # logits, target, expected mean BCE over the 4 pixels
    # all p = 1/2: every pixel costs ln 2 whatever its label
    ([0, 0, 0, 0], [1, 1, 0, 0], math.log(2)),
    # p = 3/4 on a 1: -ln(3/4); p = 1/4 on a 0: -ln(3/4); p = 1/2: ln 2  -> (2 ln(4/3) + 2 ln 2) / 4
    ([LN3, 0, -LN3, 0], [1, 1, 0, 0], (2 * math.log(4 / 3) + 2 * math.log(2)) / 4),
    # p = 1/4 on a 1: -ln(1/4) = ln 4; p = 3/4 on a 0: ln 4; two right pixels at 3/4: ln(4/3) each
    ([-LN3, LN3, LN3, -LN3], [1, 1, 0, 0], (2 * math.log(4) + 2 * math.log(4 / 3)) / 4),
    # confidently right everywhere: ~0
    ([BIG, BIG, -BIG, -BIG], [1, 1, 0, 0], 0.0),
    # one confidently wrong pixel: BCE = |logit| = 100 on that pixel, 0 elsewhere -> 100 / 4
    ([BIG, -BIG, -BIG, -BIG], [1, 1, 0, 0], BIG / 4),
]


@pytest.mark.parametrize("logits, target, expected", BCE_CASES)
def test_bce_per_sample_matches_hand_value(logits, target, expected):
    loss = BCELoss(reduction="none")(t(logits), t(target))
    assert loss.shape == (1,)
    assert loss.item() == pytest.approx(expected, rel=1e-5, abs=1e-6)


# ---------------------------------------------------------------------------------------------- Tversky

TVERSKY_CASES = [  # logits, target, (tp, fp, fn) by hand
    # hard: prediction 1 0 1 1 vs truth 1 1 0 0 -> TP 1, FP 2, FN 1 -> TI = 1 / (1 + 1.4 + 0.3) = 1 / 2.7
    ([BIG, -BIG, BIG, BIG], [1, 1, 0, 0], (1, 2, 1)),
    # perfect: TP 2 -> TI = 1
    ([BIG, BIG, -BIG, -BIG], [1, 1, 0, 0], (2, 0, 0)),
    # all missed: TP 0, FN 2 -> TI = s / (0.6 + s) ~ 0
    ([-BIG, -BIG, -BIG, -BIG], [1, 1, 0, 0], (0, 0, 2)),
    # soft, p = 1/2 everywhere: TP = 2 * 1/2 = 1, FP = 2 * 1/2 = 1, FN = 2 * 1/2 = 1 -> TI = 1 / 2
    ([0, 0, 0, 0], [1, 1, 0, 0], (1, 1, 1)),
    # soft, p = 3/4, 1/4, 3/4, 1/4: TP = 3/4 + 1/4 = 1, FP = 3/4 + 1/4 = 1, FN = 1/4 + 3/4 = 1
    ([LN3, -LN3, LN3, -LN3], [1, 1, 0, 0], (1, 1, 1)),
    # soft, p = 3/4, 3/4, 1/4, 1/4 (right side up): TP = 1.5, FP = 0.5, FN = 0.5 -> 1.5 / (1.5 + .35 + .15) = .75
    ([LN3, LN3, -LN3, -LN3], [1, 1, 0, 0], (1.5, 0.5, 0.5)),
    # empty truth, empty prediction: TI = s / s = 1 (smoothing makes "nothing to find, nothing found" perfect)
    ([-BIG, -BIG, -BIG, -BIG], [0, 0, 0, 0], (0, 0, 0)),
]


@pytest.mark.parametrize("logits, target, counts", TVERSKY_CASES)
def test_tversky_index_matches_hand_value(logits, target, counts):
    index = tversky_index(t(logits), t(target), ALPHA, BETA)
    assert index.shape == (1,)
    assert index.item() == pytest.approx(ti(*counts), rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("logits, target, counts", TVERSKY_CASES)
def test_tversky_loss_is_one_minus_index(logits, target, counts):
    loss = TverskyLoss(reduction="none")(t(logits), t(target))
    assert loss.item() == pytest.approx(1 - ti(*counts), rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("logits, target, counts", TVERSKY_CASES)
def test_focal_tversky_is_one_minus_index_to_the_gamma(logits, target, counts):
    loss = FocalTverskyLoss(reduction="none")(t(logits), t(target))
    # (1 - TI) is clamped at 1e-6 so that a perfect sample keeps a finite gradient
    expected = max(1 - ti(*counts), 1e-6) ** GAMMA
    assert loss.item() == pytest.approx(expected, rel=1e-4, abs=1e-6)


def test_false_positives_cost_more_than_false_negatives():
    """alpha = 0.7 weighs FP, beta = 0.3 weighs FN: one extra FP must cost more than one extra FN."""
    target = t([1, 0, 0, 0])
    one_fp = t([BIG, BIG, -BIG, -BIG])  # TP 1, FP 1, FN 0 -> TI = 1 / 1.7
    target_fn = t([1, 1, 0, 0])
    one_fn = t([BIG, -BIG, -BIG, -BIG])  # TP 1, FP 0, FN 1 -> TI = 1 / 1.3
    loss = TverskyLoss(ALPHA, BETA, reduction="none")
    fp_loss, fn_loss = loss(one_fp, target).item(), loss(one_fn, target_fn).item()
    assert fp_loss == pytest.approx(1 - 1 / 1.7, rel=1e-5)  # 0.4118
    assert fn_loss == pytest.approx(1 - 1 / 1.3, rel=1e-5)  # 0.2308
    assert fp_loss > fn_loss
    # swapping the weights swaps the costs
    swapped = TverskyLoss(BETA, ALPHA, reduction="none")
    assert swapped(one_fp, target).item() == pytest.approx(fn_loss, rel=1e-5)
    assert swapped(one_fn, target_fn).item() == pytest.approx(fp_loss, rel=1e-5)


def test_focal_gamma_below_one_raises_small_losses():
    """(1 - TI) ** 0.75 > (1 - TI) for 0 < 1 - TI < 1: nearly-right samples get a larger loss than with Tversky."""
    logits, target = t([LN3, LN3, -LN3, -LN3]), t([1, 1, 0, 0])  # TI = 0.75 (see TVERSKY_CASES)
    tversky = TverskyLoss(reduction="none")(logits, target).item()
    focal = FocalTverskyLoss(reduction="none")(logits, target).item()
    assert tversky == pytest.approx(0.25, rel=1e-4)
    assert focal == pytest.approx(0.25**0.75, rel=1e-4)  # 0.3536
    assert focal > tversky


# -------------------------------------------------------------------------------------------- reduction

def batch_of_two() -> tuple[torch.Tensor, torch.Tensor, dict[str, list[float]]]:
    """Two samples with hand-known per-sample losses for each loss class."""
    logits = torch.cat([t([0, 0, 0, 0]), t([BIG, -BIG, BIG, BIG])])
    target = torch.cat([t([1, 1, 0, 0]), t([1, 1, 0, 0])])
    tversky = [1 - ti(1, 1, 1), 1 - ti(1, 2, 1)]  # 1/2 and 1 - 1/2.7
    per_sample = {
        # sample 1: ln 2 everywhere; sample 2: one confidently wrong FN (100) and two wrong FP (100 each) -> 300/4
        "bce": [math.log(2), 3 * BIG / 4],
        "tversky": tversky,
        "focal": [value**GAMMA for value in tversky],
    }
    return logits, target, per_sample


LOSS_CLASSES = {"bce": BCELoss, "tversky": TverskyLoss, "focal": FocalTverskyLoss}


@pytest.mark.parametrize("name", LOSS_CLASSES)
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_reduction_shapes_and_values(name, reduction):
    logits, target, per_sample = batch_of_two()
    loss = LOSS_CLASSES[name](reduction=reduction)(logits, target)
    expected = {"none": per_sample[name], "mean": sum(per_sample[name]) / 2, "sum": sum(per_sample[name])}[reduction]
    assert loss.shape == ((2,) if reduction == "none" else ())
    assert loss.tolist() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("name", LOSS_CLASSES)
def test_default_reduction_is_mean(name):
    logits, target, per_sample = batch_of_two()
    assert LOSS_CLASSES[name]()(logits, target).item() == pytest.approx(sum(per_sample[name]) / 2, rel=1e-5)


INVALID_ARGUMENT_CASES = [  # constructor, kwargs, message
    (BCELoss, {"reduction": "avg"}, r"reduction must be one of \('none', 'mean', 'sum'\), got 'avg'"),
    (TverskyLoss, {"reduction": "batchmean"}, r"reduction must be one of .*got 'batchmean'"),
    (FocalTverskyLoss, {"reduction": None}, r"reduction must be one of .*got None"),
    (TverskyLoss, {"alpha": -0.1}, r"alpha and beta must be >= 0 and not both 0, got alpha=-0.1, beta=0.3"),
    (TverskyLoss, {"beta": -1.0}, r"alpha and beta must be >= 0.*got alpha=0.7, beta=-1.0"),
    (TverskyLoss, {"alpha": 0.0, "beta": 0.0}, r"not both 0, got alpha=0.0, beta=0.0"),
    (FocalTverskyLoss, {"alpha": -0.5}, r"alpha and beta must be >= 0.*alpha=-0.5"),
    (FocalTverskyLoss, {"gamma": 0.0}, r"gamma must be > 0, got 0.0"),
    (FocalTverskyLoss, {"gamma": -0.75}, r"gamma must be > 0, got -0.75"),
    (LossConfig, {"small_foreground": 0.0}, r"small_foreground must be in \(0, 1\], got 0.0"),
    (LossConfig, {"small_foreground": 1.5}, r"small_foreground must be in \(0, 1\], got 1.5"),
    (LossConfig, {"small_foreground": -0.1}, r"small_foreground must be in \(0, 1\], got -0.1"),
    (LossConfig, {"loss_scope": "image"}, r"unknown loss_scope 'image'; choose from \['patch', 'batch'\]"),
    (DynamicLoss, {"config": LossConfig(tversky_alpha=-1.0)}, r"alpha and beta must be >= 0"),
    (DynamicLoss, {"config": LossConfig(focal_gamma=0.0)}, r"gamma must be > 0"),
]


@pytest.mark.parametrize("constructor, kwargs, message", INVALID_ARGUMENT_CASES)
def test_invalid_arguments_raise_value_error(constructor, kwargs, message):
    with pytest.raises(ValueError, match=message):
        constructor(**kwargs)


@pytest.mark.parametrize("kwargs", [{"alpha": 0.0, "beta": 1.0}, {"alpha": 1.0, "beta": 0.0}, {"gamma": 1e-3}])
def test_boundary_arguments_are_accepted(kwargs):
    FocalTverskyLoss(**kwargs)


def test_small_foreground_of_one_is_accepted():
    assert DynamicLoss(LossConfig(small_foreground=1.0)).config.small_foreground == 1.0


# ------------------------------------------------------------------------------------------ DynamicLoss

def patch(side: int, positive: int, high: float = BIG, low: float = -BIG) -> torch.Tensor:
    """A (1, 1, side, side) logit patch whose first ``positive`` pixels (row-major) are ``high``, the rest ``low``."""
    flat = torch.full((side * side,), low)
    flat[:positive] = high
    return flat.reshape(1, 1, side, side)


SELECT_CASES = [  # logits, expected branch; threshold 6.25 %
    (patch(4, 0), 0),  # no predicted foreground -> BCE
    (torch.full((1, 1, 4, 4), -0.01), 0),  # just below 0
    (torch.zeros(1, 1, 4, 4), 0),  # logit 0 is sigmoid 0.5, not > 0.5: no foreground
    (patch(4, 1), 2),  # 1 / 16 = 6.25 % is not below 6.25 % -> Tversky + Focal
    (patch(4, 1, high=1e-3), 2),  # barely positive logit still counts
    (patch(4, 16), 2),  # all foreground
    (patch(8, 1), 1),  # 1 / 64 = 1.6 % -> BCE + Tversky
    (patch(8, 3), 1),  # 3 / 64 = 4.7 %
    (patch(8, 4), 2),  # 4 / 64 = 6.25 %: not below
    (patch(8, 5), 2),
    (patch(8, 64), 2),
]


@pytest.mark.parametrize("logits, branch", SELECT_CASES)
def test_select_branch_from_predicted_foreground_fraction(logits, branch):
    assert DynamicLoss(PATCH).select(logits).tolist() == [branch]


def test_select_follows_the_configured_threshold():
    logits = patch(8, 4)  # 6.25 %
    assert DynamicLoss(LossConfig(small_foreground=0.07)).select(logits).tolist() == [1]
    assert DynamicLoss(LossConfig(small_foreground=0.0625)).select(logits).tolist() == [2]


def mixed_batch() -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """Three 8 x 8 patches, one per branch, with the terms each branch needs computed by hand.

    Sample 0 (branch 0): every logit -ln 3 (p = 1/4), truth = first 16 pixels.
        BCE = (16 ln 4 + 48 ln(4/3)) / 64.
    Sample 1 (branch 1): first 2 logits +ln 3 (p = 3/4), the other 62 -ln 3; truth = first 4 pixels.
        2 predicted of 64 = 3.1 % < 6.25 %.
        BCE = (2 ln(4/3) [p=3/4 on 1] + 2 ln 4 [p=1/4 on 1] + 60 ln(4/3) [p=1/4 on 0]) / 64
        TP = 2 (3/4) + 2 (1/4) = 2, FP = 60 (1/4) = 15, FN = 2 (1/4) + 2 (3/4) = 2
        TI = 2 / (2 + 0.7 * 15 + 0.3 * 2) = 2 / 13.1.
    Sample 2 (branch 2): first 32 logits +ln 3, the other 32 -ln 3; truth = first 32 pixels. 50 % predicted.
        TP = 32 (3/4) = 24, FP = 32 (1/4) = 8, FN = 32 (1/4) = 8
        TI = 24 / (24 + 5.6 + 2.4) = 0.75; Tversky = 0.25, Focal = 0.25 ** 0.75.
    """
    logits = torch.cat([patch(8, 0, LN3, -LN3), patch(8, 2, LN3, -LN3), patch(8, 32, LN3, -LN3)])
    target = torch.cat([patch(8, 16, 1.0, 0.0), patch(8, 4, 1.0, 0.0), patch(8, 32, 1.0, 0.0)])
    terms = {
        "bce0": (16 * math.log(4) + 48 * math.log(4 / 3)) / 64,
        "bce1": (62 * math.log(4 / 3) + 2 * math.log(4)) / 64,
        "tversky1": 1 - ti(2, 15, 2),
        "tversky2": 1 - ti(24, 8, 8),
        "focal2": (1 - ti(24, 8, 8)) ** GAMMA,
        "bce2": math.log(4 / 3),  # every pixel right with p = 3/4
    }
    assert terms["tversky2"] == pytest.approx(0.25, rel=1e-4)  # the arithmetic above
    return logits, target, terms


WEIGHT_CASES = [(1.0, 1.0, 1.0), (2.0, 3.0, 5.0), (0.0, 1.0, 0.5)]  # weight_bce, weight_tversky, weight_focal


@pytest.mark.parametrize("w_bce, w_tversky, w_focal", WEIGHT_CASES)
def test_mixed_batch_uses_each_samples_branch_formula(w_bce, w_tversky, w_focal):
    logits, target, terms = mixed_batch()
    config = LossConfig(loss_scope="patch", bce_in_every_branch=True, weight_bce=w_bce, weight_tversky=w_tversky,
                        weight_focal_tversky=w_focal)
    loss_fn = DynamicLoss(config)
    expected = [
        w_bce * terms["bce0"],  # branch 0: BCE
        w_bce * terms["bce1"] + w_tversky * terms["tversky1"],  # branch 1: BCE + Tversky
        w_tversky * terms["tversky2"] + w_focal * terms["focal2"] + w_bce * terms["bce2"],  # branch 2 (+ BCE: the fix)
    ]
    per_sample, branch = loss_fn.per_sample(logits, target)
    assert branch.tolist() == [0, 1, 2]
    assert per_sample.tolist() == pytest.approx(expected, rel=1e-5)
    mean, branch = loss_fn(logits, target)
    assert mean.shape == () and branch.tolist() == [0, 1, 2]
    assert mean.item() == pytest.approx(sum(expected) / 3, rel=1e-5)


def test_branch_names_match_indices():
    assert BRANCHES == ("bce", "bce_tversky", "tversky_focal")


@pytest.mark.parametrize("index", [0, 1, 2])
def test_branch_is_decided_per_patch_not_per_batch(index):
    """A patch gets the same branch and loss alone as in any batch around it."""
    logits, target, _ = mixed_batch()
    loss_fn = DynamicLoss(PATCH)
    alone_loss, alone_branch = loss_fn.per_sample(logits[index : index + 1], target[index : index + 1])
    assert alone_branch.tolist() == [index]
    for other in range(3):  # next to each other patch, itself included
        pair_logits = torch.cat([logits[other : other + 1], logits[index : index + 1]])
        pair_target = torch.cat([target[other : other + 1], target[index : index + 1]])
        pair_loss, pair_branch = loss_fn.per_sample(pair_logits, pair_target)
        assert pair_branch[1].item() == index
        assert pair_loss[1].item() == pytest.approx(alone_loss.item(), rel=1e-6)
    batch_loss, batch_branch = loss_fn.per_sample(logits, target)
    assert batch_loss[index].item() == pytest.approx(alone_loss.item(), rel=1e-6)


@pytest.mark.parametrize("positive", [0, 2, 32])  # branch 0, 1 and 2
def test_gradients_are_finite_for_a_perfect_prediction(positive):
    """A perfect sample has 1 - TI = 0, where d/dx x ** 0.75 is infinite: the clamp must keep gradients finite."""
    logits = patch(8, positive).requires_grad_()
    target = patch(8, positive, 1.0, 0.0)
    loss, _ = DynamicLoss(PATCH)(logits, target)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()


def test_gradient_of_focal_tversky_is_finite_for_a_perfect_prediction():
    logits = patch(8, 32).requires_grad_()
    FocalTverskyLoss()(logits, patch(8, 32, 1.0, 0.0)).backward()
    assert torch.isfinite(logits.grad).all()


def test_selection_is_not_differentiated():
    """The branch choice uses the detached prediction: gradients come only from the selected loss terms."""
    logits, target, _ = mixed_batch()
    logits = logits[:1].clone().requires_grad_()  # branch 0: only BCE
    DynamicLoss(PATCH)(logits, target[:1])[0].backward()
    expected = logits.detach().clone().requires_grad_()
    BCELoss()(expected, target[:1]).backward()
    assert torch.allclose(logits.grad, expected.grad)


def test_original_third_branch_has_no_bce():
    """``bce_in_every_branch=false`` keeps the original Tversky + Focal Tversky in the third branch."""
    logits, target, terms = mixed_batch()
    per_sample, _ = DynamicLoss(LossConfig(loss_scope="patch", bce_in_every_branch=False)).per_sample(logits, target)
    assert per_sample[2].item() == pytest.approx(terms["tversky2"] + terms["focal2"], rel=1e-5)


# --------------------------------------------------------------- the original (batch) rule and the empty-target defect

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "paulow" / "paulow_dynamic_loss_reference.json"
ORIGINAL = LossConfig(loss_scope="batch", bce_in_every_branch=False)


def reference_case(formula: str, target: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference file's inputs, built from its formulas (see its ``inputs``)."""
    yy, xx = torch.meshgrid(torch.arange(128.0), torch.arange(128.0), indexing="ij")
    base = (torch.sin(xx / 5) * torch.cos(yy / 9)).expand(4, 1, 128, 128)
    logits = {"2*base - 6": 2 * base - 6, "4*base - 3.6": 4 * base - 3.6, "3*base": 3 * base}[formula]

    def disc(r: float) -> torch.Tensor:
        return (((xx - 64) ** 2 + (yy - 64) ** 2) < r**2).float().expand(4, 1, 128, 128)

    masks = {"zeros": torch.zeros(4, 1, 128, 128), "disc(10)": disc(10), "disc(40)": disc(40)}
    return logits.clone().contiguous(), masks[target].clone().contiguous()


def loss_and_grad(config: LossConfig, logits: torch.Tensor, target: torch.Tensor) -> tuple[float, torch.Tensor]:
    logits = logits.clone().requires_grad_()
    loss, _ = DynamicLoss(config)(logits, target)
    loss.backward()
    return loss.item(), logits.grad


@pytest.fixture(scope="module")
def reference() -> dict:
    if not REFERENCE.exists():
        pytest.skip(f"{REFERENCE} is absent (../shared is not part of a user's clone)")
    return json.loads(REFERENCE.read_text())["cases"]


@pytest.mark.parametrize("case", ["all_background_pred_empty", "small_pred_fraction", "large_pred_fraction"])
def test_batch_scope_reproduces_the_original_loss(reference, case):
    """The original's loss and gradient (NTUMMIO/PAULow DynamicLoss, measured) to 1e-5."""
    expected = reference[case]
    logits, target = reference_case(expected["logits"], expected["target"])
    assert (logits > 0).float().mean().item() == pytest.approx(expected["predicted_fraction"], abs=1e-9)
    loss, grad = loss_and_grad(ORIGINAL, logits, target)
    assert loss == pytest.approx(expected["loss"], abs=1e-5)
    assert grad.abs().sum().item() == pytest.approx(expected["grad_abs_sum"], abs=1e-5)


def test_original_rule_keeps_the_defect_when_asked(reference):
    """The reference's last case: loss 2.0 and no gradient to remove the false positives (the paper's loss)."""
    expected = reference["batch_of_background_with_false_positives"]
    loss, grad = loss_and_grad(ORIGINAL, *reference_case(expected["logits"], expected["target"]))
    assert loss == pytest.approx(expected["loss"], abs=1e-5)
    assert grad.abs().sum().item() < 1e-8


def empty_target_cases() -> list[tuple[str, torch.Tensor]]:
    """Logits over an empty target with false positives: the reference's last case (half of the batch predicted
    foreground), and one 128 x 128 patch with 20 % of its pixels predicted foreground."""
    logits, _ = reference_case("3*base", "zeros")
    single = torch.full((1, 1, 128, 128), -2.0)
    single.view(-1)[: int(0.2 * 128 * 128)] = 2.0
    return [("reference_last_case", logits), ("single_patch_20pct", single)]


@pytest.mark.parametrize("scope", ["patch", "batch"])
@pytest.mark.parametrize("name, logits", empty_target_cases())
def test_false_positives_on_an_empty_target_are_always_trained_away(scope, name, logits):
    """With the fix, a region without foreground gets at least plain BCE's gradient, pointing down on every
    predicted pixel, so a gradient step lowers its false positives; without it, the gradient is ~0."""
    target = torch.zeros_like(logits)
    _, grad = loss_and_grad(LossConfig(loss_scope=scope, bce_in_every_branch=True), logits, target)
    bce = logits.clone().requires_grad_()
    BCELoss()(bce, target).backward()
    assert grad.abs().sum().item() >= 0.99 * bce.grad.abs().sum().item()
    assert (grad[logits > 0] > 0).all()  # descent lowers every false-positive logit
    _, broken = loss_and_grad(LossConfig(loss_scope=scope, bce_in_every_branch=False), logits, target)
    assert broken.abs().sum().item() < 1e-6 * bce.grad.abs().sum().item()


def test_batch_scope_decides_once_for_the_whole_batch():
    """The mixed batch (one patch per branch, 34 of 192 pixels = 17.7 % predicted foreground) takes the third branch as a whole."""
    logits, target, _ = mixed_batch()
    per_sample, branch = DynamicLoss(LossConfig(loss_scope="batch", bce_in_every_branch=True)).per_sample(logits, target)
    assert branch.tolist() == [2, 2, 2]
    assert torch.all(per_sample == per_sample[0])
