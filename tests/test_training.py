"""Tests for segft.training (patches, the training loop, evaluation, devices) and segft.inference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from segft.config import LossConfig, ModelConfig, TrainConfig
from segft.data.imageset import ImageSet
from segft.data.normalize import normalize_image
from segft.inference import SlidingWindowSegmenter, sliding_window_predict, window_stride
from segft.losses import BRANCHES, DynamicLoss
from segft.metrics import confusion_counts
from segft.models import build_model
from segft.device import resolve_device
from segft.training import EpochLog, ImageResult, Patches, evaluate, make_patches, mean_dice, train

TINY = ModelConfig(encoder="resnet18", encoder_depth=3, decoder_channels=(16, 8, 4))


pytestmark = pytest.mark.usefixtures("one_thread")


def toy_set(shapes: list[tuple[int, int]], seed: int = 0, dtype=np.uint8) -> ImageSet:
    """Noisy dark images, each with a bright rectangle (the foreground) a quarter to a half of its size."""
    rng = np.random.default_rng(seed)
    images, masks = [], []
    for height, width in shapes:
        mask = np.zeros((height, width), bool)
        top, left = rng.integers(0, height // 2), rng.integers(0, width // 2)
        mask[top : top + height // 2, left : left + width // 2] = True
        image = rng.normal(30, 8, (height, width)) + 120 * mask
        images.append(np.clip(image, 0, 255).astype(dtype))
        masks.append(mask)
    return ImageSet("toy", tuple(f"{i:03d}" for i in range(1, len(shapes) + 1)), tuple(images), tuple(masks), "toy")


def tiny_config(**overrides) -> TrainConfig:
    settings = dict(epochs=3, batch_size=4, lr=1e-2, patch_size=32, seed=0, device="cpu", model=TINY)
    settings.update(overrides)
    return TrainConfig(**settings)


def fresh_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(TINY)


@pytest.fixture(scope="module")
def patches() -> Patches:
    return make_patches(toy_set([(64, 64), (64, 64)]), 32)  # 2 x 4 = 8 patches


# ------------------------------------------------------------------------------------------ make_patches

PATCH_COUNT_CASES = [  # image shapes, patch size, expected number of patches
    ([(558, 136)], 128, 5 * 2),  # the study's image size: rows 0..512, cols 0..128
    ([(558, 136), (558, 136)], 128, 2 * 10),
    ([(558, 136)], 64, 9 * 3),
    ([(64, 64)], 32, 4),
    ([(65, 33)], 32, 3 * 2),
    ([(20, 20)], 32, 1),  # smaller than a patch: one padded patch
    ([(64, 64), (45, 37)], 32, 4 + 2 * 2),
]


@pytest.mark.parametrize("shapes, patch_size, count", PATCH_COUNT_CASES)
def test_make_patches_counts(shapes, patch_size, count):
    result = make_patches(toy_set(shapes), patch_size)
    assert len(result) == count
    assert result.images.shape == result.masks.shape == (count, 1, patch_size, patch_size)
    assert result.images.dtype == result.masks.dtype == torch.float32
    assert set(torch.unique(result.masks).tolist()) <= {0.0, 1.0}
    assert result.masks.max() == 1.0  # the foreground is there


def test_make_patches_normalizes_each_image_and_keeps_masks_aligned():
    image_set = toy_set([(64, 96)], dtype=np.uint16)
    result = make_patches(image_set, 32)
    normalized = normalize_image(image_set.images[0])
    # patch 4 is row 1, column 1 of the 2 x 3 grid
    assert torch.equal(result.images[4, 0], torch.from_numpy(normalized[32:64, 32:64]))
    assert torch.equal(result.masks[4, 0], torch.from_numpy(image_set.masks[0][32:64, 32:64].astype(np.float32)))


def test_make_patches_keeps_background_only_patches():
    image_set = toy_set([(128, 128)])  # the rectangle covers at most 4 of the 16 patches' worth of area
    result = make_patches(image_set, 32)
    per_patch = result.masks.sum(dim=(1, 2, 3))
    assert len(result) == 16 and (per_patch == 0).any()
    assert per_patch.sum().item() == image_set.masks[0].sum()  # non-overlapping grid: every pixel once


# ------------------------------------------------------------------------------------------------ train

def test_training_reduces_the_loss_and_counts_every_patch_once_per_epoch(patches):
    seen: list[EpochLog] = []
    logs = train(fresh_model(), patches, tiny_config(epochs=15), on_epoch=seen.append)
    assert seen == logs and [log.epoch for log in logs] == list(range(15))
    for log in logs:
        assert tuple(log.branch_counts) == BRANCHES
        assert sum(log.branch_counts.values()) == len(patches) == 8
        assert np.isfinite(log.loss)
    assert logs[-1].loss < 0.5 * logs[0].loss, [round(log.loss, 3) for log in logs]


def test_every_epoch_trains_in_training_mode_even_after_on_epoch_evaluated(patches):
    """Tuning scores validation images inside ``on_epoch``, which puts the model in eval mode."""
    model = fresh_model()
    modes: list[bool] = []
    model.register_forward_pre_hook(lambda module, inputs: modes.append(module.training))
    train(model, patches, tiny_config(epochs=3, batch_size=8), on_epoch=lambda log: model.eval())
    assert modes == [True, True, True]  # one step per epoch


class Scale(nn.Module):
    """logits = scale * image: a one-parameter model whose predicted foreground is the image's positive pixels."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * x


