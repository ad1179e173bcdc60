"""Learning-rate tuning with Optuna: validation Dice as the objective, pruning, one MLflow run per trial.

The original protocol fixes the learning rate at 1e-5 for base training and fine-tuning. ``run_tuning`` searches
it log-uniformly between ``lr_min`` and ``lr_max``: each trial trains as ``finetune`` (or ``base``) would, scores
the validation images every ``report_every`` epochs, reports the score to Optuna, and is stopped (pruned) when it
falls behind the trials before it. The objective is the validation Dice after the last epoch; test images are
never touched:

- ``target=finetune``: train on the first ``n_images`` of Dataset 2's pool, validate on the pool's other images;
- ``target=base``: train on Dataset 1's training images but the last fifth (at least one), validate on those.

The study lives in an Optuna storage (a database: by default ``optuna.db`` next to the MLflow tracking store), so
a stopped tuning continues where it stopped and workers on several machines can share one study. MLflow gets one
parent run per study (resumed by every later call) and a nested run per trial; pruned trials end KILLED, tagged
``segft.trial_state = PRUNED``. Trials register no models; ``apply`` trains and registers one with the best rate.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import warnings
from dataclasses import dataclass
from pathlib import PurePosixPath

import optuna
import torch
from torch import nn

from segft import executor, machine, schema, tracking
from segft.config import BaseConfig, FinetuneConfig, ModelConfig, TrainConfig, TuneConfig
from segft.data.imageset import ImageSet
from segft.data.split import StudySplit
from segft.device import resolve_device
from segft.inference import SlidingWindowSegmenter
from segft.runs import (BaseModel, RunResult, base_model_or_train, dataset_input, fresh_model, mix_with_start,
                        model_from_base, open_run, prepare, run_base, run_finetune, track_in)
from segft.training import EpochLog, Patches, evaluate, make_patches, mean_dice, train
from segft.urls import redact, require_driver, storage_with_password

#: Share of Dataset 1's training images held out to validate base-training trials (at least one image).
VALIDATION_FRACTION = 0.2
#: A trial whose worker stops sending heartbeats for GRACE_PERIOD_S seconds (a killed process) is marked FAIL.
HEARTBEAT_INTERVAL_S = 60
GRACE_PERIOD_S = 180
#: Optuna states recorded on trial runs (tag ``segft.trial_state``) and counted on the parent run.
FINISHED_STATES = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)


def default_storage(tracking_uri: str) -> str:
    """The Optuna storage next to the MLflow tracking store, so that a stopped tuning can be continued.

    ``sqlite:///dir/mlflow.db`` gives ``sqlite:///dir/optuna.db``; any other tracking URI (a server, a file store,
    an in-memory database) gives ``sqlite:///optuna.db`` in the working directory. To share a study between
    machines, pass a database server URL as ``storage`` instead.

    Args:
        tracking_uri: The MLflow tracking URI in use.

    Returns:
        An SQLAlchemy database URL.
    """
    prefix = "sqlite:///"
    path = tracking_uri[len(prefix):].split("?", 1)[0] if tracking_uri.startswith(prefix) else ""
    if path and path != ":memory:":
        return prefix + str(PurePosixPath(path).with_name("optuna.db"))
    return prefix + "optuna.db"


def default_study_name(target: str, n_images: int, data_digest: str) -> str:
    """``segft-tune-finetune-n5-<digest>`` or ``segft-tune-base-<digest>``."""
    size = f"-n{n_images}" if target == schema.ROLE_FINETUNE else ""
    return f"segft-tune-{target}{size}-{data_digest}"


def tuning_sets(split: StudySplit, target: str, n_images: int) -> tuple[ImageSet, ImageSet]:
    """The (train, validation) images of every trial; test images are never among them.

    Args:
        split: The study's split.
        target: ``finetune``: the first ``n_images`` of Dataset 2's pool, validated on the rest of the pool;
            ``base``: Dataset 1's training images but the last ``VALIDATION_FRACTION`` (at least one),
            validated on those.
        n_images: Fine-tuning images (``finetune`` only).

    Raises:
        DataError: If no validation image would be left in the pool (``StudySplit.check_sizes``).
        ValueError: If fewer than 2 Dataset 1 training images are there to tune base training on.
    """
    if target == schema.ROLE_FINETUNE:
        split.check_sizes([n_images], left_for_validation=1)
        pool = split.finetune_pool
        return split.finetune_subset(n_images), pool.subset(range(n_images, len(pool)))
    images = split.base_train
    if len(images) < 2:
        raise ValueError(f"tuning base training needs at least 2 Dataset 1 training images, got {len(images)}")
    n_train = len(images) - max(1, int(len(images) * VALIDATION_FRACTION))
    return images.subset(range(n_train)), images.subset(range(n_train, len(images)))


def open_storage(url: str) -> optuna.storages.RDBStorage:
    """Optuna's database storage at ``url``, with heartbeats (a killed worker's trial is marked FAIL); a local SQLite
    file is opened under a file lock beside it (``tracking.sqlite_lock``: workers starting together on a new file
    would all create its tables).

    Raises:
        ValueError: In one line, password hidden: the database driver is missing or the database cannot be opened.
    """
    require_driver(url, "storage")
    # Optuna marks heartbeats experimental and warns on every start
    with warnings.catch_warnings(), tracking.sqlite_lock(url):
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        try:
            return optuna.storages.RDBStorage(url, heartbeat_interval=HEARTBEAT_INTERVAL_S, grace_period=GRACE_PERIOD_S)
        except Exception as error:  # SQLAlchemy's OperationalError, ArgumentError...: the URL's fault, not ours
            reason = redact((str(error).splitlines() or [type(error).__name__])[0])[:200]
            raise ValueError(f"storage {redact(url)!r}: cannot open it ({reason})") from error


def make_pruner(config: TuneConfig) -> optuna.pruners.BasePruner:
    """The pruner named by ``config.pruner``; steps are epochs trained, so Hyperband's resources are epochs."""
    if config.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=config.pruner_startup_trials)
    if config.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=min(config.report_every, config.train.epochs),
                                              max_resource=config.train.epochs)
    return optuna.pruners.NopPruner()


