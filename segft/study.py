"""The whole study in one command: the raw base model, then every arm x size x repeat, under one parent run.

All runs of a study share the tag ``segft.study_id``, a digest of the study's settings and data, and hang under
one parent run so the MLflow UI shows the study as a tree. Started again with the same settings, a study reuses
every run that already finished (and its registered model) instead of training it again.

At the end a study points two aliases of the registry at its models: ``base`` at the base model it used, and
``champion`` at the fine-tuned version it recommends (``choose_champion``), so that
``models:/segft-finetuned@champion`` segments new images with it. A resumed study sets them again from its
finished runs' metrics; the newest study to finish owns the aliases.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass

import numpy as np
import pandas as pd
from torch import nn
from tqdm.auto import tqdm

from segft import executor, quality, schema, tracking
from segft.config import ExecutorConfig, StudyConfig, TrainConfig
from segft.runs import (BaseModel, Prepared, RunResult, RunSpec, base_spec, execute, fresh_model, left_out_of_pool,
                        load_base, log_study_data, log_test_scores, model_from_base, prepare, track_in,
                        train_base)
from segft.threshold import ThresholdSegmenter, choose_polarity
from segft.training import evaluate


@dataclass(frozen=True)
class PlannedRun:
    """One child run of a study: an arm trained with ``n_images`` Dataset 2 images in repeat ``repeat``."""

    arm: str
    n_images: int
    repeat: int
    pool_indices: tuple[int, ...]

    @property
    def key(self) -> str:
        """Stable identity within a study, stored as the run's ``segft.run_key`` tag."""
        return f"{self.arm}/n{self.n_images}/r{self.repeat}"


def study_id(config: StudyConfig, data_digest: str) -> str:
    """Digest of everything that determines the study's results and where its runs live (its experiment), not
    where its report goes, whether system metrics are logged or where the runs execute (a study started in
    process can be resumed on Ray)."""
    settings = dataclasses.asdict(dataclasses.replace(
        config, report_dir="", tracking=dataclasses.replace(config.tracking, system_metrics=True),
        execution=ExecutorConfig()))
    text = json.dumps(settings, sort_keys=True, default=str) + data_digest
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def draw_pool_indices(pool_size: int, sizes: tuple[int, ...], repeat: int, seed: int, resample: bool) -> dict[int, tuple[int, ...]]:
    """Which pool images each size uses in one repeat; every larger size contains the smaller ones.

    Repeat 0 (and every repeat when ``resample`` is off) takes the first ``n`` images, as the original protocol
    does; other repeats take the first ``n`` of a random permutation seeded by ``(seed, repeat)``.
    """
    order = np.arange(pool_size)
    if resample and repeat > 0:
        order = np.random.default_rng([seed, repeat]).permutation(pool_size)
    return {n: tuple(sorted(int(i) for i in order[:n])) for n in sizes}


def plan_runs(config: StudyConfig, pool_size: int) -> list[PlannedRun]:
    """Every trained child run of the study (not the base model, not ``threshold``), in execution order
    (repeat, size, arm)."""
    plan = []
    trained = [arm for arm in config.arms if arm != schema.THRESHOLD_ARM]
    for repeat in range(config.repeats):
        subsets = draw_pool_indices(pool_size, config.sizes, repeat, config.train.seed, config.resample)
        for n in sorted(config.sizes):
            plan.extend(PlannedRun(arm, n, repeat, subsets[n]) for arm in trained)
    return plan




@dataclass(frozen=True)
class Candidate:
    """A fine-tuned model a study may recommend: its run key, model, size, repeat, validation Dice (None when
    it trained on the whole pool and had no image left to validate on) and why it is degenerate on its
    validation images (``segft.quality``; empty when it is not)."""

    key: str
    model_uri: str
    n_images: int
    repeat: int
    val_dice: float | None
    degenerate: str = ""


def choose_champion(candidates: list[Candidate]) -> Candidate | None:
    """The fine-tuned model a study recommends; it never looks at test images.

    Rule: never a run flagged as degenerate on its validation images. Among the others, the highest validation
    Dice (``val_dice_dataset2``: Dataset 2 pool images the run did not train on); ties go to more images, then
    the lower repeat. Runs without validation images compete only when no run has any: then the one with the
    most images wins, ties going to repeat 0 (the lowest repeat). None when no candidate is left.
    """
    sound = [c for c in candidates if not c.degenerate]
    validated = [c for c in sound if c.val_dice is not None]
    if validated:
        return max(validated, key=lambda c: (c.val_dice, c.n_images, -c.repeat))
    return max(sound, key=lambda c: (c.n_images, -c.repeat), default=None)


