"""The study's two runs: base training on Dataset 1, and fine-tuning a base model with Dataset 2 images.

Each run: load and validate the data (before any MLflow run exists), build or load the model, train, evaluate on
both test sets, log everything and register the model.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import pandas as pd
import torch
from torch import nn

from segft import tracking
from segft.checkpoint import InferenceSettings, load_checkpoint, save_checkpoint
from segft.config import BaseConfig, FinetuneConfig, ModelConfig, RegistryConfig, TrainConfig
from segft.data.imageset import ImageSet
from segft.data.study import StudySplit, load_study, split_study
from segft.inference import SlidingWindowSegmenter
from segft.models import build_model
from segft.models.freezing import freeze
from segft.training import evaluate, make_patches, resolve_device, train

#: The metric a study picks its champion by: Dice on Dataset 2 pool images the run did not train on.
VALIDATION_METRIC = "val_dice_dataset2"


@dataclass(frozen=True)
class RunResult:
    """What a finished run produced.

    Attributes:
        run_id: The MLflow run.
        model_uri: The registered model version, ``models:/<name>/<version>``.
        test_metrics: ``test_dice_<dataset>`` and ``test_fg_ratio_<dataset>`` of both test sets.
        val_metrics: ``val_dice_dataset2`` and ``val_fg_ratio_dataset2`` when the run had validation images.
        val_table: Per validation image: dice, tp, fp, fn and the mask's digest (``segft.quality``); None
            without validation images.
    """

    run_id: str
    model_uri: str
    test_metrics: dict[str, float]
    val_metrics: dict[str, float] = dataclasses.field(default_factory=dict)
    val_table: pd.DataFrame | None = dataclasses.field(default=None, compare=False)


def run_base(config: BaseConfig, new_run: bool = False) -> RunResult:
    """Train a model from scratch on Dataset 1's training images and register it as the base model.

    Args:
        config: Training and registry settings.
        new_run: Always create a new MLflow run instead of adopting the one ``mlflow run`` started.
    """
    study = load_study(config.train.data_dir)
    split = split_study(study, config.train.split)
    return _train_base(config.train, config.registry, split, study.digest(), new_run)


def run_finetune(config: FinetuneConfig) -> RunResult:
    """Fine-tune a base model with the first ``n_images`` of Dataset 2's pool and register the result.

    The base model is ``config.base_model`` or, when empty, the newest registered base model with the same
    ``base_key``; if there is none, one is trained first, as its own run. A base model whose architecture, patch
    size or split differs from the run's, or that trained on the run's test images, is refused
    (``check_base_model``).
    """
    train_config, registry = config.train, config.registry
    study = load_study(train_config.data_dir)
    split = split_study(study, train_config.split)
    train_set = split.finetune_subset(config.n_images)
    digest = study.digest()
    device = resolve_device(train_config.device)
    base_uri = resolve_base_model(config.base_model, train_config, registry, split, digest)
    model, model_config, patch_size = load_base_model(base_uri, device)
    check_base_model(base_uri, model_config, patch_size, train_config, split)
    torch.manual_seed(train_config.seed)
    return train_and_log(
        role="finetune",
        model=freeze(model, train_config.freeze),
        config=dataclasses.replace(train_config, model=model_config),
        train_set=train_set,
        split=split,
        digest=digest,
        registered_name=registry.finetuned_model_name,
        extra_params={"n_images": config.n_images, "base_model_uri": base_uri,
                      "base_run_id": tracking.model_source_run(base_uri) or ""},
        validation_set=left_out_of_pool(split, range(config.n_images)),
    )


def left_out_of_pool(split: StudySplit, used: Iterable[int]) -> ImageSet | None:
    """The fine-tuning pool's images not at the (0-based) ``used`` positions, or None when all were used.

    Fine-tuning runs validate on these: they are Dataset 2 images the run did not train on, and never test images.
    """
    used = set(used)
    rest = [i for i in range(len(split.finetune_pool)) if i not in used]
    return split.finetune_pool.subset(rest) if rest else None


#: The training settings that, with the data, split, model and loss, define a base model (``base_key``); the
#: others (device, step mode, layout, evaluation overlap, freezing) do not change what base training learns.
BASE_TRAINING_FIELDS = ("epochs", "batch_size", "lr", "patch_size", "seed", "autocast")


def base_key(config: TrainConfig, split: StudySplit, digest: str) -> str:
    """Digest of everything that defines a base model: data digest, the split's file names, architecture and its
    settings, loss settings and ``BASE_TRAINING_FIELDS``. A base model is reused only under the same key."""
    definition = {
        "data_digest": digest,
        "split": split.file_names(),
        "model": dataclasses.asdict(config.model),
        "loss": dataclasses.asdict(config.loss),
        "training": {name: getattr(config, name) for name in BASE_TRAINING_FIELDS},
    }
    return hashlib.sha256(json.dumps(definition, sort_keys=True, default=str).encode()).hexdigest()[:16]


def resolve_base_model(
    base_model: str, config: TrainConfig, registry: RegistryConfig, split: StudySplit, digest: str
) -> str:
    """``base_model`` or, when empty, the newest registered base model with the same ``base_key`` (same data,
    split, architecture, loss and training settings); if there is none, one is trained first, as its own run (no
    MLflow run may be active).

    Returns:
        The base model's URI.
    """
    found = base_model or tracking.find_model_version(
        registry.base_model_name, {tracking.BASE_KEY_TAG: base_key(config, split, digest)}
    )
    return found or _train_base(config, registry, split, digest, new_run=True).model_uri


def check_base_model(base_uri: str, model_config: ModelConfig, patch_size: int, config: TrainConfig,
                     split: StudySplit) -> None:
    """Refuse a base model that does not fit the run.

    Raises:
        ValueError: In one line, listing every difference between the base model's architecture, patch size or
            split and the run's; or when the base model trained on any of the run's test images (always refused:
            the test scores would be inflated).
    """
    trained_on = tracking.model_training_images(base_uri)
    leaked = sorted(set(trained_on) & set(split.test_dataset1.names))
    if leaked:
        raise ValueError(f"base model {base_uri} was trained on {len(leaked)} of this run's Dataset 1 test images "
                         f"({', '.join(leaked[:3])}{', ...' if len(leaked) > 3 else ''}): its test scores would be "
                         "inflated; train a base model with this split")
    base_params = tracking.model_run_params(base_uri)
    differences = [f"{name}: base {theirs!r}, run {ours!r}" for name, theirs, ours in (
        ("arch", model_config.arch, config.model.arch),
        *((name, getattr(model_config, name), getattr(config.model, name))
          for name in ("encoder", "encoder_depth", "decoder_channels") if config.model.arch == "attention_unet"),
        ("patch_size", patch_size, config.patch_size),
        *((name, int(base_params[name]), getattr(config.split, name))
          for name in ("dataset1_train_images", "dataset2_pool_images") if name in base_params),
    ) if theirs != ours]
    if differences:
        raise ValueError(f"base model {base_uri} does not fit this run ({'; '.join(differences)}); "
                         "give the matching settings or another --base-model")


def _train_base(
    config: TrainConfig, registry: RegistryConfig, split: StudySplit, digest: str, new_run: bool = False,
    nested: bool = False, extra_tags: dict[str, str] | None = None, repeat: int = 0, run_name: str = "",
) -> RunResult:
    torch.manual_seed(config.seed)
    key = base_key(config, split, digest)
    return train_and_log(
        role="base",
        model=build_model(config.model),
        config=config,
        train_set=split.base_train,
        split=split,
        digest=digest,
        registered_name=registry.base_model_name,
        extra_params={"n_images": 0, "repeat": repeat, "base_key": key},
        new_run=new_run,
        nested=nested,
        extra_tags={**(extra_tags or {}), tracking.BASE_KEY_TAG: key},
        run_name=run_name,
    )


def load_base_model(model_uri: str, device: torch.device) -> tuple[nn.Module, ModelConfig, int]:
    """Download a registered segft model and rebuild it on ``device``; also return its patch size."""
    with tempfile.TemporaryDirectory() as tmp:
        model, model_config, settings = load_checkpoint(tracking.download_checkpoint(model_uri, Path(tmp)), device)
    return model, model_config, settings.patch_size


def train_and_log(
    role: str,
    model: nn.Module,
    config: TrainConfig,
    train_set: ImageSet,
    split: StudySplit,
    digest: str,
    registered_name: str,
    extra_params: dict[str, object],
    new_run: bool = False,
    nested: bool = False,
    extra_tags: dict[str, str] | None = None,
    run_name: str = "",
    validation_set: ImageSet | None = None,
) -> RunResult:
    """Train ``model`` on ``train_set`` in one MLflow run, evaluate it on both test sets, log and register it.

    Args:
        role: ``base``, ``finetune``, ``scratch`` or ``joint``; the run's ``segft.role`` tag.
        model: The model to train (random or loaded weights); moved to ``config.device``.
        config: Training settings; logged as parameters.
        train_set: Images to train on.
        split: The study's split (its test sets are evaluated, its file names logged).
        digest: The study data's digest.
        registered_name: Registered model to add a version to.
        extra_params: More parameters to log (always ``n_images``).
        new_run: Create a new run even under ``mlflow run`` (see ``tracking.start_run``).
        nested: Start the run as a child of the active run (studies).
        extra_tags: More run tags (study id, arm, repeat...).
        run_name: Shown in the MLflow UI; ``<role>`` or ``<role>-n<n_images>`` when empty.
        validation_set: Images, never test images, to score after training: logged as ``val_dice_<name>`` (and
            ``evaluation/val_per_image_dice.csv``) and used for model selection (a study's ``champion``).
    """
    device = resolve_device(config.device)
    model = model.to(device)
    patches = make_patches(train_set, config.patch_size, device)
    tags = {tracking.ROLE_TAG: role, tracking.ARM_TAG: "raw" if role == "base" else role,
            tracking.DIGEST_TAG: digest, tracking.ENCODER_TAG: config.model.encoder, **(extra_tags or {})}
    run_name = run_name or (role if role == "base" else f"{role}-n{extra_params['n_images']}")
    with tracking.start_run(run_name, tags, new_run=new_run, nested=nested) as run:
        tracking.log_params({**tracking.flatten_config(config), **extra_params, "data_digest": digest,
                             "data_source": train_set.source, "train_patches": len(patches)})
        validation = {"validation": list(validation_set.names)} if validation_set else {}
        tracking.log_split({**split.file_names(), "train": list(train_set.names), **validation})
        train(model, patches, config, on_epoch=tracking.log_epoch, description=run_name)
        segmenter = SlidingWindowSegmenter(model, config.patch_size, config.overlap, device=device,
                                           channels_last=config.channels_last)
        results = [r for test_set in split.test_sets() for r in evaluate(segmenter, test_set)]
        metrics = tracking.log_evaluation(results, split.test_images())
        val_metrics, val_table = {}, None
        if validation_set:
            val_metrics, val_table = tracking.log_validation(evaluate(segmenter, validation_set))
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = save_checkpoint(model, config.model, InferenceSettings(config.patch_size, config.overlap),
                                         Path(tmp) / "checkpoint")
            version_tags = {**tags, "run_id": run.info.run_id, "arm": tags[tracking.ARM_TAG],
                            "n_images": str(extra_params["n_images"]),
                            **{key: f"{value:.4f}" for key, value in {**metrics, **val_metrics}.items()}}
            model_uri = tracking.log_model(checkpoint, registered_name, version_tags)[0]
        tracking.set_model_uri_tag(model_uri)
    return RunResult(run.info.run_id, model_uri, metrics, val_metrics, val_table)
