"""Tests for segft.models: the attention gate, the attention decoder wiring, the model and ``build_model``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import segmentation_models_pytorch as smp
import torch

from segft.config import ModelConfig
from segft.models import AttentionGate, AttentionUnet, build_model
from segft.models.freezing import freeze
from segft.models.paulow import PaulowUnet


pytestmark = pytest.mark.usefixtures("one_thread")

GATE_CASES = [  # gate channels, skip channels, inter channels, batch, (H, W)
    (8, 4, None, 2, (16, 16)),
    (4, 8, None, 2, (16, 16)),
    (3, 5, 2, 2, (7, 9)),  # odd sizes, explicit intermediate width
    (16, 1, None, 3, (4, 4)),  # one skip channel: intermediate width max(1 // 2, 1) = 1
    (1, 64, 32, 2, (1, 1)),
]


@pytest.mark.parametrize("gate_channels, skip_channels, inter, batch, size", GATE_CASES)
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_attention_gate_output_has_the_skip_shape(gate_channels, skip_channels, inter, batch, size, mode):
    torch.manual_seed(0)
    gate = AttentionGate(gate_channels, skip_channels, inter)
    gate.train(mode == "train")
    g, x = torch.randn(batch, gate_channels, *size), torch.randn(batch, skip_channels, *size)
    assert gate(g, x).shape == x.shape


@pytest.mark.parametrize("gate_channels, skip_channels, inter, batch, size", GATE_CASES)
def test_attention_gate_scales_the_skip_by_one_coefficient_in_0_1_per_pixel(
    gate_channels, skip_channels, inter, batch, size
):
    torch.manual_seed(1)
    gate = AttentionGate(gate_channels, skip_channels, inter)
    g, x = torch.randn(batch, gate_channels, *size), torch.randn(batch, skip_channels, *size)
    x[x.abs() < 1e-3] = 1.0  # keep the ratio well defined
    ratio = gate(g, x) / x
    assert ((ratio >= 0) & (ratio <= 1)).all()
    # one coefficient per pixel, shared by every channel of the skip
    assert torch.allclose(ratio, ratio[:, :1].expand_as(ratio), atol=1e-6)


def test_attention_gate_depends_on_the_gating_signal():
    torch.manual_seed(2)
    gate = AttentionGate(4, 4)
    x = torch.randn(2, 4, 8, 8)
    first, second = gate(torch.randn(2, 4, 8, 8), x), gate(torch.randn(2, 4, 8, 8), x)
    assert not torch.allclose(first, second)


@pytest.mark.parametrize("gate_channels, skip_channels, inter, expected_inter", [
    (6, 10, None, 5),  # default: half the skip
    (6, 1, None, 1),  # at least 1
    (6, 10, 3, 3),  # explicit
])
def test_attention_gate_intermediate_width(gate_channels, skip_channels, inter, expected_inter):
    gate = AttentionGate(gate_channels, skip_channels, inter)
    assert gate.project_gate[0].in_channels == gate_channels and gate.project_skip[0].in_channels == skip_channels
    assert gate.project_gate[0].out_channels == gate.project_skip[0].out_channels == expected_inter
    assert gate.psi[0].in_channels == expected_inter and gate.psi[0].out_channels == 1


MODEL_CASES = [  # encoder, depth, decoder channels, input (B, 1, H, W)
    ("resnet18", 3, (16, 8, 4), (2, 1, 32, 32)),
    ("resnet18", 3, (16, 8, 4), (1, 1, 64, 40)),  # not square
    ("resnet18", 4, (16, 8, 8, 4), (2, 1, 32, 32)),
    ("efficientnet-b0", 3, (16, 8, 4), (2, 1, 32, 32)),
    ("efficientnet-b0", 3, (8, 8, 8), (1, 1, 64, 64)),
]


@pytest.mark.parametrize("encoder, depth, decoder_channels, shape", MODEL_CASES)
def test_attention_unet_outputs_one_logit_map_of_the_input_size(encoder, depth, decoder_channels, shape):
    torch.manual_seed(0)
    model = AttentionUnet(ModelConfig(encoder=encoder, encoder_depth=depth, decoder_channels=decoder_channels))
    out = model(torch.randn(*shape))
    assert out.shape == (shape[0], 1, *shape[2:])
    assert torch.isfinite(out).all()
    assert len(model.decoder.blocks) == depth


def test_attention_unet_decoder_blocks_have_gates_except_the_last():
    model = AttentionUnet(ModelConfig(encoder="resnet18", encoder_depth=3, decoder_channels=(16, 8, 4)))
    gates = [block.gate for block in model.decoder.blocks]
    assert all(gate is not None for gate in gates[:-1]) and gates[-1] is None
    assert [block.conv2[0].out_channels for block in model.decoder.blocks] == [16, 8, 4]
    assert model.head.in_channels == 4 and model.head.out_channels == 1


@pytest.mark.parametrize("depth, decoder_channels, message", [
    (3, (16, 8), "decoder_channels has 2 entries but the encoder has 3 stages"),
    (3, (16, 8, 4, 2), "decoder_channels has 4 entries but the encoder has 3 stages"),
    (4, (16, 8, 4), "decoder_channels has 3 entries but the encoder has 4 stages"),
])
def test_decoder_channels_must_match_the_encoder_depth(depth, decoder_channels, message):
    with pytest.raises(ValueError, match=message):
        AttentionUnet(ModelConfig(encoder="resnet18", encoder_depth=depth, decoder_channels=decoder_channels))


def test_unknown_encoder_raises_key_error_listing_the_valid_names():
    with pytest.raises(KeyError, match=r"no-such-encoder.*resnet18.*efficientnet-b0"):
        AttentionUnet(ModelConfig(encoder="no-such-encoder", encoder_depth=3, decoder_channels=(16, 8, 4)))


ENCODER_CHANNELS = {  # smp's out_channels: the input, then each stage
    ("resnet18", 3): [1, 64, 64, 128],
    ("resnet18", 4): [1, 64, 64, 128, 256],
    ("efficientnet-b0", 3): [1, 32, 24, 40],
}
BUILD_CASES = [
    ModelConfig(encoder="resnet18", encoder_depth=3, decoder_channels=(16, 8, 4)),
    ModelConfig(encoder="efficientnet-b0", encoder_weights="", encoder_depth=3, decoder_channels=(12, 8, 6)),
    ModelConfig(encoder="resnet18", encoder_depth=4, decoder_channels=[16, 8, 8, 4]),  # a list, as read from JSON
]


@pytest.mark.parametrize("config", BUILD_CASES)
def test_build_model_respects_the_config(config):
    model = build_model(config)
    assert type(model.encoder) is type(smp.encoders.get_encoder(config.encoder, weights=None, depth=3))
    assert list(model.encoder.out_channels) == ENCODER_CHANNELS[config.encoder, config.encoder_depth]
    assert model.encoder.out_channels[0] == 1  # one grey input channel
    assert [block.conv2[0].out_channels for block in model.decoder.blocks] == list(config.decoder_channels)
    assert model.head.in_channels == config.decoder_channels[-1]
    assert model(torch.randn(1, 1, 32, 32)).shape == (1, 1, 32, 32)


def test_build_model_with_unknown_encoder_raises_key_error():
    with pytest.raises(KeyError, match="Wrong encoder name"):
        build_model(ModelConfig(encoder="resnet-7", encoder_depth=3, decoder_channels=(16, 8, 4)))


def test_same_seed_builds_identical_models():
    config = ModelConfig(encoder="resnet18", encoder_depth=3, decoder_channels=(16, 8, 4))
    torch.manual_seed(5)
    first = build_model(config)
    torch.manual_seed(5)
    second = build_model(config)
    for (name, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("depth, absent", [(3, ("encoder.layer3.", "encoder.layer4.")), (4, ("encoder.layer4.",))])
def test_stages_deeper_than_the_encoder_depth_carry_no_weights(depth, absent):
    model = AttentionUnet(ModelConfig(encoder="resnet18", encoder_depth=depth, decoder_channels=(16, 8, 4, 2)[:depth]))
    keys = model.state_dict().keys()
    assert not [key for key in keys if key.startswith(absent)]
    assert any(key.startswith(f"encoder.layer{depth - 1}.") for key in keys)


# ------------------------------------------------------------------ arch=paulow against the original network

PAULOW_REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "paulow"


@pytest.fixture(scope="module")
def paulow_reference() -> dict:
    """Facts measured on the original ``AttentionUNet`` (NTUMMIO/PAULow, see the folder's README.md)."""
    if not PAULOW_REFERENCE.is_dir():
        pytest.skip(f"no PAULow reference at {PAULOW_REFERENCE}")
    return json.loads((PAULOW_REFERENCE / "paulow_reference.json").read_text())


def describe_leaf_modules(model: torch.nn.Module) -> list[str]:
    """Every leaf module in order, written as the reference writes them."""
    def describe(module: torch.nn.Module) -> str:
        if isinstance(module, torch.nn.GroupNorm):
            return f"GroupNorm(groups={module.num_groups})"
        if isinstance(module, torch.nn.Dropout2d):
            return f"Dropout2d(p={module.p})"
        return type(module).__name__

    return [f"{name}: {describe(module)}" for name, module in model.named_modules() if not list(module.children())]


@pytest.mark.parametrize("in_channels", [1, 3])
def test_paulow_has_the_original_modules_parameters_and_state_dict(paulow_reference, in_channels):
    reference = paulow_reference[f"img_ch={in_channels}"]
    model = PaulowUnet(in_channels)
    assert describe_leaf_modules(model) == reference["modules"]
    assert sum(p.numel() for p in model.parameters()) == reference["parameters"]
    shapes = [(key, list(value.shape)) for key, value in model.state_dict().items()]
    assert shapes == list(reference["state_dict_shapes"].items())  # same keys, shapes and order: checkpoints load
    if in_channels == 1:
        assert [key for key, _ in shapes] == paulow_reference["state_dict_order"]
        assert reference["parameters"] == 8_134_954


def test_build_model_paulow_is_the_original_network(paulow_reference):
    model = build_model(ModelConfig(arch="paulow"))
    assert isinstance(model, PaulowUnet)
    assert describe_leaf_modules(model) == paulow_reference["img_ch=1"]["modules"]


def test_paulow_reproduces_the_original_logits(paulow_reference):
    """The reference's deterministic forward pass: state_dict entry j filled with 0.05 sin(0.37 k + j), a smooth
    input image, eval mode; the original's output is its logits (it ends without a sigmoid)."""
    model = PaulowUnet()
    state = model.state_dict()
    assert all(value.is_floating_point() for value in state.values())
    filled = {
        key: torch.from_numpy(
            (0.05 * np.sin(0.37 * np.arange(value.numel(), dtype=np.float64) + j)).astype(np.float32)
        ).reshape(value.shape)
        for j, (key, value) in enumerate(state.items())
    }
    model.load_state_dict(filled)
    yy, xx = np.meshgrid(np.arange(128.0), np.arange(128.0), indexing="ij")
    image = torch.from_numpy((0.5 + 0.5 * np.sin(xx / 7) * np.cos(yy / 11)).astype(np.float32)).reshape(1, 1, 128, 128)
    expected = torch.from_numpy(np.load(PAULOW_REFERENCE / "paulow_reference_logits.npy"))
    with torch.no_grad():
        logits = model.eval()(image)
    assert logits.shape == expected.shape == (1, 1, 128, 128)
    assert (logits - expected).abs().max().item() < 1e-5


def test_paulow_outputs_one_logit_map_of_the_input_size_and_drops_out_only_in_training():
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="paulow"))
    x = torch.randn(2, 1, 32, 48)
    assert model(x).shape == (2, 1, 32, 48)
    assert ModelConfig(arch="paulow").size_divisor == 8 and ModelConfig(encoder_depth=4).size_divisor == 16
    with torch.no_grad():
        assert torch.equal(model.eval()(x), model(x))
        assert not torch.equal(model.train()(x), model(x))
    slopes = {m.negative_slope for m in model.modules() if isinstance(m, torch.nn.LeakyReLU)}
    assert slopes == {0.01}


