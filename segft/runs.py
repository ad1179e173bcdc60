"""The one run pipeline: base training, fine-tuning, every arm of a study and every tuning trial go through it.

It reads as its steps: ``prepare`` the data once (load and validate, split, check the fine-tuning sizes against
the pool, digest, device) before any MLflow run exists; describe a run as a ``RunSpec``; take its starting model
(``fresh_model``, or ``model_from_base`` after ``load_base``); ``execute`` it: train, evaluate on both test sets
(and on validation images), log everything and register the model. Every run — these, the threshold arm's, a
study's or a tuning study's parent and every tuning trial — opens through ``open_run``, which tags it and logs
its resolved parameters, the machine and code version, its data digest, split and dataset inputs: a new logged
field is added there once. Finding a base model to reuse (``find_base_model``) never trains one: the commands
train one explicitly (``train_base``) when there is none.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import pandas as pd
import torch
from torch import nn

from segft import machine, schema, tracking
from segft.checkpoint import InferenceSettings, load_checkpoint, save_checkpoint
from segft.config import BaseConfig, FinetuneConfig, ModelConfig, RegistryConfig, TrackingConfig, TrainConfig
from segft.data.imageset import ImageSet, StudyData
from segft.data.split import StudySplit, load_data, split_study
from segft.device import resolve_device
from segft.inference import SlidingWindowSegmenter
from segft.metrics import dataset_metrics
from segft.models import build_model
from segft.models.model import check_model_config
from segft.models.freezing import freeze
from segft.overlays import mask_png, overlay, to_grey
from segft.pyfunc import pyfunc_arguments
from segft.training import ImageResult, evaluate, evaluation_table, make_patches, train


@dataclass(frozen=True)
class RunResult:
    """What a finished run produced.

    Attributes:
        run_id: The MLflow run.
        model_uri: The registered model version, ``models:/<name>/<version>`` (empty for the threshold arm).
        test_metrics: ``test_dice_<dataset>`` and ``test_fg_ratio_<dataset>`` of both test sets.
        val_metrics: ``val_dice_<dataset>`` and ``val_fg_ratio_<dataset>`` of each dataset it was validated on
            (none without validation images).
        val_table: Per validation image: dataset, image, dice, tp, fp, fn and the mask's digest
            (``segft.quality``); None without validation images.
    """

    run_id: str
    model_uri: str
    test_metrics: dict[str, float]
    val_metrics: dict[str, float] = dataclasses.field(default_factory=dict)
    val_table: pd.DataFrame | None = dataclasses.field(default=None, compare=False)


@dataclass(frozen=True)
class Prepared:
    """A command's data, ready before any MLflow run exists."""

    data: StudyData
    split: StudySplit
    digest: str
    device: torch.device
    test_inputs: tuple[tracking.DatasetInput, ...] = ()

    def on_device(self, device: str) -> Prepared:
        """The same data on ``device`` resolved here (a Ray worker has its own GPUs, or none)."""
        return dataclasses.replace(self, device=resolve_device(device))


def prepare(config: TrainConfig, n_images: Iterable[int] = (), left_for_validation: int = 0) -> Prepared:
    """Resolve the device, give this process's PyTorch ``config.threads`` (``machine.resolve_threads``: 0 keeps
    its count), check the model settings, load and validate the data (``config.data_dir``, or the built-in data),
    split it, check that the pool holds every size in ``n_images`` and ``left_for_validation`` images more
    (``StudySplit.check_sizes``, the one rule) and digest it: every user error surfaces here, before any MLflow
    run exists.

    Raises:
        DataError: For bad files or too few images, in one line naming the culprit.
        ValueError: For a model that cannot be built (unknown encoder...) or an unavailable device.
    """
    device = resolve_device(config.device)
    torch.set_num_threads(machine.resolve_threads(config.threads))
    check_model_config(config.model)
    data = load_data(config.data_dir)
    split = split_study(data, config.split)
    split.check_sizes(n_images, left_for_validation)
    return Prepared(data, split, data.digest(), device, test_set_inputs(split))