def flag_candidates(plan: list[PlannedRun], results: dict[str, RunResult]) -> dict[str, str]:
    """``{run key: reason}`` of the fine-tuned runs that are degenerate on their validation images
    (``segft.quality.flag_runs``: foreground ratio out of range, or the same masks as another size)."""
    tables = []
    for p in plan:
        table = results[p.key].val_table
        if p.arm == schema.FINETUNE_ARM and table is None and results[p.key].val_metrics:  # a resumed run: read it back
            table = tracking.read_validation_table(results[p.key].run_id)
        if p.arm == schema.FINETUNE_ARM and table is not None:
            tables.append(table.assign(run_id=p.key, arm=p.arm, n_images=p.n_images, repeat=p.repeat))
    if not tables:
        return {}
    flags = quality.flag_runs(pd.concat(tables, ignore_index=True), where="its validation images")
    return dict(zip(flags["run_id"], flags["reason"]))


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

    A resumed study first marks its runs that an earlier, killed start left RUNNING as FAILED
    (``tracking.fail_dead_runs``), then reuses every finished run and trains the others again: in this process,
    one after the other, or as Ray tasks (``config.execution``), the base models first, then the arms.
    """
    train = config.train
    executor.check_executor(config.execution)
    prepared = prepare(train, config.sizes)
    track_in(config.tracking)
    sid = study_id(config, prepared.digest)
    plan = plan_runs(config, len(prepared.split.finetune_pool))
    tracking.fail_dead_runs(f"tags.`{schema.STUDY_TAG}` = '{sid}'")  # an earlier start killed mid-run
    finished = {key: _as_result(run) for key, run in tracking.finished_study_runs(sid).items()}
    parent_tags = {schema.ROLE_TAG: schema.ROLE_STUDY, schema.STUDY_TAG: sid, schema.DIGEST_TAG: prepared.digest}
    with tracking.start_run(f"study-{sid}", parent_tags, run_id=tracking.study_parent_to_resume(sid)) as parent:
        tracking.log_params({**tracking.flatten_config(config), "data_digest": prepared.digest, "study_id": sid})
        log_study_data(prepared.split)
        runs = StudyRuns(config, prepared, sid, parent.info.run_id)
        done = dict(finished)
        if schema.THRESHOLD_ARM in config.arms and schema.THRESHOLD_ARM not in done:
            done[schema.THRESHOLD_ARM] = _run_threshold(runs)
        run_all = _run_on_ray if config.execution.executor == "ray" else _run_in_process
        done.update(run_all(runs, plan, finished))
        results = {key: done[key] for key in runs.keys(plan) if key in done}
        champion = _set_aliases(config, plan, results)
        tracking.describe_run(
            f"study {sid}: arms {', '.join(config.arms)} with {', '.join(map(str, config.sizes))} Dataset 2 images, "
            f"{config.repeats} repeat(s), preset {config.preset}, {train.epochs} epochs at lr {train.lr:g}; "
            f"{len(results)} child runs. Recommended model (validation Dice): {champion.model_uri if champion else 'none'}.")
    reused = tuple(key for key in results if key in finished)
    return StudyResult(sid, parent.info.run_id, results, reused, champion.model_uri if champion else None)


@dataclass(frozen=True)
class StudyRuns:
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

    def in_worker(self) -> StudyRuns:
        """This study's runs on the device resolved in this (Ray worker) process."""
        return dataclasses.replace(self, prepared=self.prepared.on_device(self.config.train.device))

    def train_base(self, repeat: int) -> RunResult:
        """The raw arm of ``repeat``: a base model trained with seed ``seed + repeat``."""
        train = self.config.train
        spec = base_spec(dataclasses.replace(train, seed=train.seed + repeat), self.config.registry, self.prepared,
                         repeat=repeat, run_name=f"base-r{repeat}", nested=True, parent_run_id=self.parent_run_id,
                         tags={**self.child_tags, schema.RUN_KEY_TAG: base_run_key(repeat),
                               schema.REPEAT_TAG: str(repeat)})
        return train_base(spec, self.prepared)

    def train_arm(self, planned: PlannedRun, base: BaseModel | None) -> RunResult:
        """One planned run, from ``base`` (None for the scratch arm)."""
        spec, model = _arm_run(planned, self.config, self.prepared, base, self.child_tags)
        return execute(dataclasses.replace(spec, parent_run_id=self.parent_run_id), model, self.prepared)


