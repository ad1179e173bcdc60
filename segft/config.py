"""Typed settings for every segft command: the one place that knows the defaults.

The defaults reproduce the original study's protocol (PAULow: patch-based Attention U-Net, 128 x 128 patches,
dynamic per-patch loss; Adam, 100 epochs, batch 4, learning rate 1e-5 for base training and fine-tuning).
Each field maps one-to-one onto a CLI flag (``--field-name``) and onto an ``MLproject`` parameter of the same
name (``field_name``); ``tests/test_config.py`` checks that the three agree.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ModelConfig:
    """How to build the Attention U-Net.

    Attributes:
        encoder: Any ``segmentation_models_pytorch`` encoder name (``smp.encoders.get_encoder``).
        encoder_weights: Pretrained weights name for the encoder (for example ``imagenet``); empty for random
            initialisation. Empty by default because nothing may be downloaded at run time.
        encoder_depth: Number of encoder stages used (3-5); each halves the resolution.
        decoder_channels: Channels of each decoder stage, deepest first; one entry per encoder stage.
    """

    encoder: str = "resnet18"
    encoder_weights: str = ""
    encoder_depth: int = 4
    decoder_channels: tuple[int, ...] = (128, 64, 32, 16)


@dataclass(frozen=True)
class LossConfig:
    """The dynamic per-patch loss (PAULow): which loss a patch gets depends on its predicted foreground.

    A patch with no predicted foreground pixel (sigmoid > 0.5) is trained with BCE; one whose predicted
    foreground covers less than ``small_foreground`` of the patch with BCE + Tversky; any other with
    Tversky + Focal Tversky.

    Attributes:
        small_foreground: Predicted-foreground fraction below which a patch counts as "small object".
        tversky_alpha: Tversky weight on false positives (Salehi et al. 2017).
        tversky_beta: Tversky weight on false negatives.
        focal_gamma: Exponent of the Focal Tversky loss, (1 - TI) ** gamma (Abraham & Khan 2019).
        weight_bce: Weight of the BCE term wherever it is used.
        weight_tversky: Weight of the Tversky term wherever it is used.
        weight_focal_tversky: Weight of the Focal Tversky term.
    """

    small_foreground: float = 0.0625
    tversky_alpha: float = 0.7
    tversky_beta: float = 0.3
    focal_gamma: float = 0.75
    weight_bce: float = 1.0
    weight_tversky: float = 1.0
    weight_focal_tversky: float = 1.0


@dataclass(frozen=True)
class SplitConfig:
    """The study's split, by position in each dataset's sorted file list (1-based in the docs).

    Attributes:
        dataset1_train_images: Dataset 1 images 1..N train the base model; the rest are Dataset 1's test set.
        dataset2_pool_images: Dataset 2 images 1..N are the fine-tuning pool; the rest are Dataset 2's test set.
    """

    dataset1_train_images: int = 25
    dataset2_pool_images: int = 20


#: What training from a base model may keep fixed (see ``segft.models.freezing``).
FREEZE_MODES = ("none", "norm", "encoder")


@dataclass(frozen=True)
class TrainConfig:
    """Everything one training run (base or fine-tuning) needs.

    Attributes:
        data_dir: Study data root holding ``dataset1/`` and ``dataset2/``; empty for the built-in synthetic data.
        epochs: Passes over the training patches.
        batch_size: Patches per optimizer step.
        lr: Adam learning rate.
        patch_size: Side of the square training patches (and of the inference window).
        seed: Seeds weight initialisation and patch order; a CPU run with the same seed is repeatable.
        device: ``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``.
        overlap: Fraction of the window shared by neighbouring windows at evaluation.
        freeze: What training from a base model (fine-tuning, joint) keeps fixed: ``none`` (the original
            protocol), ``norm`` (normalization statistics) or ``encoder`` (encoder weights and statistics).
        model: Architecture settings.
        loss: Dynamic-loss settings.
        split: Which images train, fine-tune and test.
    """

    data_dir: str = ""
    epochs: int = 100
    batch_size: int = 4
    lr: float = 1e-5
    patch_size: int = 128
    seed: int = 0
    device: str = "auto"
    overlap: float = 0.5
    freeze: str = "none"
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    split: SplitConfig = field(default_factory=SplitConfig)

    def __post_init__(self) -> None:
        """Refuse settings that could only fail later, once an MLflow run exists.

        Raises:
            ValueError: For non-positive epochs, batch size or learning rate, an overlap outside [0, 1), or a
                patch size the encoder cannot halve ``encoder_depth`` times.
        """
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError(f"epochs, batch_size and lr must be positive, got {self.epochs}, {self.batch_size}, {self.lr}")
        if not 0 <= self.overlap < 1:
            raise ValueError(f"overlap must be in [0, 1), got {self.overlap}")
        if self.freeze not in FREEZE_MODES:
            raise ValueError(f"unknown freeze mode {self.freeze!r}; choose from {list(FREEZE_MODES)}")
        factor = 2**self.model.encoder_depth
        if self.patch_size < factor or self.patch_size % factor:
            raise ValueError(
                f"patch_size {self.patch_size} must be a multiple of 2**encoder_depth = {factor} (encoder_depth="
                f"{self.model.encoder_depth})"
            )


@dataclass(frozen=True)
class RegistryConfig:
    """Names under which trained models are registered in the MLflow model registry.

    Attributes:
        base_model_name: Registered model for base (Dataset 1) models.
        finetuned_model_name: Registered model for fine-tuned models.
    """

    base_model_name: str = "segft-base"
    finetuned_model_name: str = "segft-finetuned"


@dataclass(frozen=True)
class BaseConfig:
    """The ``base`` command: train on Dataset 1, evaluate on both test sets."""

    train: TrainConfig = field(default_factory=TrainConfig)
    registry: RegistryConfig = field(default_factory=RegistryConfig)


@dataclass(frozen=True)
class FinetuneConfig:
    """The ``finetune`` command.

    Attributes:
        n_images: How many images of Dataset 2's fine-tuning pool to train on (the first ``n_images``).
        base_model: MLflow model URI to start from; empty for the latest registered base model trained on the
            same data with the same encoder (trained first, as its own run, if there is none).
    """

    train: TrainConfig = field(default_factory=TrainConfig)
    registry: RegistryConfig = field(default_factory=RegistryConfig)
    n_images: int = 5
    base_model: str = ""

    def __post_init__(self) -> None:
        if self.n_images < 1:
            raise ValueError(f"n_images must be >= 1, got {self.n_images}")


#: The arms a study can run beside the raw base model (see ``StudyConfig.arms``).
ARMS = ("finetune", "scratch", "joint")


@dataclass(frozen=True)
class StudyConfig:
    """The ``study`` command: the raw base model, then every arm for every fine-tuning size and repeat.

    Attributes:
        sizes: Numbers of Dataset 2 images to fine-tune with.
        repeats: Repeats of every arm and size; repeat ``r`` uses seed ``seed + r``.
        arms: Any of ``finetune`` (from the base model), ``scratch`` (the same images, random initialisation:
            does the base model help at all?) and ``joint`` (Dataset 1 training images plus the Dataset 2 images,
            from the base model: does replay prevent forgetting?).
        resample: Repeats other than 0 draw their fine-tuning images at random from the pool (nested: a larger
            size contains the smaller ones); repeat 0, and every repeat when false, takes the first n images.
        preset: Training settings to start from: ``protocol`` (the original study) or ``quick`` (a 2-core CPU
            finishes the whole study in minutes); explicit training parameters override the preset.
        report_dir: Local folder for the report (also logged on the study's parent run).
    """

    train: TrainConfig = field(default_factory=TrainConfig)
    registry: RegistryConfig = field(default_factory=RegistryConfig)
    sizes: tuple[int, ...] = (5, 10, 15, 20)
    repeats: int = 3
    arms: tuple[str, ...] = ("finetune", "scratch")
    resample: bool = True
    preset: str = "protocol"
    report_dir: str = "segft-report"

    def __post_init__(self) -> None:
        unknown = sorted(set(self.arms) - set(ARMS))
        if unknown or not self.arms:
            raise ValueError(f"unknown arms {unknown}; choose from {list(ARMS)}")
        if not self.sizes or min(self.sizes) < 1:
            raise ValueError(f"sizes must be positive numbers of images, got {self.sizes}")
        if self.repeats < 1:
            raise ValueError(f"repeats must be >= 1, got {self.repeats}")


@dataclass(frozen=True)
class ReportConfig:
    """The ``report`` command: read a study back from the tracking server and build the report.

    Attributes:
        tracking_uri: Tracking server or store to read from (for example ``http://127.0.0.1:5000``); empty for
            MLflow's default (``MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db``).
        study_id: The study to report (tag ``segft.study_id``); empty for the newest study in ``experiment``.
        experiment: Experiment name to look in; empty for all experiments.
        report_dir: Local folder for the report.
        grid_images: Test images per dataset shown in the overlay comparison grid.
    """

    tracking_uri: str = ""
    study_id: str = ""
    experiment: str = ""
    report_dir: str = "segft-report"
    grid_images: int = 2