@dataclass(frozen=True)
class TuneResult:
    """A tuning call's outcome.

    Attributes:
        study_name: The Optuna study.
        storage: Its storage URL, password hidden.
        parent_run_id: The study's MLflow parent run.
        best_lr: Best learning rate over the whole study (all workers, all calls); None before any trial completed.
        best_value: Its validation Dice.
        states: Number of finished trials by state (``COMPLETE``, ``PRUNED``, ``FAIL``), whole study.
        applied: The run trained and registered with the best learning rate (``apply``), else None.
    """

    study_name: str
    storage: str
    parent_run_id: str
    best_lr: float | None
    best_value: float | None
    states: dict[str, int]
    applied: RunResult | None = None


@dataclass(frozen=True)
class _Trials:
    """What every trial of one worker shares: settings, images (patches cut once per process), the starting model
    and the parent run its trial runs hang under. Sent whole to every Ray worker (``executor=ray``)."""

    config: TuneConfig
    study_name: str
    digest: str
    train_set: ImageSet
    validation: ImageSet
    device: torch.device
    base: BaseModel | None
    model_config: ModelConfig
    parent_run_id: str

    @property
    def base_uri(self) -> str:
        return self.base.uri if self.base else ""

    @functools.cached_property
    def patches(self) -> Patches:
        return make_patches(self.train_set, self.config.train.patch_size, self.device,
                            self.config.train.normalization)

    def for_workers(self) -> _Trials:
        """A copy to send to Ray workers: the base model's weights on the CPU (a worker may have no GPU, or
        another one)."""
        base = self.base and dataclasses.replace(self.base, model=copy.deepcopy(self.base.model).cpu())
        return dataclasses.replace(self, base=base)

    def in_worker(self) -> _Trials:
        """These trials on the device resolved in this (Ray worker) process."""
        device = resolve_device(self.config.train.device)
        base = self.base and dataclasses.replace(self.base, model=self.base.model.to(device))
        return dataclasses.replace(self, device=device, base=base)

    def start_model(self, train_config: TrainConfig) -> nn.Module:
        """A fresh copy of the base model (``finetune``, frozen as configured) or a random one (``base``)."""
        if self.base is None:
            return fresh_model(train_config).to(self.device)
        return model_from_base(self.base, train_config)[0]

    def objective(self, trial: optuna.Trial) -> float:
        """Train with the trial's learning rate in a nested MLflow run; the validation Dice after the last epoch."""
        lr = trial.suggest_float("lr", self.config.lr_min, self.config.lr_max, log=True)
        train_config = dataclasses.replace(self.config.train, lr=lr, model=self.model_config)
        tags = {schema.ROLE_TAG: schema.ROLE_TUNE_TRIAL, schema.TUNING_STUDY_TAG: self.study_name,
                schema.TRIAL_NUMBER_TAG: str(trial.number), schema.TRIAL_STATE_TAG: "RUNNING",
                schema.ENCODER_TAG: self.model_config.encoder}
        torch.set_num_threads(train_config.threads)  # a Ray worker's process too: the count the trial logs
        params = {**tracking.flatten_config(train_config), schema.TRIAL_NUMBER_PARAM: trial.number,
                  schema.TUNING_TARGET_PARAM: self.config.target, schema.N_IMAGES_PARAM: self.n_images,
                  schema.BASE_MODEL_URI_PARAM: self.base_uri, schema.TRAIN_PATCHES_PARAM: len(self.patches)}
        split = {"train": list(self.train_set.names), "validation": list(self.validation.names)}
        with open_run(f"trial-{trial.number}", tags, params, self.digest, [self.training_input, self.validation_input],
                      split, nested=True, parent_run_id=self.parent_run_id) as run_id:
            trial.set_user_attr("mlflow_run_id", run_id)
            try:
                value = self._train(trial, train_config)
            except optuna.TrialPruned:
                tracking.end_run("KILLED", {schema.TRIAL_STATE_TAG: "PRUNED"})
                raise
            except BaseException:  # Ctrl-C included: Optuna records the trial as FAIL too
                tracking.set_tags({schema.TRIAL_STATE_TAG: "FAIL"})
                raise
            tracking.set_tags({schema.TRIAL_STATE_TAG: "COMPLETE"})
        return value

    def _train(self, trial: optuna.Trial, config: TrainConfig) -> float:
        """Train from the trial's starting model and return the last validation Dice."""
        model = self.start_model(config)
        scores: list[float] = []
        train(model, self.patches, config, on_epoch=self._reporter(trial, model, config, scores),
              description=f"trial {trial.number} lr={config.lr:.2e}",
              mix_with_start=mix_with_start(config, self.base is not None))
        return scores[-1]

    @functools.cached_property
    def training_input(self) -> tracking.DatasetInput:
        return dataset_input(self.train_set, "train", schema.TRAINING_CONTEXT)

    @functools.cached_property
    def validation_input(self) -> tracking.DatasetInput:
        return dataset_input(self.validation, "validation", schema.VALIDATION_CONTEXT)

    @property
    def n_images(self) -> int:
        return self.config.n_images if self.config.target == schema.ROLE_FINETUNE else 0

    def _reporter(self, trial: optuna.Trial, model: nn.Module, config: TrainConfig, scores: list[float]):
        """The training loop's ``on_epoch``: log the epoch; every ``report_every`` epochs (and after the last)
        score the validation images, log and report the score, and raise ``TrialPruned`` if the pruner says so."""
        segmenter = SlidingWindowSegmenter(model, config.patch_size, config.overlap, device=self.device,
                                           normalization=config.normalization, channels_last=config.channels_last)

        def on_epoch(log: EpochLog) -> None:
            tracking.log_epoch(log.epoch, log.loss, log.branch_counts)
            done = log.epoch + 1
            if done % self.config.report_every and done != config.epochs:
                return
            dice = mean_dice(evaluate(segmenter, self.validation))
            scores.append(dice)
            tracking.log_metrics({schema.TRIAL_DICE_METRIC: dice}, step=log.epoch, dataset=self.validation_input)
            trial.report(dice, step=done)
            # after the last epoch there is nothing left to save: the trial completes and counts for the pruner
            if done != config.epochs and trial.should_prune():
                raise optuna.TrialPruned(f"validation Dice {dice:.4f} after epoch {done}")

        return on_epoch