def test_paulow_encoder_is_the_contracting_path_and_freezes():
    model = freeze(PaulowUnet(), "encoder")
    frozen = {name.split(".")[0] for name, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {"conv1", "conv2", "conv3", "conv4"}
    assert list(model.state_dict()) == list(PaulowUnet().state_dict())  # the encoder view adds no keys


def test_weight_standardized_convolution_uses_zero_mean_unit_variance_weights():
    """As the original (and Qiao et al.'s code): unbiased standard deviation per output channel, plus 1e-5."""
    from segft.models.paulow import WSConv2d

    conv = WSConv2d(2, 3, 3, padding=1)
    torch.nn.init.normal_(conv.weight, mean=5.0, std=3.0)
    x = torch.randn(1, 2, 8, 8)
    w = conv.weight
    standardized = (w - w.mean(dim=(1, 2, 3), keepdim=True)) / (w.std(dim=(1, 2, 3), keepdim=True) + 1e-5)
    expected = torch.nn.functional.conv2d(x, standardized, conv.bias, padding=1)
    assert torch.allclose(conv(x), expected, atol=1e-5)


def test_unknown_arch_lists_the_valid_ones():
    with pytest.raises(ValueError, match="attention_unet.*paulow"):
        ModelConfig(arch="unetr")


def test_default_model_is_the_light_mobilenet_attention_unet():
    """The default (README "Performance"): timm's MobileNetV3-Small at depth 4, built offline, under a million weights."""
    model = build_model(ModelConfig()).eval()
    assert isinstance(model, AttentionUnet) and type(model.encoder).__name__ == "TimmUniversalEncoder"
    assert 0.9e6 < sum(p.numel() for p in model.parameters()) < 1.0e6
    with torch.no_grad():
        assert model(torch.rand(2, 1, 128, 96)).shape == (2, 1, 128, 96)