def one_patch_per_branch() -> Patches:
    """Three 8 x 8 patches whose positive pixels (0, 2 and 32 of 64) put them in branches 0, 1 and 2."""
    images, masks = torch.full((3, 1, 8, 8), -1.0), torch.zeros(3, 1, 8, 8)
    for index, positive in enumerate([0, 2, 32]):
        images[index].view(-1)[:positive] = 1.0
        masks[index].view(-1)[: positive + 4] = 1.0
    return Patches(images=images, masks=masks)


def test_epoch_log_holds_the_mean_loss_of_the_patches():
    """With one batch and one epoch, the logged loss is the dynamic loss before the model's only step."""
    patches = one_patch_per_branch()
    expected, _ = DynamicLoss()(patches.images, patches.masks)  # scale = 1: logits = images
    (log,) = train(Scale(), patches, tiny_config(epochs=1, batch_size=3))
    assert log.loss == pytest.approx(expected.item(), rel=1e-6)


@pytest.mark.parametrize("batch_size", [1, 2, 3])
def test_epoch_log_counts_the_branch_of_every_patch(batch_size):
    config = tiny_config(epochs=3, batch_size=batch_size, loss=LossConfig(loss_scope="patch"))
    logs = train(Scale(), one_patch_per_branch(), config)
    # the scale stays positive, so each patch keeps its branch while training
    assert [log.branch_counts for log in logs] == [{"bce": 1, "bce_tversky": 1, "tversky_focal": 1}] * 3


def test_batch_scope_counts_every_patch_in_its_batchs_branch():
    """One batch of all three patches (the original rule): the batch's predicted fraction picks one branch."""
    logs = train(Scale(), one_patch_per_branch(), tiny_config(epochs=1, batch_size=3, loss=LossConfig(loss_scope="batch")))
    assert sum(logs[0].branch_counts.values()) == 3 and max(logs[0].branch_counts.values()) == 3


def test_same_seed_gives_the_same_loss_trajectory(patches):
    first = train(fresh_model(), patches, tiny_config(batch_size=2))
    second = train(fresh_model(), patches, tiny_config(batch_size=2))
    assert [log.loss for log in first] == [log.loss for log in second]
    assert [log.branch_counts for log in first] == [log.branch_counts for log in second]


def test_the_seed_sets_the_patch_order(patches):
    first = train(fresh_model(), patches, tiny_config(batch_size=2, epochs=2, seed=0))
    second = train(fresh_model(), patches, tiny_config(batch_size=2, epochs=2, seed=1))
    assert [log.loss for log in first] != [log.loss for log in second]


def test_train_updates_the_model_in_place(patches):
    model = fresh_model()
    head, first_conv = model.head.weight.detach().clone(), model.encoder.conv1.weight.detach().clone()
    train(model, patches, tiny_config(epochs=1))
    assert not torch.equal(model.head.weight, head) and not torch.equal(model.encoder.conv1.weight, first_conv)


def test_train_uses_the_loss_config(patches):
    zero = LossConfig(weight_bce=0.0, weight_tversky=0.0, weight_focal_tversky=0.0)
    logs = train(fresh_model(), patches, tiny_config(epochs=2, loss=zero))
    assert [log.loss for log in logs] == [0.0, 0.0]


@pytest.mark.parametrize("overrides, message", [
    ({"batch_size": 0}, r"batch_size and epochs must be >= 1, got 0 and 3"),
    ({"epochs": 0}, r"batch_size and epochs must be >= 1, got 4 and 0"),
])
def test_train_refuses_non_positive_settings(patches, overrides, message):
    config = tiny_config()
    for key, value in overrides.items():  # train must check even a config built without TrainConfig's own checks
        object.__setattr__(config, key, value)
    with pytest.raises(ValueError, match=message):
        train(fresh_model(), patches, config)


def test_train_refuses_an_empty_patch_set():
    empty = Patches(images=torch.zeros(0, 1, 32, 32), masks=torch.zeros(0, 1, 32, 32))
    with pytest.raises(ValueError, match="no training patches"):
        train(fresh_model(), empty, tiny_config())


# --------------------------------------------------------------------------------------------- evaluate