def run_tuning(config: TuneConfig, pruner: optuna.pruners.BasePruner | None = None) -> TuneResult:
    """Create or continue the tuning study, run ``config.n_trials`` more trials, log the best, optionally apply it.

    Data, split and the study's settings are checked before any MLflow run starts. A study continued with
    other settings than it was started with (epochs, architecture, search range, base model, ...) is refused:
    its trials would not be comparable.

    Args:
        config: Tuning settings.
        pruner: Overrides ``config.pruner`` (library use, tests).

    Raises:
        ValueError: If no validation image is left, the study was started with other settings, or ``apply`` is
            asked for while no trial of the study has completed.
    """
    executor.check_executor(config.execution)
    # one thread count for every trial, in process or on Ray: resolved here, logged and carried down
    config = dataclasses.replace(config, train=machine.with_threads(config.train, config.execution))
    train_config = config.train
    storage_url = storage_with_password(config.storage) if config.storage else default_storage(tracking.tracking_uri())
    storage = open_storage(storage_url)  # before any training: a bad storage must not cost a base model first
    finetuning = config.target == schema.ROLE_FINETUNE
    prepared = prepare(train_config, [config.n_images] if finetuning else [], left_for_validation=1)
    track_in(config.tracking)
    split, digest, device = prepared.split, prepared.digest, prepared.device
    train_set, validation = tuning_sets(split, config.target, config.n_images)
    base, model_config = None, train_config.model
    if config.target == schema.ROLE_FINETUNE:  # the trials keep the base model's architecture
        base = base_model_or_train(config.base_model, train_config, config.registry, prepared)
        model_config = base.model_config
    base_uri = base.uri if base else ""
    study_name = config.study_name or default_study_name(config.target, config.n_images, digest)
    tracking.fail_dead_runs(f"tags.`{schema.TUNING_STUDY_TAG}` = '{study_name}'")
    study = optuna.create_study(storage=storage, study_name=study_name, direction="maximize",
                                pruner=pruner or make_pruner(config), load_if_exists=True)
    _check_settings(study, _study_settings(config, base_uri), redact(storage_url))
    parent_tags = {schema.ROLE_TAG: schema.ROLE_TUNE, schema.TUNING_STUDY_TAG: study_name,
                   schema.ENCODER_TAG: train_config.model.encoder}
    params = {**tracking.flatten_config(config), "storage": redact(storage_url), schema.TUNING_STUDY_PARAM: study_name,
              schema.BASE_MODEL_URI_PARAM: base_uri}
    split_names = {**split.file_names(), "train": list(train_set.names), "validation": list(validation.names)}
    with open_run(f"tune-{study_name}", parent_tags, params, digest, split=split_names,
                  run_id=tracking.find_tuning_parent(study_name)) as parent_run_id:
        trials = _Trials(config, study_name, digest, train_set, validation, device, base, model_config,
                         parent_run_id)
        if config.execution.executor == "ray":
            _optimize_on_ray(trials, config.storage or default_storage(tracking.tracking_uri()), pruner)
        else:
            study.optimize(trials.objective, n_trials=config.n_trials, timeout=config.timeout or None)
        result = _log_study_summary(study, study_name, redact(storage_url), parent_run_id)
        best = f"best lr {result.best_lr:.3g} (validation Dice {result.best_value:.4f})" if result.best_lr else "no trial done"
        tracking.describe_run(f"tuning study {study_name}: learning rate of {config.target} between {config.lr_min:g} "
                              f"and {config.lr_max:g}, scored on validation images; {best}.")
    if config.apply:
        return dataclasses.replace(result, applied=apply_best(config, result, base_uri))
    return result