@dataclass(frozen=True)
class RunSpec:
    """One training run, as the pipeline executes it.

    Attributes:
        arm: The run's ``segft.arm`` tag: ``raw`` for a base model, else the arm it trains (``finetune``,
            ``scratch``, ``joint``); its role follows (``role``).
        config: Training settings; logged as parameters.
        train_set: Images to train on.
        registered_name: Registered model to add a version to.
        n_images: Dataset 2 images trained on (0 for a base model); logged.
        run_name: Shown in the MLflow UI.
        base_model_uri: The registered model the run starts from (``model_from_base``), empty for random
            weights; logged. Only a run from a base model mixes its weights with it (``finetune_mix``).
        params: More parameters to log (repeat, base key...).
        tags: More run tags (study id, run key, repeat...).
        validation_sets: Image sets, never test images, one per dataset, scored after training (``val_*``
            metrics, one input ``<dataset>-validation`` each): a study picks its champion by them.
        nested: Start the run as a child of the active run (studies).
        new_run: Create a new run even under ``mlflow run`` (see ``tracking.start_run``).
        parent_run_id: Start the run as a child of this run, active in this process or not (a study's run in a
            Ray task).
    """

    arm: str
    config: TrainConfig
    train_set: ImageSet
    registered_name: str
    n_images: int
    run_name: str
    base_model_uri: str = ""
    params: dict[str, object] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    validation_sets: tuple[ImageSet, ...] = ()
    nested: bool = False
    new_run: bool = False
    parent_run_id: str | None = None

    @property
    def role(self) -> str:
        """The run's ``segft.role`` tag: ``base`` for the raw arm's base model, else its arm."""
        return schema.ROLE_BASE if self.arm == schema.RAW_ARM else self.arm


def fresh_model(config: TrainConfig) -> nn.Module:
    """A randomly initialised model, seeded by ``config.seed``."""
    torch.manual_seed(config.seed)
    return build_model(config.model)


@contextlib.contextmanager
def open_run(run_name: str, tags: dict[str, str], params: dict[str, object], digest: str,
             inputs: Iterable[tracking.DatasetInput] = (), split: dict[str, list[str]] | None = None,
             nested: bool = False, new_run: bool = False, run_id: str | None = None,
             parent_run_id: str | None = None) -> Iterator[str]:
    """Open a run the way every segft run opens (``tracking.start_run``: it always ends in a final state): tagged
    with ``tags`` and the data digest; logging ``params``, the machine and code version (``machine.run_params``)
    and the data digest, the split's file names when given and the dataset ``inputs``. Yields the run's id.

    Args:
        run_name: Shown in the MLflow UI.
        tags: The run's tags (role, arm, study id...).
        params: Its resolved parameters (``tracking.flatten_config`` of its settings, and what else it depends on).
        digest: The data's digest (``Prepared.digest``).
        inputs: The parts of the data it used, as dataset inputs.
        split: ``{part: file names}`` (``tracking.log_split``); None logs no split.
        nested, new_run, run_id, parent_run_id: Where the run hangs (``tracking.start_run``).
    """
    with tracking.start_run(run_name, {**tags, schema.DIGEST_TAG: digest}, new_run=new_run, nested=nested,
                            run_id=run_id, parent_run_id=parent_run_id) as run:
        tracking.log_params({**params, **machine.run_params(), schema.DATA_DIGEST_PARAM: digest})
        if split is not None:
            tracking.log_split(split)
        tracking.log_inputs(list(inputs))
        yield run.info.run_id


def mix_with_start(config: TrainConfig, from_base: bool) -> float:
    """WiSE-FT's share of the trained weights (``finetune_mix``) for a run that starts from a base model; 1 (no
    mixing) for one that starts from random weights."""
    return config.finetune_mix if from_base else 1.0


