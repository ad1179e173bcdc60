"""Typed settings for every segft command: the one place that knows the defaults.

The defaults reproduce the original study's protocol (PAULow: patch-based Attention U-Net, 128 x 128 patches,
dynamic per-patch loss; Adam, 100 epochs, batch 4, learning rate 1e-5 for base training and fine-tuning).
Each field maps one-to-one onto a CLI flag (``--field-name``) and onto an ``MLproject`` parameter of the same
name (``field_name``); ``tests/test_config.py`` checks that the three agree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

from segft import schema
from segft.data.normalize import NORMALIZATIONS


def refuse_non_finite(config: object) -> None:
    """Refuse a NaN or infinite number in any field of a config dataclass (``--lr nan`` would pass every range
    check, since comparisons with NaN are false, and poison training).

    Raises:
        ValueError: Naming the field.
    """
    for item in fields(config):
        value = getattr(config, item.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{item.name} must be a finite number, got {value}")

#: Model architectures by name (built by ``segft.models.build_model``).
ARCHITECTURES = ("attention_unet", "paulow")
PAULOW_POOLINGS = 3


@dataclass(frozen=True)
class ModelConfig:
    """How to build the Attention U-Net.

    Attributes:
        arch: ``attention_unet`` (an smp encoder with our attention decoder) or ``paulow`` (the original study's
            network: 3 poolings, 64-512 channels, weight-standardized residual blocks, about 8.1 M parameters;
            the encoder settings below do not apply to it).
        encoder: Any ``segmentation_models_pytorch`` encoder name (``smp.encoders.get_encoder``), timm's through
            ``tu-<name>``. The default, MobileNetV3-Small (Howard et al. 2019) with a narrow decoder, trains about
            17x the original network's throughput at batch 4 on a 2-core CPU and segments a 2048 x 2048 image in
            about 2.5 s there (README, "Performance"; ``benchmarks/results/speed-cpu.json``); ``resnet18`` with ``decoder_channels=128,64,32,16`` is a heavier classic.
        encoder_weights: Pretrained weights name for the encoder (for example ``imagenet``); empty for random
            initialisation. Empty by default because nothing may be downloaded at run time.
        encoder_depth: Number of encoder stages used (3-5); each halves the resolution.
        decoder_channels: Channels of each decoder stage, deepest first; one entry per encoder stage.
    """

    arch: str = "attention_unet"
    encoder: str = "tu-mobilenetv3_small_100"
    encoder_weights: str = ""
    encoder_depth: int = 4
    decoder_channels: tuple[int, ...] = (32, 16, 8, 8)

    def __post_init__(self) -> None:
        if self.arch not in ARCHITECTURES:
            raise ValueError(f"unknown arch {self.arch!r}; choose from {list(ARCHITECTURES)}")

    @property
    def size_divisor(self) -> int:
        """Input sides must be multiples of this: every pooling halves them."""
        return 2 ** (self.encoder_depth if self.arch == "attention_unet" else PAULOW_POOLINGS)


#: Where the dynamic loss makes its choice (see ``segft.losses.dynamic``).
LOSS_SCOPES = ("patch", "batch")


@dataclass(frozen=True)
class LossConfig:
    """The dynamic loss (PAULow): which loss a region gets depends on its predicted foreground.

    A region with no predicted foreground pixel (sigmoid > 0.5) is trained with BCE; one whose predicted
    foreground covers less than ``small_foreground`` of it with BCE + Tversky; any other with Tversky + Focal
    Tversky (plus BCE with ``bce_in_every_branch``). See ``segft.losses.dynamic`` for the defect that fixes.

    Attributes:
        loss_scope: ``batch`` (the original study: one choice for the whole batch, Tversky pooled over it) or
            ``patch`` (each patch chooses its own loss).
        bce_in_every_branch: Add BCE to the Tversky + Focal Tversky branch, so that false positives on a region
            without foreground are always trained away. Off by default: the defaults are the original's loss,
            chosen on validation Dice over the fix (README, "Results"), where BCE in every branch drove one of two
            base models of the built-in data to predict nothing.
        small_foreground: Predicted-foreground fraction below which a region counts as "small object".
        tversky_alpha: Tversky weight on false positives (Salehi et al. 2017).
        tversky_beta: Tversky weight on false negatives.
        focal_gamma: Exponent of the Focal Tversky loss, (1 - TI) ** gamma (Abraham & Khan 2019).
        weight_bce: Weight of the BCE term wherever it is used.
        weight_tversky: Weight of the Tversky term wherever it is used.
        weight_focal_tversky: Weight of the Focal Tversky term.
    """

    loss_scope: str = "batch"
    bce_in_every_branch: bool = False
    small_foreground: float = 0.0625
    tversky_alpha: float = 0.7
    tversky_beta: float = 0.3
    focal_gamma: float = 0.75
    weight_bce: float = 1.0
    weight_tversky: float = 1.0
    weight_focal_tversky: float = 1.0

    def __post_init__(self) -> None:
        """Raises ValueError for an unknown scope or a ``small_foreground`` outside (0, 1]."""
        refuse_non_finite(self)
        if self.loss_scope not in LOSS_SCOPES:
            raise ValueError(f"unknown loss_scope {self.loss_scope!r}; choose from {list(LOSS_SCOPES)}")
        if not 0 < self.small_foreground <= 1:
            raise ValueError(f"small_foreground must be in (0, 1], got {self.small_foreground}")


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
#: How a training step runs (see ``segft.train_step``).
STEP_MODES = ("auto", "eager", "compile", "cuda_graph")
#: ``autocast`` settings: ``auto`` = bfloat16 autocast on CUDA, float32 elsewhere; ``on``; ``off`` (float32).
AUTOCAST_MODES = ("auto", "on", "off")


@dataclass(frozen=True)
class TrainConfig:
    """Everything one training run (base or fine-tuning) needs.

    Attributes:
        data_dir: Study data root holding ``dataset1/`` and ``dataset2/``; empty for the built-in synthetic data.
        epochs: Passes over the training patches.
        batch_size: Patches per optimizer step.
        lr: Adam learning rate.
        finetune_lr: Adam learning rate of training that starts from a base model (the ``finetune`` and ``joint``
            arms, the ``finetune`` command); 0 uses ``lr``, as the original protocol does. Fine-tuning starts near
            a good solution and usually wants a lower rate than training from random weights.
        finetune_mix: WiSE-FT (Wortsman et al. 2022, "Robust fine-tuning of zero-shot models"): after training
            from a base model, each weight becomes ``finetune_mix`` x its trained value + (1 - ``finetune_mix``)
            x the base model's. 1 keeps the trained weights (the original protocol); lower values trade some of
            what fine-tuning gained on Dataset 2 for what the base model knew of Dataset 1.
        patch_size: Side of the square training patches (and of the inference window).
        normalization: How each image's intensities are normalized before training and inference
            (``segft.data.normalize``): ``percentile`` (1st percentile to 0, 99.8th to 1, as CSBDeep) or
            ``deviation`` (distance from the image's median, blind to the contrast's sign: bright-on-dark and
            dark-on-bright objects look alike). The checkpoint carries it to inference.
        seed: Seeds weight initialisation and patch order; a CPU run with the same seed, ``threads`` and CPU
            instruction sets is repeatable.
        threads: PyTorch threads every run trains with: another count sums in another order, and training
            amplifies the rounding into other results, so it is logged (param ``threads``) and part of a study's id
            and a base model's key. 0 resolves it once as the command starts: on Ray to the task's
            ``cpus_per_run`` rounded down (at least 1), in process to the count torch chose (``OMP_NUM_THREADS``,
            else the cores).
        device: ``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``.
        overlap: Fraction of the window shared by neighbouring windows at evaluation.
        freeze: What training from a base model (fine-tuning, joint) keeps fixed: ``none`` (the original
            protocol), ``norm`` (normalization statistics) or ``encoder`` (those and the encoder's weights).
        step: How each training step runs: ``auto`` (``cuda_graph`` on CUDA, ``eager`` on CPU), ``eager``,
            ``compile`` (``torch.compile``) or ``cuda_graph`` (the whole step captured once and replayed).
        autocast: bfloat16 autocast of the forward pass in training: ``off`` (float32), ``auto`` (on CUDA only)
            or ``on``; the loss and the optimizer stay float32.
        channels_last: Keep the model's weights and activations in channels-last (NHWC) memory layout, which
            oneDNN on CPU and cuDNN on GPU run faster.
        model: Architecture settings.
        loss: Dynamic-loss settings.
        split: Which images train, fine-tune and test.
    """

    data_dir: str = ""
    epochs: int = 100
    batch_size: int = 4
    lr: float = 1e-5
    finetune_lr: float = 0.0
    finetune_mix: float = 1.0
    patch_size: int = 128
    normalization: str = "percentile"
    seed: int = 0
    threads: int = 0
    device: str = "auto"
    overlap: float = 0.5
    freeze: str = "none"
    step: str = "auto"
    autocast: str = "off"
    channels_last: bool = True
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    split: SplitConfig = field(default_factory=SplitConfig)

    def __post_init__(self) -> None:
        """Refuse settings that could only fail later, once an MLflow run exists.

        Raises:
            ValueError: For non-positive epochs, batch size or learning rate, negative threads, an overlap outside
                [0, 1), an unknown freeze, step or autocast mode, or a patch size the encoder cannot halve
                ``encoder_depth`` times.
        """
        refuse_non_finite(self)
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError(f"epochs, batch_size and lr must be positive, got {self.epochs}, {self.batch_size}, {self.lr}")
        if self.finetune_lr < 0:
            raise ValueError(f"finetune_lr must be positive, or 0 for lr, got {self.finetune_lr}")
        if not 0 < self.finetune_mix <= 1:
            raise ValueError(f"finetune_mix must be in (0, 1] (1: the trained weights), got {self.finetune_mix}")
        if self.threads < 0:
            raise ValueError(f"threads must be >= 0 (0: resolved as the command starts), got {self.threads}")
        if not 0 <= self.overlap < 1:
            raise ValueError(f"overlap must be in [0, 1), got {self.overlap}")
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(f"unknown normalization {self.normalization!r}; choose from {list(NORMALIZATIONS)}")
        if self.freeze not in FREEZE_MODES:
            raise ValueError(f"unknown freeze mode {self.freeze!r}; choose from {list(FREEZE_MODES)}")
        if self.step not in STEP_MODES:
            raise ValueError(f"unknown step mode {self.step!r}; choose from {list(STEP_MODES)}")
        if self.autocast not in AUTOCAST_MODES:
            raise ValueError(f"unknown autocast mode {self.autocast!r}; choose from {list(AUTOCAST_MODES)}")
        factor = self.model.size_divisor
        if self.patch_size < factor or self.patch_size % factor:
            raise ValueError(
                f"patch_size {self.patch_size} must be a multiple of {factor} (arch={self.model.arch}, "
                f"encoder_depth={self.model.encoder_depth})"
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
class TrackingConfig:
    """Where and how runs are tracked.

    Attributes:
        experiment: MLflow experiment the runs go to (created if needed, and tagged so that MLflow's UI opens it
            as model training). Under ``mlflow run`` MLflow has already chosen it: pass ``--experiment-name``
            to ``mlflow run`` instead.
        system_metrics: Log CPU, memory, disk, network and (with an NVIDIA GPU) GPU use over every run without a
            parent (a study's parent run, a plain ``base`` or ``finetune`` run), as MLflow's ``system/*`` metrics;
            MLflow samples the whole machine, so a child run's chart would repeat its parent's
            (``segft.tracking.runs.start_run``).
    """

    experiment: str = "segft"
    system_metrics: bool = True

    def __post_init__(self) -> None:
        if not self.experiment.strip():
            raise ValueError("experiment must name an MLflow experiment, got an empty name")


#: Where a study's runs or a tuning's trials execute (see ``ExecutorConfig.executor``).
EXECUTORS = ("local", "ray")


@dataclass(frozen=True)
class ExecutorConfig:
    """Where a study's runs, or a tuning's workers, execute; not part of a study's id, except through the thread
    count it resolves ``TrainConfig.threads`` 0 to.

    Attributes:
        executor: ``local`` (in this process, one run after the other) or ``ray`` (each run, or each tuning worker,
            is a Ray task: the base models first, then the arms; needs the ``ray`` extra).
        ray_address: Ray cluster to submit to (``auto``, ``ray://host:10001``...); empty starts a local Ray
            instance with this machine's CPUs and GPUs. Workers on other machines must reach the tracking server
            (and the tuning storage), and the data folder at the same path.
        cpus_per_run: CPUs each Ray task asks for; with ``threads`` 0, a task's PyTorch uses that many threads
            (rounded down, at least 1).
        gpus_per_run: GPUs each Ray task asks for; fractions share a GPU (0.25: four fine-tunes on one GPU, each
            in its own process with its own CUDA graph and stream).
        task_retries: Times Ray starts a task again whose worker died (killed, out of memory, node lost); its
            unfinished run is marked FAILED first. After the last try the run is marked FAILED and the command
            fails once every other task has ended.
    """

    executor: str = "local"
    ray_address: str = ""
    cpus_per_run: float = 1.0
    gpus_per_run: float = 0.0
    task_retries: int = 2

    def __post_init__(self) -> None:
        refuse_non_finite(self)
        if self.executor not in EXECUTORS:
            raise ValueError(f"unknown executor {self.executor!r}; choose from {list(EXECUTORS)}")
        if self.cpus_per_run <= 0 or self.gpus_per_run < 0 or self.task_retries < 0:
            raise ValueError(f"need cpus_per_run > 0, gpus_per_run >= 0 and task_retries >= 0, got "
                             f"{self.cpus_per_run}, {self.gpus_per_run}, {self.task_retries}")
        if self.gpus_per_run > 1 and self.gpus_per_run != int(self.gpus_per_run):
            raise ValueError(f"gpus_per_run above 1 must be a whole number (Ray's rule), got {self.gpus_per_run}")


@dataclass(frozen=True)
class BaseConfig:
    """The ``base`` command: train on Dataset 1, evaluate on both test sets."""

    train: TrainConfig = field(default_factory=TrainConfig)
    registry: RegistryConfig = field(default_factory=RegistryConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)


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
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    n_images: int = 5
    base_model: str = ""

    def __post_init__(self) -> None:
        if self.n_images < 1:
            raise ValueError(f"n_images must be >= 1, got {self.n_images}")


@dataclass(frozen=True)
class StudyConfig:
    """The ``study`` command: the raw base model, then every arm for every fine-tuning size and repeat.

    Attributes:
        sizes: Numbers of Dataset 2 images to fine-tune with.
        repeats: Repeats of every arm and size; repeat ``r`` uses seed ``seed + r``.
        arms: Any of ``finetune`` (from the base model), ``scratch`` (the same images, random initialisation:
            does the base model help at all?), ``joint`` (Dataset 1 training images plus the Dataset 2 images,
            from the base model: does replay prevent forgetting?) and ``threshold`` (Otsu's threshold per image,
            no training, run once: the baseline a model must beat).
        resample: Repeats other than 0 draw their fine-tuning images at random from the pool (nested: a larger
            size contains the smaller ones); repeat 0, and every repeat when false, takes the first n images.
        base_per_repeat: Train one base model per repeat (seed ``seed + r``), so base-training variance enters
            every interval and the raw arm has repeats; false trains one base model for all repeats.
        forgetting_margin: Equivalence margin of the finding "Dataset 1 is kept": every size's interval of the
            Dataset 1 change against the raw model must lie within plus or minus this.
        preset: Training settings to start from: ``protocol`` (the original study) or ``quick`` (a 2-core CPU
            finishes the whole study in minutes); explicit training parameters override the preset.
        report_dir: Local folder for the report (also logged on the study's parent run).
    """

    train: TrainConfig = field(default_factory=TrainConfig)
    registry: RegistryConfig = field(default_factory=RegistryConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    execution: ExecutorConfig = field(default_factory=ExecutorConfig)
    sizes: tuple[int, ...] = (5, 10, 15, 20)
    repeats: int = 5
    arms: tuple[str, ...] = (schema.FINETUNE_ARM, schema.SCRATCH_ARM, schema.THRESHOLD_ARM)
    resample: bool = True
    base_per_repeat: bool = True
    forgetting_margin: float = 0.05
    preset: str = "protocol"
    report_dir: str = "segft-report"

    def __post_init__(self) -> None:
        refuse_non_finite(self)
        unknown = sorted(set(self.arms) - set(schema.ARMS))
        if unknown or not self.arms:
            raise ValueError(f"unknown arms {unknown}; choose from {list(schema.ARMS)}")
        if not self.sizes or min(self.sizes) < 1:
            raise ValueError(f"sizes must be positive numbers of images, got {self.sizes}")
        if len(set(self.sizes)) != len(self.sizes):
            raise ValueError(f"sizes must differ from each other, got {','.join(map(str, self.sizes))}")
        if self.repeats < 1:
            raise ValueError(f"repeats must be >= 1, got {self.repeats}")
        if not 0 < self.forgetting_margin < 1:
            raise ValueError(f"forgetting_margin must be in (0, 1), got {self.forgetting_margin}")


#: File formats ``predict`` writes masks in.
MASK_FORMATS = ("tif", "png")


@dataclass(frozen=True)
class PredictConfig:
    """The ``predict`` command: segment image files with a logged or registered model.

    Attributes:
        model: MLflow model URI, for example ``models:/segft-finetuned@champion`` (the version a study
            recommends), ``models:/segft-finetuned/3`` or ``runs:/<run id>/model``.
        input: An image file, a multi-page TIFF stack, or a folder of image files (PNG, JPEG, TIFF).
        output: Folder for the masks (created if needed); never the input folder.
        format: ``tif`` (a stack stays one multi-page file) or ``png`` (one file per page).
        overlays: Also write ``<name>_overlay.png``: the image with the predicted contour.
        device: ``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``.
        overlap: Fraction of the window shared by neighbouring windows.
        threshold: Foreground probability above which a pixel is foreground.
        batch_size: Windows per forward pass.
        autocast: ``off`` (float32, the default until bfloat16 is checked on a GPU), ``auto`` (bfloat16 on
            CUDA, float32 on CPU) or ``on``.
        memory_budget_mb: Memory for an image's pixels, beyond the loaded model. A file that would need more
            to segment whole (about 32 bytes per pixel) is read, segmented and written strip by strip when it is
            a TIFF, or refused before the model loads when it is a PNG or JPEG or with ``--format png`` or
            ``--overlays`` (they cannot be streamed).
    """

    model: str = "models:/segft-finetuned@champion"
    input: str = ""
    output: str = ""
    format: str = "tif"
    overlays: bool = False
    device: str = "auto"
    overlap: float = 0.5
    threshold: float = 0.5
    batch_size: int = 16
    autocast: str = "off"
    memory_budget_mb: int = 1024

    def __post_init__(self) -> None:
        """Refuse settings that could only fail after the model is loaded.

        Raises:
            ValueError: For an unknown format or autocast mode, an overlap outside [0, 1), a threshold outside
                [0, 1], a batch size below 1 or a memory budget below 1 MB.
        """
        refuse_non_finite(self)
        if self.format not in MASK_FORMATS:
            raise ValueError(f"unknown format {self.format!r}; choose from {list(MASK_FORMATS)}")
        if self.autocast not in AUTOCAST_MODES:
            raise ValueError(f"unknown autocast mode {self.autocast!r}; choose from {list(AUTOCAST_MODES)}")
        if not 0 <= self.overlap < 1:
            raise ValueError(f"overlap must be in [0, 1), got {self.overlap}")
        if not 0 <= self.threshold <= 1 or self.batch_size < 1:
            raise ValueError(f"need 0 <= threshold <= 1 and batch_size >= 1, got {self.threshold}, {self.batch_size}")
        if self.memory_budget_mb < 1:
            raise ValueError(f"memory_budget_mb must be at least 1, got {self.memory_budget_mb}")


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
        dice_target: The Dataset 2 Dice the learning curve is asked about: how many images reach it
            (``analysis.curve``).
    """

    tracking_uri: str = ""
    study_id: str = ""
    experiment: str = ""
    report_dir: str = "segft-report"
    grid_images: int = 2
    dice_target: float = 0.8

    def __post_init__(self) -> None:
        if not 0 < self.dice_target < 1:
            raise ValueError(f"dice_target must be between 0 and 1, got {self.dice_target}")


#: What ``tune`` can tune the learning rate of (see ``TuneConfig.target``).
TUNE_TARGETS = ("finetune", "base")
#: Pruners ``tune`` can stop unpromising trials with (see ``TuneConfig.pruner``).
PRUNERS = ("median", "hyperband", "none")


@dataclass(frozen=True)
class TuneConfig:
    """The ``tune`` command: an Optuna study of the learning rate, scored on validation images, never test images.

    Each trial draws its own learning rate, so ``train.lr`` is not used; the other training settings apply to
    every trial.

    Attributes:
        target: ``finetune`` (tune fine-tuning with ``n_images`` Dataset 2 images, validated on the pool's other
            images) or ``base`` (tune base training, validated on the last fifth of Dataset 1's training images).
        n_images: Pool images to fine-tune with (``target=finetune``); must be below ``dataset2_pool_images``.
        base_model: Model URI the fine-tuning trials start from; empty for the newest registered base model of
            the same data and encoder (trained first if there is none).
        n_trials: Trials this call runs, split among its ``workers`` (each other call sharing the study runs its
            own); 0 only reports or applies the study's best so far.
        workers: Tuning workers this call runs at once, each a Ray task (``executor=ray``) drawing trials from the
            same Optuna study; 1 with the ``local`` executor.
        timeout: Stop starting new trials after this many seconds; 0 for no limit.
        lr_min: Lower end of the learning-rate search range (sampled log-uniformly).
        lr_max: Upper end of the learning-rate search range.
        storage: Optuna storage URL (for example ``postgresql://user@host/db`` shared by several workers; the
            password in ``SEGFT_STORAGE_PASSWORD`` or ``PGPASSWORD``, never in the URL, which ``mlflow run``
            logs); empty for ``optuna.db`` next to the MLflow tracking store.
        study_name: Optuna study to create or continue; empty for one derived from target, n_images and data.
        pruner: ``median`` (stop a trial whose validation Dice falls below the median of earlier trials at the
            same epoch), ``hyperband`` or ``none``.
        pruner_startup_trials: Trials the median pruner lets finish before it prunes any.
        report_every: Score the validation images (and let the pruner decide) every this many epochs; the last
            epoch is always scored.
        apply: After tuning, train and register a model with the best learning rate (``finetune`` or ``base``).
    """

    train: TrainConfig = field(default_factory=TrainConfig)
    registry: RegistryConfig = field(default_factory=RegistryConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    execution: ExecutorConfig = field(default_factory=ExecutorConfig)
    target: str = "finetune"
    n_images: int = 5
    base_model: str = ""
    n_trials: int = 20
    workers: int = 1
    timeout: float = 0.0
    lr_min: float = 1e-6
    lr_max: float = 1e-2
    storage: str = ""
    study_name: str = ""
    pruner: str = "median"
    pruner_startup_trials: int = 5
    report_every: int = 1
    apply: bool = False

    def __post_init__(self) -> None:
        """Refuse settings that could only fail later, once trials run.

        Raises:
            ValueError: For an unknown target or pruner, a search range that is not ``0 < lr_min < lr_max``,
                or negative counts.
        """
        refuse_non_finite(self)
        if self.target not in TUNE_TARGETS:
            raise ValueError(f"unknown target {self.target!r}; choose from {list(TUNE_TARGETS)}")
        if self.pruner not in PRUNERS:
            raise ValueError(f"unknown pruner {self.pruner!r}; choose from {list(PRUNERS)}")
        if not 0 < self.lr_min < self.lr_max:
            raise ValueError(f"need 0 < lr_min < lr_max, got lr_min={self.lr_min}, lr_max={self.lr_max}")
        if self.n_images < 1 or self.report_every < 1:
            raise ValueError(f"n_images and report_every must be >= 1, got {self.n_images}, {self.report_every}")
        if self.workers < 1 or (self.workers > 1 and self.execution.executor != "ray"):
            raise ValueError(f"workers must be >= 1, and more than 1 needs executor ray, got {self.workers} with "
                             f"executor {self.execution.executor!r}")
        if self.n_trials < 0 or self.timeout < 0 or self.pruner_startup_trials < 0:
            raise ValueError(f"n_trials, timeout and pruner_startup_trials must be >= 0, got {self.n_trials}, "
                             f"{self.timeout}, {self.pruner_startup_trials}")



@dataclass(frozen=True)
class PruneConfig:
    """The ``prune`` command: delete the logged models nothing needs any more, keeping runs, metrics and reports.

    Attributes:
        experiment: Experiment whose models may be deleted; empty for every experiment. Only models logged by
            segft's runs are ever deleted, and aliases and champions count in every experiment.
        dry_run: Only list what would be deleted and the space it would free.
    """

    experiment: str = ""
    dry_run: bool = False