def trials_per_worker(n_trials: int, workers: int) -> list[int]:
    """``n_trials`` split as evenly as possible among ``workers``; workers left without a trial are not started."""
    return [count for i in range(workers) if (count := n_trials // workers + (i < n_trials % workers))]


def _optimize_on_ray(trials: _Trials, storage: str, pruner: optuna.pruners.BasePruner | None) -> None:
    """Run the call's trials in ``config.workers`` Ray tasks (``segft.executor``) sharing the Optuna study in
    ``storage``: each opens it (its password from the worker's own environment, never sent) and draws trials from
    it, so a sampler sees every worker's finished trials."""
    destination = tracking.Destination.of_this_process(trials.config.tracking.system_metrics)
    with executor.ray_session(trials.config.execution, destination, trials.config.train.threads) as session:
        shared = session.put(trials.for_workers())
        session.gather({
            f"tuning-worker-{i}": session.submit(f"tuning-worker-{i}", _tuning_worker, shared, storage, count, pruner)
            for i, count in enumerate(trials_per_worker(trials.config.n_trials, trials.config.workers))
        }, f"tuning {trials.study_name} on Ray")


def _tuning_worker(trials: _Trials, storage: str, n_trials: int, pruner: optuna.pruners.BasePruner | None) -> None:
    trials = trials.in_worker()
    study = optuna.load_study(study_name=trials.study_name, storage=open_storage(storage_with_password(storage)),
                              pruner=pruner or make_pruner(trials.config))
    study.optimize(trials.objective, n_trials=n_trials, timeout=trials.config.timeout or None)


def apply_best(config: TuneConfig, result: TuneResult, base_uri: str) -> RunResult:
    """Train with the study's best learning rate as ``finetune`` (from the same base model) or ``base`` would —
    on all of their training images, validation images included — and register the model.

    Raises:
        ValueError: If no trial of the study has completed.
    """
    if result.best_lr is None:
        raise ValueError(f"no trial of study {result.study_name!r} has completed yet; nothing to apply")
    if config.target == schema.ROLE_FINETUNE:  # the base model is given: only the fine-tuning rate changes
        train_config = dataclasses.replace(config.train, finetune_lr=result.best_lr)
        return run_finetune(FinetuneConfig(train=train_config, registry=config.registry, tracking=config.tracking,
                                           n_images=config.n_images, base_model=base_uri))
    train_config = dataclasses.replace(config.train, lr=result.best_lr)
    return run_base(BaseConfig(train=train_config, registry=config.registry, tracking=config.tracking), new_run=True)


def _study_settings(config: TuneConfig, base_uri: str) -> dict[str, object]:
    """What makes trials comparable: every training setting but the learning rates (each trial draws its own; and
    where data and device are: the data digest is in the study's name), the search range and the base model."""
    train = {key: value for key, value in tracking.flatten_config(config.train).items()
             if key not in ("lr", "finetune_lr", "data_dir", "device")}
    n_images = config.n_images if config.target == schema.ROLE_FINETUNE else 0
    return {**train, schema.TUNING_TARGET_PARAM: config.target, schema.N_IMAGES_PARAM: n_images,
            "lr_min": config.lr_min, "lr_max": config.lr_max, schema.BASE_MODEL_URI_PARAM: base_uri}


def _check_settings(study: optuna.Study, settings: dict[str, object], storage: str) -> None:
    """Record the settings on a new study; refuse to continue one started with other settings."""
    started = study.user_attrs.get("settings")
    if started is None:
        study.set_user_attr("settings", settings)
        return
    changed = [f"{key} {started.get(key)!r} -> {settings.get(key)!r}"
               for key in sorted(started.keys() | settings.keys()) if started.get(key) != settings.get(key)]
    if changed:
        raise ValueError(f"study {study.study_name!r} in {storage} was started with other settings "
                         f"({'; '.join(changed)}); continue it with the same settings or choose another study_name")


def _log_study_summary(study: optuna.Study, study_name: str, storage: str, parent_run_id: str) -> TuneResult:
    """Log trial counts, ``best_lr`` / ``best_value`` (metrics: they change as the study goes on, and every call
    logs them again at step = number of trials) and Optuna's figures on the parent run."""
    trials = study.get_trials(deepcopy=False)
    states = {state.name: sum(t.state == state for t in trials) for state in FINISHED_STATES}
    tracking.log_metrics({f"n_trials_{name.lower()}": count for name, count in states.items()}, step=len(trials))
    if not states["COMPLETE"]:
        return TuneResult(study_name, storage, parent_run_id, None, None, states)
    best = study.best_trial
    tracking.log_metrics({schema.BEST_LR_METRIC: best.params["lr"], schema.BEST_VALUE_METRIC: best.value},
                         step=len(trials))
    tracking.set_tags({schema.BEST_TRIAL_TAG: str(best.number),
                       schema.BEST_RUN_ID_TAG: best.user_attrs.get("mlflow_run_id", "")})
    # one tuned parameter: its importance is 1 by construction, so the slice plot shows lr against Dice instead
    tracking.log_figures({
        schema.tuning_plot_path("optimization_history"): optuna.visualization.plot_optimization_history(study),
        schema.tuning_plot_path("lr_slice"): optuna.visualization.plot_slice(study, params=["lr"]),
        schema.tuning_plot_path("intermediate_values"): optuna.visualization.plot_intermediate_values(study),
    })
    return TuneResult(study_name, storage, parent_run_id, best.params["lr"], best.value, states)