def execute(spec: RunSpec, model: nn.Module, prepared: Prepared) -> RunResult:
    """Train ``model`` as ``spec`` says in one MLflow run (``open_run``), evaluate it on both test sets (and the
    validation images), log everything (each score linked to the data it was computed on; the thread count it
    trained with, the CPU and the code version: ``segft.machine``) and register it."""
    config, split, device = machine.with_threads(spec.config), prepared.split, prepared.device
    torch.set_num_threads(config.threads)  # the count it logs is the count it runs with, in process or on Ray
    model = model.to(device)
    patches = make_patches(spec.train_set, config.patch_size, device, config.normalization)
    tags = {schema.ROLE_TAG: spec.role, schema.ARM_TAG: spec.arm, schema.ENCODER_TAG: config.model.encoder,
            **spec.tags}
    training_input = dataset_input(spec.train_set, "train", schema.TRAINING_CONTEXT)
    validation_inputs = [dataset_input(s, "validation", schema.VALIDATION_CONTEXT) for s in spec.validation_sets]
    params = {**tracking.flatten_config(config), schema.N_IMAGES_PARAM: spec.n_images,
              schema.BASE_MODEL_URI_PARAM: spec.base_model_uri, **spec.params,
              schema.DATA_SOURCE_PARAM: spec.train_set.source, schema.TRAIN_PATCHES_PARAM: len(patches)}
    validation = {f"{s.name}_validation": list(s.names) for s in spec.validation_sets}
    with open_run(spec.run_name, tags, params, prepared.digest,
                  [training_input, *validation_inputs, *prepared.test_inputs],
                  {**split.file_names(), "train": list(spec.train_set.names), **validation},
                  nested=spec.nested, new_run=spec.new_run, parent_run_id=spec.parent_run_id) as run_id:
        train(model, patches, config, description=spec.run_name,
              on_epoch=lambda log: tracking.log_epoch(log.epoch, log.loss, log.branch_counts),
              mix_with_start=mix_with_start(config, bool(spec.base_model_uri)))
        with tempfile.TemporaryDirectory() as tmp:
            settings = InferenceSettings(config.patch_size, config.overlap, config.normalization)
            checkpoint = save_checkpoint(model, config.model, settings, Path(tmp) / "checkpoint")
            model_id = tracking.log_model(pyfunc_arguments(checkpoint), spec.run_name)
        segmenter = SlidingWindowSegmenter(model, config.patch_size, config.overlap, device=device,
                                           channels_last=config.channels_last, normalization=config.normalization)
        metrics = log_test_scores([r for test_set in split.test_sets() for r in evaluate(segmenter, test_set)],
                                  prepared, model_id)
        val_metrics, val_table = {}, None
        if spec.validation_sets:
            val_table = evaluation_table([r for s in spec.validation_sets for r in evaluate(segmenter, s)])
            val_metrics = dataset_metrics(val_table, schema.VALIDATION)
            tracking.log_validation(val_table, {
                item: {name: value for name, value in val_metrics.items() if name.endswith(f"_{s.name}")}
                for item, s in zip(validation_inputs, spec.validation_sets)}, model_id)
        description = describe(spec, metrics, val_metrics)
        tracking.describe_run(description)
        version_tags = {**tags, schema.DIGEST_TAG: prepared.digest, schema.N_IMAGES_PARAM: str(spec.n_images),
                        **{key: f"{value:.4f}" for key, value in {**metrics, **val_metrics}.items()}}
        model_uri = tracking.register_model(model_id, spec.registered_name, version_tags, description,
                                            REGISTERED_MODEL_DESCRIPTIONS[spec.role])[0]
        tracking.set_model_uri_tag(model_uri)
    return RunResult(run_id, model_uri, metrics, val_metrics, val_table)


#: Descriptions of the registered models, by the role of the run that registers the first version.
REGISTERED_MODEL_DESCRIPTIONS = {
    schema.ROLE_BASE: "segft base models: trained on Dataset 1's training images, tested on both datasets' test images.",
    **{role: "segft models trained with Dataset 2 images: fine-tuned from a base model (finetune, joint) or from "
             "scratch, tested on both datasets' test images; a study's finetune runs validated on Dataset 2's pool "
             "and Dataset 1's training images, segft finetune's on the pool images it left out."
       for role in schema.TRAINED_ARMS},
}