def _run_in_process(runs: StudyRuns, plan: list[PlannedRun], finished: dict[str, RunResult]) -> dict[str, RunResult]:
    """Train every run not in ``finished`` here, one after the other; a base model is downloaded once."""
    results = {}
    for repeat in base_repeats(runs.config):
        key = base_run_key(repeat)
        results[key] = finished.get(key) or runs.train_base(repeat)
    base = None
    for planned in tqdm(plan, desc=f"study {runs.study_id}", unit="run"):
        if planned.key in finished:
            continue
        base_uri = results[runs.base_of(planned)].model_uri
        if planned.arm != schema.SCRATCH_ARM and (base is None or base.uri != base_uri):
            base = load_base(base_uri, runs.config.train, runs.prepared)
        results[planned.key] = runs.train_arm(planned, base)
    return results


def _run_on_ray(runs: StudyRuns, plan: list[PlannedRun], finished: dict[str, RunResult]) -> dict[str, RunResult]:
    """Train every run not in ``finished`` as a Ray task (``segft.executor``): the base models at once, each arm
    as soon as its repeat's base model is registered."""
    if all(key in finished for key in runs.keys(plan) if key != schema.THRESHOLD_ARM):
        return {}  # a finished study started again: no Ray instance to start
    destination = tracking.Destination.of_this_process(runs.config.tracking.system_metrics)
    with executor.ray_session(runs.config.execution, destination) as session:
        shared = session.put(runs)
        bases = {key: finished.get(key) or session.submit(key, _base_task, shared, repeat)
                 for repeat in base_repeats(runs.config) for key in [base_run_key(repeat)]}
        arms = {p.key: session.submit(p.key, _arm_task, shared, p, bases[runs.base_of(p)])
                for p in plan if p.key not in finished}
        submitted = {key: task for key, task in {**bases, **arms}.items() if not isinstance(task, RunResult)}
        return session.gather(submitted, f"study {runs.study_id} on Ray")


def _base_task(runs: StudyRuns, repeat: int) -> RunResult:
    return runs.in_worker().train_base(repeat)


def _arm_task(runs: StudyRuns, planned: PlannedRun, base_run: RunResult) -> RunResult:
    runs = runs.in_worker()
    base = (None if planned.arm == schema.SCRATCH_ARM
            else load_base(base_run.model_uri, runs.config.train, runs.prepared))
    return runs.train_arm(planned, base)


def base_repeats(config: StudyConfig) -> range:
    """The repeats that train a base model: every repeat with ``base_per_repeat``, else repeat 0 only."""
    return range(config.repeats if config.base_per_repeat else 1)


def base_run_key(repeat: int) -> str:
    """Run key of the base model (raw arm) of ``repeat``."""
    return f"base/r{repeat}"


def _set_aliases(config: StudyConfig, plan: list[PlannedRun], results: dict[str, RunResult]) -> Candidate | None:
    """Point ``champion`` at ``choose_champion``'s pick and ``base`` at the base model it started from (repeat
    0's without a champion); tag the parent."""
    flags = flag_candidates(plan, results)
    candidates = [Candidate(p.key, results[p.key].model_uri, p.n_images, p.repeat,
                            results[p.key].val_metrics.get(schema.VALIDATION_METRIC), flags.get(p.key, ""))
                  for p in plan if p.arm == schema.FINETUNE_ARM]
    champion = choose_champion(candidates)
    base_repeat = champion.repeat if champion and config.base_per_repeat else 0
    tracking.set_model_alias(results[base_run_key(base_repeat)].model_uri, schema.BASE_ALIAS)
    if champion:
        tracking.set_model_alias(champion.model_uri, schema.CHAMPION_ALIAS)
        tracking.set_champion_tag(champion.model_uri)
    return champion


