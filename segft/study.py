"""The whole study in one command: the raw base model, then every arm x size x repeat, under one parent run.

All runs of a study share the tag ``segft.study_id``, a digest of the study's settings and data, and hang under
one parent run so the MLflow UI shows the study as a tree. Started again with the same settings, a study reuses
every run that already finished (and its registered model) instead of training it again.

Which runs a study consists of is ``segft.plan``'s to say, which model it recommends ``segft.champion``'s; this
module runs them (``StudyRunner``: in process, or as Ray tasks) and records the outcome.

At the end a study points two aliases of the registry at its models: ``base`` at the base model it used, and
``champion`` at the fine-tuned version it recommends (``choose_champion``), so that
``models:/segft-finetuned@champion`` segments new images with it; the parent run's tag ``segft.champion_reason``
says why in one sentence. A resumed study sets them again from its finished runs' per-image selection scores; the
newest study to finish owns the aliases.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass

import pandas as pd
from torch import nn
from tqdm.auto import tqdm

from segft import executor, machine, schema, tracking
from segft.champion import Candidate, candidates_of, choose_champion, selection_sets
from segft.config import ExecutorConfig, StudyConfig, TrainConfig
from segft.plan import PlannedRun, base_repeats, base_run_key, plan_runs
from segft.runs import (BaseModel, Prepared, RunResult, RunSpec, base_spec, execute, fresh_model, load_base,
                        log_study_data, log_test_scores, model_from_base, open_run, prepare, track_in, train_base)
from segft.threshold import ThresholdSegmenter, choose_polarity
from segft.training import evaluate


def study_id(config: StudyConfig, data_digest: str) -> str:
    """Digest of everything that determines the study's results and where its runs live (its experiment), not
    where its report goes or whether system metrics are logged.

    What determines the results includes the PyTorch thread count of every run (``train.threads``, resolved as
    ``run_study`` resolves it: ``machine.resolve_threads``) and the code version (package version and git commit,
    ``machine.CodeVersion.key``). The executor is otherwise left out: a study started in process can be resumed
    on Ray, and the other way round, with the same thread count (``threads``, or ``cpus_per_run`` equal to the
    in-process count); resumed with another thread count it is another study, since its runs would compute other
    results. Uncommitted changes to the code are not keyed (the commit without ``-dirty``, which every run logs
    in ``git_commit``): a study resumed while the code is being edited reuses its finished runs.
    """
    settings = dataclasses.asdict(dataclasses.replace(
        config, train=machine.with_threads(config.train, config.execution), report_dir="",
        tracking=dataclasses.replace(config.tracking, system_metrics=True), execution=ExecutorConfig()))
    text = json.dumps(settings, sort_keys=True, default=str) + data_digest + machine.code_version().key
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def selection_tables(plan: list[PlannedRun], results: dict[str, RunResult]) -> dict[str, pd.DataFrame]:
    """``{run key: per-image selection table}`` of the finetune runs scored on selection images; a reused run's
    table is read back from MLflow."""
    tables = {}
    for p in plan:
        if p.arm != schema.FINETUNE_ARM:
            continue
        table = results[p.key].val_table
        if table is None and results[p.key].val_metrics:  # a resumed run: read it back
            table = tracking.read_validation_table(results[p.key].run_id)
        if table is not None:
            tables[p.key] = table
    return tables


def headline_metrics(plan: list[PlannedRun], results: dict[str, RunResult]) -> dict[str, float]:
    """The study's headline numbers for its parent run: each arm's and size's mean test Dice per dataset over its
    repeats (``schema.headline_metric``), the raw base models and the threshold included."""
    arm_and_size = {p.key: (p.arm, p.n_images) for p in plan}
    values: dict[str, list[float]] = {}
    for key, result in results.items():
        arm, n_images = arm_and_size.get(key, (schema.THRESHOLD_ARM, 0) if key == schema.THRESHOLD_ARM
                                          else (schema.RAW_ARM, 0))
        for dataset in (schema.DATASET1, schema.DATASET2):
            value = result.test_metrics.get(schema.metric_name(schema.TEST, "dice", dataset))
            if value is not None:
                values.setdefault(schema.headline_metric(arm, n_images, dataset), []).append(value)
    return {name: sum(v) / len(v) for name, v in values.items()}


@dataclass(frozen=True)
class StudyResult:
    """A finished study: its id, parent run, the child runs by key (``base``, ``finetune/n5/r0``, ...) and the
    champion's model URI (None when the study ran no ``finetune`` arm)."""

    study_id: str
    parent_run_id: str
    runs: dict[str, RunResult]
    reused: tuple[str, ...]
    champion: str | None = None