def dataset_input(image_set: ImageSet, part: str, context: str) -> tracking.DatasetInput:
    """A part of the data as a run's dataset input: ``<dataset>-<part>``, its source, digest, size and profile."""
    return tracking.DatasetInput(schema.input_name(image_set.name, part), context, image_set.source,
                                 image_set.digest()[:16], len(image_set),
                                 tracking.DatasetProfile.of(image_set.images, image_set.masks))


def test_set_inputs(split: StudySplit) -> list[tracking.DatasetInput]:
    """Both test sets as dataset inputs (``dataset1-test``, ``dataset2-test``); ``prepare`` digests them once per
    command."""
    return [dataset_input(test_set, "test", schema.TEST_CONTEXT) for test_set in split.test_sets()]


def describe(spec: RunSpec, metrics: dict[str, float], val_metrics: dict[str, float]) -> str:
    """One paragraph for the run and its model version: what was trained on what, and its Dice."""
    start = f"from {spec.base_model_uri}" if spec.base_model_uri else "from random weights"
    config = spec.config
    scores = ", ".join(f"{dataset} {metrics[schema.metric_name(schema.TEST, 'dice', dataset)]:.3f}"
                       for dataset in (schema.DATASET1, schema.DATASET2))
    validation = "".join(
        f"; validation Dice {val_metrics[schema.metric_name(schema.VALIDATION, 'dice', s.name)]:.3f} on "
        f"{len(s)} {s.name} images" for s in spec.validation_sets)
    kind = spec.role if spec.role == spec.arm else f"{spec.role} ({spec.arm})"
    return (f"{spec.run_name}: {kind} trained {start} on {len(spec.train_set)} images "
            f"({spec.train_set.name}) for {config.epochs} epochs, batch {config.batch_size}, lr {config.lr:g}, "
            f"{config.model.arch} {config.model.encoder}. Test Dice: {scores}{validation}.")


def log_test_scores(results: list[ImageResult], prepared: Prepared, model_id: str | None = None) -> dict[str, float]:
    """Log the test images' scores on the active run: ``test_dice_<dataset>`` and ``test_fg_ratio_<dataset>``, each
    linked to its test set (and to the logged model ``model_id``), the per-image table, and per image an overlay of prediction against truth and the
    predicted mask (0/255).

    Returns:
        The logged metrics.
    """
    table = evaluation_table(results)
    metrics = dataset_metrics(table, schema.TEST)
    by_input = {item: {name: value for name, value in metrics.items() if name.endswith(f"_{test_set.name}")}
                for item, test_set in zip(prepared.test_inputs, prepared.split.test_sets())}
    test_images = prepared.split.test_images()
    images = {}
    for r in results:
        image, mask = test_images[(r.dataset, r.name)]
        images[schema.overlay_path(r.dataset, r.name)] = overlay(image, mask, r.prediction)
        images[schema.prediction_path(r.dataset, r.name)] = mask_png(r.prediction)
    tracking.log_evaluation(table, by_input, images, model_id)
    return metrics


def log_study_data(split: StudySplit) -> None:
    """Log each test image (8-bit, for display) and its mask on the active run (a study's parent): the report
    draws its overlay grid from these."""
    tracking.log_images({
        path: picture
        for test_set in split.test_sets() for name, image, mask in zip(test_set.names, test_set.images, test_set.masks)
        for path, picture in ((schema.study_image_path(test_set.name, name), to_grey(image)),
                              (schema.study_mask_path(test_set.name, name), mask_png(mask)))
    })


def left_out_of_pool(split: StudySplit, used: Iterable[int]) -> ImageSet | None:
    """The fine-tuning pool's images not at the (0-based) ``used`` positions, or None when all were used.

    ``segft finetune`` validates on these: Dataset 2 images the run did not train on, never test images (a study
    scores its runs on the whole pool instead: ``segft.champion.selection_sets``).
    """
    used = set(used)
    rest = [i for i in range(len(split.finetune_pool)) if i not in used]
    return split.finetune_pool.subset(rest) if rest else None