@pytest.fixture(scope="module")
def model() -> nn.Module:
    return fresh_model().eval()


def test_evaluate_returns_one_result_per_image_with_the_image_shape(model):
    image_set = toy_set([(45, 37), (64, 40), (20, 33)])
    results = evaluate(SlidingWindowSegmenter(model, patch_size=32, overlap=0.5), image_set)
    assert [result.name for result in results] == ["001", "002", "003"]
    for result, image, mask in zip(results, image_set.images, image_set.masks):
        assert isinstance(result, ImageResult) and result.dataset == "toy"
        assert result.prediction.shape == image.shape and result.prediction.dtype == bool
        assert result.counts == confusion_counts(result.prediction, mask)
        assert result.dice == result.counts.dice
    assert mean_dice(results) == pytest.approx(np.mean([result.dice for result in results]))


def test_evaluate_scores_a_perfect_segmenter_1(model):
    image_set = toy_set([(45, 37), (64, 40)])
    segmenter = lambda image: image > 90  # noqa: E731 - the toy foreground is ~150, the background ~30
    results = evaluate(segmenter, image_set)
    assert [result.dice for result in results] == [1.0, 1.0] and mean_dice(results) == 1.0


# ------------------------------------------------------------------------------------------- inference

@pytest.mark.parametrize("shape", [(75, 43), (32, 32), (20, 13), (1, 40)])
@pytest.mark.parametrize("overlap", [0.0, 0.5])
def test_sliding_window_predict_returns_probabilities_of_the_image_shape(model, shape, overlap):
    image = np.random.default_rng(0).random(shape).astype(np.float32)
    probabilities = sliding_window_predict(model, image, patch_size=32, overlap=overlap, batch_size=3)
    assert probabilities.shape == shape and probabilities.dtype == np.float32
    assert ((probabilities >= 0) & (probabilities <= 1)).all()


@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5, 0.75])
@pytest.mark.parametrize("batch_size", [1, 3, 100])
def test_sliding_window_predict_stitches_every_window_back_in_place(overlap, batch_size):
    """With logits = the input, the blended prediction must be sigmoid(image) exactly, wherever the windows fall."""
    image = np.random.default_rng(1).normal(size=(75, 43)).astype(np.float32)
    probabilities = sliding_window_predict(nn.Identity(), image, 32, overlap, batch_size)
    assert np.allclose(probabilities, 1 / (1 + np.exp(-image)), atol=1e-6)


def test_segmenter_normalizes_then_thresholds():
    image = toy_set([(45, 37)], dtype=np.uint16).images[0]
    segmenter = SlidingWindowSegmenter(nn.Identity(), patch_size=32, overlap=0.5, threshold=0.7)
    expected = 1 / (1 + np.exp(-normalize_image(image)))
    assert np.allclose(segmenter.probabilities(image), expected, atol=1e-6)
    assert np.array_equal(segmenter(image), expected > 0.7)


WINDOW_STRIDE_CASES = [  # patch size, overlap, stride
    (128, 0.5, 64),
    (128, 0.0, 128),
    (32, 0.75, 8),
    (128, 0.3, 90),  # round(89.6)
    (5, 0.99, 1),  # never below 1
]


@pytest.mark.parametrize("patch_size, overlap, stride", WINDOW_STRIDE_CASES)
def test_window_stride(patch_size, overlap, stride):
    assert window_stride(patch_size, overlap) == stride


@pytest.mark.parametrize("overlap", [1.0, 1.5, -0.1])
def test_overlap_out_of_range_raises(overlap):
    with pytest.raises(ValueError, match=rf"overlap must be in \[0, 1\), got {overlap}"):
        window_stride(128, overlap)
    with pytest.raises(ValueError, match=r"overlap must be in \[0, 1\)"):
        sliding_window_predict(nn.Identity(), np.zeros((40, 40), np.float32), 32, overlap)


# ---------------------------------------------------------------------------------------------- devices

@pytest.mark.parametrize("available, expected", [(False, "cpu"), (True, "cuda")])
def test_resolve_device_auto(monkeypatch, available, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: available)
    assert resolve_device("auto") == torch.device(expected)


@pytest.mark.parametrize("name", ["cuda", "cuda:1"])
def test_resolve_device_refuses_cuda_without_cuda(monkeypatch, name):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=rf"device '{name}' requested but CUDA is not available"):
        resolve_device(name)


@pytest.mark.parametrize("name", ["cpu", "cuda:0"])
def test_resolve_device_passes_other_names_through(monkeypatch, name):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device(name) == torch.device(name)


def test_resolve_device_auto_on_this_machine():
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_resolve_device_cuda_raises_on_this_machine():
    with pytest.raises(ValueError, match="CUDA is not available on this machine"):
        resolve_device("cuda")


# ------------------------------------------------------------------------------ recovering from "everything is foreground"