def run_study(config: StudyConfig) -> StudyResult:
    """Run (or resume) the study described by ``config``; data and sizes are validated before any run starts.

    One live process runs a study at a time (``tracking.claim``): the same study started while another process
    runs it waits for that process to end, then resumes it. A resumed study first marks its runs that an earlier,
    killed start left RUNNING as FAILED (``tracking.fail_dead_runs``), then reuses every finished run and trains
    the others again: in this process, one after the other, or as Ray tasks (``config.execution``), the base
    models first, then the arms.
    """
    train = config.train
    executor.check_executor(config.execution)
    prepared = prepare(train, config.sizes)
    # resolved once, here: every run and Ray worker receives, applies and logs this count, and the id keys it
    config = dataclasses.replace(config, train=machine.with_threads(train, config.execution))
    track_in(config.tracking)
    sid = study_id(config, prepared.digest)
    plan = plan_runs(config, len(prepared.split.finetune_pool))
    with tracking.claim(f"study-{sid}"):
        return _run_claimed(config, prepared, sid, plan)


def _run_claimed(config: StudyConfig, prepared: Prepared, sid: str, plan: list[PlannedRun]) -> StudyResult:
    """``run_study`` once this process holds the study's claim: resume or start its parent run, then run it."""
    train = config.train
    tracking.fail_dead_runs(f"tags.`{schema.STUDY_TAG}` = '{sid}'")  # an earlier start killed mid-run
    finished = {key: _as_result(run) for key, run in tracking.finished_study_runs(sid).items()}
    parent_tags = {schema.ROLE_TAG: schema.ROLE_STUDY, schema.STUDY_TAG: sid}
    with open_run(f"study-{sid}", parent_tags, {**tracking.flatten_config(config), schema.STUDY_ID_PARAM: sid},
                  prepared.digest, run_id=tracking.study_parent_to_resume(sid)) as parent_run_id:
        log_study_data(prepared.split)
        runs = StudyRunner(config, prepared, sid, parent_run_id)
        done = dict(finished)
        if schema.THRESHOLD_ARM in config.arms and schema.THRESHOLD_ARM not in done:
            done[schema.THRESHOLD_ARM] = _run_threshold(runs)
        run_all = _run_on_ray if config.execution.executor == "ray" else _run_in_process
        done.update(run_all(runs, plan, finished))
        results = {key: done[key] for key in runs.keys(plan) if key in done}
        tracking.log_metrics(headline_metrics(plan, results))
        champion = _set_aliases(config, plan, results)
        tracking.describe_run(
            f"study {sid}: arms {', '.join(config.arms)} with {', '.join(map(str, config.sizes))} Dataset 2 images, "
            f"{config.repeats} repeat(s), preset {config.preset}, {train.epochs} epochs at lr {train.lr:g}; "
            f"{len(results)} child runs. Recommended model: {champion.model_uri if champion else 'none'} (why: tag "
            f"{schema.CHAMPION_REASON_TAG}).")
    reused = tuple(key for key in results if key in finished)
    return StudyResult(sid, parent_run_id, results, reused, champion.model_uri if champion else None)