def _as_result(run) -> RunResult:
    metrics = run.data.metrics
    return RunResult(
        run_id=run.info.run_id,
        model_uri=run.data.tags.get(schema.MODEL_URI_TAG, ""),  # the threshold arm has no model
        test_metrics={name: value for name, value in metrics.items() if name.startswith("test_")},
        val_metrics={name: value for name, value in metrics.items() if name.startswith("val_")},
    )


def _run_threshold(runs: StudyRuns) -> RunResult:
    """The ``threshold`` arm: Otsu per test image, its polarity chosen per dataset on training or pool images
    (``segft.threshold``); logged like a trained run's evaluation, with no model."""
    prepared, split = runs.prepared, runs.prepared.split
    chosen_on = {split.test_dataset1.name: ("dataset1_train", split.base_train),
                 split.test_dataset2.name: ("dataset2_pool", split.finetune_pool)}
    polarities = {name: choose_polarity(images) for name, (_, images) in chosen_on.items()}
    tags = {**runs.child_tags, schema.ROLE_TAG: schema.THRESHOLD_ARM, schema.ARM_TAG: schema.THRESHOLD_ARM,
            schema.DIGEST_TAG: prepared.digest, schema.RUN_KEY_TAG: schema.THRESHOLD_ARM}
    with tracking.start_run(schema.THRESHOLD_ARM, tags, nested=True) as run:
        tracking.log_params({"arm": schema.THRESHOLD_ARM, "n_images": 0, "repeat": 0, "data_digest": prepared.digest,
                             **{f"threshold_polarity_{name}": p for name, p in polarities.items()},
                             **{f"threshold_polarity_chosen_on_{name}": part for name, (part, _) in chosen_on.items()}})
        tracking.log_inputs(list(prepared.test_inputs))
        results = [r for test_set in split.test_sets()
                   for r in evaluate(ThresholdSegmenter(polarities[test_set.name]), test_set)]
        metrics = log_test_scores(results, prepared)
        tracking.describe_run("threshold: Otsu's threshold per test image, no training; polarity chosen on "
                              "Dataset 1's training images and Dataset 2's pool. Test Dice: " + ", ".join(
                                  f"{name} {value:.3f}" for name, value in metrics.items() if "_dice_" in name) + ".")
    return RunResult(run.info.run_id, "", metrics)


def _arm_run(planned: PlannedRun, config: StudyConfig, prepared: Prepared, base: BaseModel | None,
             study_tags: dict[str, str]) -> tuple[RunSpec, nn.Module]:
    """The run spec and starting model of one planned run: the repeat's seed; random weights (``scratch``) or a
    frozen copy of the base model; the Dataset 2 images, with Dataset 1's training images for ``joint``."""
    split = prepared.split
    train_config: TrainConfig = dataclasses.replace(config.train, seed=config.train.seed + planned.repeat)
    dataset2_images = split.finetune_pool.subset(planned.pool_indices)
    if planned.arm == schema.SCRATCH_ARM:
        model = fresh_model(train_config)
    else:
        model, train_config = model_from_base(base, train_config)
    train_set = dataset2_images
    if planned.arm == schema.JOINT_ARM:
        train_set = dataclasses.replace(
            dataset2_images,
            name=schema.JOINT_ARM,
            names=tuple(f"{schema.DATASET1}/{n}" for n in split.base_train.names)
            + tuple(f"{schema.DATASET2}/{n}" for n in dataset2_images.names),
            images=split.base_train.images + dataset2_images.images,
            masks=split.base_train.masks + dataset2_images.masks,
        )
    spec = RunSpec(
        role=planned.arm,
        arm=planned.arm,
        config=train_config,
        train_set=train_set,
        registered_name=config.registry.finetuned_model_name,
        n_images=planned.n_images,
        run_name=f"{planned.arm}-n{planned.n_images}-r{planned.repeat}",
        params={"repeat": planned.repeat, "arm": planned.arm,
                "base_model_uri": "" if planned.arm == schema.SCRATCH_ARM else base.uri},
        tags={**study_tags, schema.RUN_KEY_TAG: planned.key, schema.REPEAT_TAG: str(planned.repeat)},
        validation_set=(left_out_of_pool(split, planned.pool_indices) if planned.arm == schema.FINETUNE_ARM
                        else None),
        nested=True,
    )
    return spec, model