# ------------------------------------------------------------------------------------------------ base models

#: The training settings that, with the data, split, model and loss, define a base model (``base_key``); the
#: others (device, step mode, layout, evaluation overlap, freezing) do not change what base training learns. The
#: thread count does: another summation order, amplified by training (``segft.machine``).
BASE_TRAINING_FIELDS = ("epochs", "batch_size", "lr", "patch_size", "normalization", "seed", "autocast", "threads")


def base_key(config: TrainConfig, split: StudySplit, digest: str) -> str:
    """Digest of everything that defines a base model: data digest, the split's file names, architecture and its
    settings, loss settings, ``BASE_TRAINING_FIELDS`` (the thread count resolved: ``machine.with_threads``) and
    the code version (package version and git commit, ``machine.CodeVersion.key``: uncommitted changes are not
    keyed). A base model is reused only under the same key."""
    config = machine.with_threads(config)
    definition = {
        schema.DATA_DIGEST_PARAM: digest,
        "split": split.file_names(),
        "model": dataclasses.asdict(config.model),
        "loss": dataclasses.asdict(config.loss),
        "training": {name: getattr(config, name) for name in BASE_TRAINING_FIELDS},
        "code": machine.code_version().key,
    }
    return hashlib.sha256(json.dumps(definition, sort_keys=True, default=str).encode()).hexdigest()[:16]


def base_spec(config: TrainConfig, registry: RegistryConfig, prepared: Prepared, repeat: int = 0,
              tags: dict[str, str] | None = None, run_name: str = "base", nested: bool = False,
              new_run: bool = False, parent_run_id: str | None = None) -> RunSpec:
    """A base-training run: Dataset 1's training images, registered under ``registry.base_model_name`` with its
    ``base_key``."""
    key = base_key(config, prepared.split, prepared.digest)
    return RunSpec(arm=schema.RAW_ARM, config=config, train_set=prepared.split.base_train,
                   registered_name=registry.base_model_name, n_images=0, run_name=run_name,
                   params={schema.REPEAT_PARAM: repeat, schema.BASE_KEY_PARAM: key},
                   tags={**(tags or {}), schema.BASE_KEY_TAG: key},
                   nested=nested, new_run=new_run, parent_run_id=parent_run_id)


def train_base(spec: RunSpec, prepared: Prepared) -> RunResult:
    """Train and register a base model from random initialisation."""
    return execute(spec, fresh_model(spec.config), prepared)


def find_base_model(config: TrainConfig, registry: RegistryConfig, prepared: Prepared) -> str | None:
    """The newest registered base model with the same ``base_key`` (same data, split, architecture, loss and
    training settings), or None. Trains nothing."""
    key = base_key(config, prepared.split, prepared.digest)
    return tracking.find_model_version(registry.base_model_name, {schema.BASE_KEY_TAG: key})


@dataclass(frozen=True)
class BaseModel:
    """A downloaded base model, checked against the run that starts from it."""

    uri: str
    model: nn.Module
    model_config: ModelConfig
    patch_size: int


def load_base(uri: str, config: TrainConfig, prepared: Prepared) -> BaseModel:
    """Download a registered segft model, rebuild it on the device and check that it fits the run
    (``check_base_model``).

    Raises:
        ValueError: If it cannot be downloaded or does not fit.
    """
    with tempfile.TemporaryDirectory() as tmp:
        model, model_config, settings = load_checkpoint(tracking.download_checkpoint(uri, Path(tmp)), prepared.device)
    check_base_model(uri, model_config, settings, config, prepared.split)
    return BaseModel(uri, model, model_config, settings.patch_size)