@dataclass(frozen=True)
class StudyRunner:
    """What every child run of one study shares, and how each one is trained; sent whole to every Ray worker."""

    config: StudyConfig
    prepared: Prepared
    study_id: str
    parent_run_id: str

    @property
    def child_tags(self) -> dict[str, str]:
        return {schema.STUDY_TAG: self.study_id}

    def keys(self, plan: list[PlannedRun]) -> list[str]:
        """Every child run's key, in the order a study reports them: base models, threshold, then the plan."""
        return [*map(base_run_key, base_repeats(self.config)), schema.THRESHOLD_ARM, *(p.key for p in plan)]

    def base_of(self, planned: PlannedRun) -> str:
        """Key of the base model run ``planned`` starts from (the scratch arm uses none, but waits for it)."""
        return base_run_key(planned.repeat if self.config.base_per_repeat else 0)

    def in_worker(self) -> StudyRunner:
        """This study's runs on the device resolved in this (Ray worker) process."""
        return dataclasses.replace(self, prepared=self.prepared.on_device(self.config.train.device))

    def run_base(self, repeat: int) -> RunResult:
        """The raw arm of ``repeat``: a base model trained with seed ``seed + repeat``."""
        train = self.config.train
        spec = base_spec(dataclasses.replace(train, seed=train.seed + repeat), self.config.registry, self.prepared,
                         repeat=repeat, run_name=f"base-r{repeat}", nested=True, parent_run_id=self.parent_run_id,
                         tags={**self.child_tags, schema.RUN_KEY_TAG: base_run_key(repeat),
                               schema.REPEAT_TAG: str(repeat)})
        return train_base(spec, self.prepared)

    def run_arm(self, planned: PlannedRun, base: BaseModel | None) -> RunResult:
        """One planned run, from ``base`` (None for the scratch arm)."""
        spec, model = _arm_run(planned, self.config, self.prepared, base, self.child_tags)
        return execute(dataclasses.replace(spec, parent_run_id=self.parent_run_id), model, self.prepared)


def _run_in_process(runs: StudyRunner, plan: list[PlannedRun], finished: dict[str, RunResult]) -> dict[str, RunResult]:
    """Train every run not in ``finished`` here, one after the other; a base model is downloaded once."""
    results = {}
    for repeat in base_repeats(runs.config):
        key = base_run_key(repeat)
        results[key] = finished.get(key) or runs.run_base(repeat)
    base = None
    for planned in tqdm(plan, desc=f"study {runs.study_id}", unit="run"):
        if planned.key in finished:
            continue
        base_uri = results[runs.base_of(planned)].model_uri
        if planned.arm != schema.SCRATCH_ARM and (base is None or base.uri != base_uri):
            base = load_base(base_uri, runs.config.train, runs.prepared)
        results[planned.key] = runs.run_arm(planned, base)
    return results


def _run_on_ray(runs: StudyRunner, plan: list[PlannedRun], finished: dict[str, RunResult]) -> dict[str, RunResult]:
    """Train every run not in ``finished`` as a Ray task (``segft.executor``): the base models at once, each arm
    as soon as its repeat's base model is registered."""
    if all(key in finished for key in runs.keys(plan) if key != schema.THRESHOLD_ARM):
        return {}  # a finished study started again: no Ray instance to start
    destination = tracking.Destination.of_this_process(runs.config.tracking.system_metrics)
    with executor.ray_session(runs.config.execution, destination, runs.config.train.threads) as session:
        shared = session.put(runs)
        bases = {key: finished.get(key) or session.submit(key, _base_task, shared, repeat)
                 for repeat in base_repeats(runs.config) for key in [base_run_key(repeat)]}
        arms = {p.key: session.submit(p.key, _arm_task, shared, p, bases[runs.base_of(p)])
                for p in plan if p.key not in finished}
        submitted = {key: task for key, task in {**bases, **arms}.items() if not isinstance(task, RunResult)}
        return session.gather(submitted, f"study {runs.study_id} on Ray")


def _base_task(runs: StudyRunner, repeat: int) -> RunResult:
    return runs.in_worker().run_base(repeat)


def _arm_task(runs: StudyRunner, planned: PlannedRun, base_run: RunResult) -> RunResult:
    runs = runs.in_worker()
    base = (None if planned.arm == schema.SCRATCH_ARM
            else load_base(base_run.model_uri, runs.config.train, runs.prepared))
    return runs.run_arm(planned, base)


def _set_aliases(config: StudyConfig, plan: list[PlannedRun], results: dict[str, RunResult]) -> Candidate | None:
    """Point ``champion`` at ``choose_champion``'s pick and ``base`` at the base model it started from (repeat
    0's without a champion); tag the parent with the pick and the reason (also when there is none)."""
    choice = choose_champion(candidates_of(plan, results, selection_tables(plan, results)))
    champion = choice.champion
    base_repeat = champion.repeat if champion and config.base_per_repeat else 0
    tracking.set_model_alias(results[base_run_key(base_repeat)].model_uri, schema.BASE_ALIAS)
    if champion:
        tracking.set_model_alias(champion.model_uri, schema.CHAMPION_ALIAS)
        tracking.set_champion_tag(champion.model_uri)
    if any(p.arm == schema.FINETUNE_ARM for p in plan):
        tracking.set_champion_reason(choice.reason)
    return champion