def false_positive_fraction(model: nn.Module, images: torch.Tensor) -> float:
    """Fraction of the pixels of background-only patches predicted foreground."""
    model.eval()
    with torch.no_grad():
        return (model(images) > 0).float().mean().item()


@pytest.mark.parametrize("scope", ["patch", "batch"])
def test_a_model_predicting_all_foreground_on_background_patches_is_trained_back(scope):
    """Issue 10's collapse: a model that marks every pixel of background-only patches as foreground must be
    trained back by the dynamic loss (with ``bce_in_every_branch``); the original loss leaves it stuck."""
    toy = make_patches(toy_set([(64, 64)] * 2), 32)
    background = torch.rand(8, 1, 32, 32, generator=torch.Generator().manual_seed(1)) * 0.2
    patches = Patches(torch.cat([toy.images, background]), torch.cat([toy.masks, torch.zeros_like(background)]))

    def collapsed() -> nn.Module:
        model = fresh_model()
        with torch.no_grad():
            model.head.bias.fill_(4.0)  # every pixel foreground
        return model

    config = tiny_config(epochs=12, lr=1e-2, loss=LossConfig(loss_scope=scope, bce_in_every_branch=True))  # 48 steps
    fixed = collapsed()
    assert false_positive_fraction(fixed, background) == 1.0
    train(fixed, patches, config)
    assert false_positive_fraction(fixed, background) < 0.2
    # Background-only patches alone (48 steps): the original loss gives them no gradient at all, the fix does.
    only_background = Patches(background, torch.zeros_like(background))
    for fix, recovered in ((False, False), (True, True)):
        model = collapsed()
        train(model, only_background, tiny_config(epochs=12, batch_size=2, loss=LossConfig(loss_scope=scope, bce_in_every_branch=fix)))
        assert (false_positive_fraction(model, background) < 0.2) == recovered


def test_training_stops_at_the_first_non_finite_loss_and_names_epoch_and_step():
    from segft.training import NonFiniteLossError

    model = build_model(ModelConfig(encoder="resnet18", encoder_depth=3, decoder_channels=(8, 8, 8)))
    images = torch.rand(12, 1, 32, 32)
    images[5] = float("nan")  # poisons whichever step draws patch 5
    patches = Patches(images=images, masks=(images > 0.5).float())
    logs = []
    with pytest.raises(NonFiniteLossError, match=r"at epoch 1, step \d of 3; stopped, no model registered"):
        train(model, patches, TrainConfig(epochs=2, batch_size=4, lr=1e-3, patch_size=32,
                                          model=ModelConfig(encoder="resnet18", encoder_depth=3,
                                                            decoder_channels=(8, 8, 8))), on_epoch=logs.append)
    assert logs == []


# ------------------------------------------------------------------------------------------ WiSE-FT mixing

def test_mixing_with_the_start_lands_between_the_start_and_the_trained_weights(patches):
    """``mix_with_start`` (WiSE-FT): the same training, then each floating tensor (weights and normalization
    statistics) is mix x trained + (1 - mix) x start; counters keep their trained value."""
    start = {name: value.clone() for name, value in fresh_model().state_dict().items()}
    trained, mixed = fresh_model(), fresh_model()
    train(trained, patches, tiny_config())
    seen = []
    train(mixed, patches, tiny_config(), on_epoch=lambda log: seen.append(mixed.state_dict()["head.bias"].clone()),
          mix_with_start=0.25)
    for name, value in mixed.state_dict().items():
        expected = 0.25 * trained.state_dict()[name] + 0.75 * start[name] if value.is_floating_point() \
            else trained.state_dict()[name]
        assert torch.allclose(value, expected.to(value.dtype), atol=1e-6), name
    assert torch.equal(seen[-1], mixed.state_dict()["head.bias"])  # the last epoch's callback sees the mixed model
    assert not torch.equal(trained.state_dict()["head.bias"], start["head.bias"])  # training moved it: not vacuous


@pytest.mark.parametrize("mix", [0.0, 1.5, float("nan")])
def test_a_mix_outside_0_to_1_is_refused(mix):
    with pytest.raises(ValueError, match="finetune_mix"):
        TrainConfig(finetune_mix=mix)


def test_patches_and_the_segmenter_normalize_as_configured():
    image_set = toy_set([(64, 64)])
    patches = make_patches(image_set, 32, normalization="deviation")
    expected = normalize_image(image_set.images[0], "deviation")
    assert torch.allclose(patches.images[0, 0], torch.from_numpy(expected[:32, :32]))
    segmenter = SlidingWindowSegmenter(nn.Identity(), patch_size=32, overlap=0.5, normalization="deviation")
    probabilities = segmenter.probabilities(image_set.images[0])
    assert np.allclose(probabilities, 1 / (1 + np.exp(-expected)), atol=1e-5)