def model_from_base(base: BaseModel, config: TrainConfig) -> tuple[nn.Module, TrainConfig]:
    """A copy of the base model, frozen as ``config.freeze`` says (the original stays pristine), and the training
    settings with the base model's architecture and the fine-tuning learning rate (``finetune_lr``, when set, as
    ``lr``: the rate the run trains with and logs); the global seed is set to ``config.seed`` first."""
    torch.manual_seed(config.seed)
    model = freeze(copy.deepcopy(base.model), config.freeze)
    return model, dataclasses.replace(config, model=base.model_config, lr=config.finetune_lr or config.lr)


def check_base_model(base_uri: str, model_config: ModelConfig, settings: InferenceSettings, config: TrainConfig,
                     split: StudySplit) -> None:
    """Refuse a base model that does not fit the run.

    Raises:
        ValueError: In one line, listing every difference between the base model's architecture, patch size, normalization or
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
        ("patch_size", settings.patch_size, config.patch_size),
        ("normalization", settings.normalization, config.normalization),
        *((name, int(base_params[name]), getattr(config.split, name))
          for name in ("dataset1_train_images", "dataset2_pool_images") if name in base_params),
    ) if theirs != ours]
    if differences:
        raise ValueError(f"base model {base_uri} does not fit this run ({'; '.join(differences)}); "
                         "give the matching settings or another --base-model")


# ------------------------------------------------------------------------------------------------ the commands

EXPERIMENT_DESCRIPTION = ("segft runs: how well a segmentation model trained on Dataset 1 generalizes to Dataset 2, "
                          "and how much fine-tuning with a few Dataset 2 images helps (base, finetune, study and tune "
                          "runs; tag segft.role says which).")


def track_in(config: TrackingConfig) -> None:
    """Send this command's runs to ``config.experiment``, with system metrics as ``config.system_metrics`` says."""
    tracking.use_experiment(config.experiment, config.system_metrics, EXPERIMENT_DESCRIPTION)


def run_base(config: BaseConfig, new_run: bool = False) -> RunResult:
    """Train a model from scratch on Dataset 1's training images and register it as the base model.

    Args:
        config: Training and registry settings.
        new_run: Always create a new MLflow run instead of adopting the one ``mlflow run`` started.
    """
    prepared = prepare(config.train)
    track_in(config.tracking)
    return train_base(base_spec(config.train, config.registry, prepared, new_run=new_run), prepared)


def base_model_or_train(base_model: str, config: TrainConfig, registry: RegistryConfig,
                        prepared: Prepared) -> BaseModel:
    """The base model a fine-tuning (or tuning) command starts from: ``base_model`` when given, else the newest
    registered one with the same ``base_key``; when there is none, one is trained first, as its own run."""
    uri = base_model or find_base_model(config, registry, prepared)
    if not uri:
        uri = train_base(base_spec(config, registry, prepared, new_run=True), prepared).model_uri
    return load_base(uri, config, prepared)


def run_finetune(config: FinetuneConfig) -> RunResult:
    """Fine-tune a base model with the first ``n_images`` of Dataset 2's pool and register the result.

    The base model is ``config.base_model`` or, when empty, the newest registered base model with the same
    ``base_key``; if there is none, one is trained first, as its own run. A base model whose architecture, patch
    size or split differs from the run's, or that trained on the run's test images, is refused
    (``check_base_model``).
    """
    prepared = prepare(config.train, [config.n_images])
    track_in(config.tracking)
    base = base_model_or_train(config.base_model, config.train, config.registry, prepared)
    model, train_config = model_from_base(base, config.train)
    left_out = left_out_of_pool(prepared.split, range(config.n_images))
    spec = RunSpec(arm=schema.FINETUNE_ARM, config=train_config,
                   train_set=prepared.split.finetune_subset(config.n_images),
                   registered_name=config.registry.finetuned_model_name, n_images=config.n_images,
                   run_name=f"finetune-n{config.n_images}",
                   base_model_uri=base.uri,
                   params={schema.BASE_RUN_ID_PARAM: tracking.model_source_run(base.uri) or ""},
                   validation_sets=(left_out,) if left_out else ())
    return execute(spec, model, prepared)