def _as_result(run: tracking.FinishedRun) -> RunResult:
    """A finished run of an earlier start, reused as it is: its model (none for the threshold arm) and scores."""
    return RunResult(
        run_id=run.run_id,
        model_uri=run.model_uri,
        test_metrics={name: value for name, value in run.metrics.items() if name.startswith("test_")},
        val_metrics={name: value for name, value in run.metrics.items() if name.startswith("val_")},
    )


def _run_threshold(runs: StudyRunner) -> RunResult:
    """The ``threshold`` arm: Otsu per test image, its polarity chosen per dataset on training or pool images
    (``segft.threshold``); logged like a trained run's evaluation, with no model."""
    prepared, split = runs.prepared, runs.prepared.split
    chosen_on = {split.test_dataset1.name: ("dataset1_train", split.base_train),
                 split.test_dataset2.name: ("dataset2_pool", split.finetune_pool)}
    polarities = {name: choose_polarity(images) for name, (_, images) in chosen_on.items()}
    tags = {**runs.child_tags, schema.ROLE_TAG: schema.THRESHOLD_ARM, schema.ARM_TAG: schema.THRESHOLD_ARM,
            schema.RUN_KEY_TAG: schema.THRESHOLD_ARM}
    params = {schema.ARM_PARAM: schema.THRESHOLD_ARM, schema.N_IMAGES_PARAM: 0, schema.REPEAT_PARAM: 0,
              **{schema.threshold_polarity_param(name): p for name, p in polarities.items()},
              **{schema.threshold_polarity_source_param(name): part for name, (part, _) in chosen_on.items()}}
    with open_run(schema.THRESHOLD_ARM, tags, params, prepared.digest, prepared.test_inputs, nested=True) as run_id:
        results = [r for test_set in split.test_sets()
                   for r in evaluate(ThresholdSegmenter(polarities[test_set.name]), test_set)]
        metrics = log_test_scores(results, prepared)
        tracking.describe_run("threshold: Otsu's threshold per test image, no training; polarity chosen on "
                              "Dataset 1's training images and Dataset 2's pool. Test Dice: " + ", ".join(
                                  f"{name} {value:.3f}" for name, value in metrics.items() if "_dice_" in name) + ".")
    return RunResult(run_id, "", metrics)


def _arm_run(planned: PlannedRun, config: StudyConfig, prepared: Prepared, base: BaseModel | None,
             study_tags: dict[str, str]) -> tuple[RunSpec, nn.Module]:
    """The run spec and starting model of one planned run: the repeat's seed; random weights (``scratch``) or a
    frozen copy of the base model; the Dataset 2 images, with Dataset 1's training images for ``joint``
    (``StudySplit.joint_train``)."""
    split = prepared.split
    train_config: TrainConfig = dataclasses.replace(config.train, seed=config.train.seed + planned.repeat)
    dataset2_images = split.finetune_pool.subset(planned.pool_indices)
    if planned.arm == schema.SCRATCH_ARM:
        model = fresh_model(train_config)
    else:
        model, train_config = model_from_base(base, train_config)
    spec = RunSpec(
        arm=planned.arm,
        config=train_config,
        train_set=split.joint_train(dataset2_images) if planned.arm == schema.JOINT_ARM else dataset2_images,
        registered_name=config.registry.finetuned_model_name,
        n_images=planned.n_images,
        run_name=f"{planned.arm}-n{planned.n_images}-r{planned.repeat}",
        base_model_uri="" if planned.arm == schema.SCRATCH_ARM else base.uri,
        params={schema.REPEAT_PARAM: planned.repeat, schema.ARM_PARAM: planned.arm},
        tags={**study_tags, schema.RUN_KEY_TAG: planned.key, schema.REPEAT_TAG: str(planned.repeat)},
        validation_sets=selection_sets(split) if planned.arm == schema.FINETUNE_ARM else (),
        nested=True,
    )
    return spec, model
