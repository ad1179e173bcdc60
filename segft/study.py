"""The whole study in one command: the raw base model, then every arm x size x repeat, under one parent run.

All runs of a study share the tag ``segft.study_id``, a digest of the study's settings and data, and hang under
one parent run so the MLflow UI shows the study as a tree. Started again with the same settings, a study reuses
every run that already finished (and its registered model) instead of training it again.

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

import numpy as np
import pandas as pd
from torch import nn
from tqdm.auto import tqdm

from segft import executor, machine, quality, schema, tracking
from segft.config import ExecutorConfig, StudyConfig, TrainConfig
from segft.data.imageset import ImageSet
from segft.data.split import StudySplit
from segft.runs import (BaseModel, Prepared, RunResult, RunSpec, base_spec, execute, fresh_model, load_base,
                        log_study_data, log_test_scores, model_from_base, prepare, track_in, train_base)
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


#: The champion rule's image bootstrap: resamples, coverage of the interval and seed (fixed: the same runs always
#: give the same champion).
BOOTSTRAP_RESAMPLES, BOOTSTRAP_CONFIDENCE, BOOTSTRAP_SEED = 2000, 0.95, 0


@dataclass(frozen=True)
class Candidate:
    """A fine-tuned model a study may recommend.

    Attributes:
        key: Its run key (``finetune/n20/r1``).
        model_uri: Its registered model version.
        n_images: Dataset 2 images it trained on.
        repeat: Its repeat.
        dice: ``(image, Dice)`` on each Dataset 2 selection image (the whole fine-tuning pool), sorted by image.
        degenerate: Why ``segft.quality`` flags it on its selection images; empty when it does not.
    """

    key: str
    model_uri: str
    n_images: int
    repeat: int
    dice: tuple[tuple[str, float], ...]
    degenerate: str = ""

    @property
    def mean_dice(self) -> float:
        """Mean Dice over its Dataset 2 selection images (nan without any)."""
        return float(np.mean([d for _, d in self.dice])) if self.dice else float("nan")


@dataclass(frozen=True)
class ChampionChoice:
    """What ``choose_champion`` decided: the champion (None when no candidate is left), one sentence saying why,
    and the keys of the candidates tied with the best one within noise (the best included)."""

    champion: Candidate | None
    reason: str
    tied: tuple[str, ...] = ()


def choose_champion(candidates: list[Candidate]) -> ChampionChoice:
    """The fine-tuned model a study recommends, and why; it never looks at test images.

    Rule:

    1. *Selection images, the same for every candidate*: every ``finetune`` run is scored after training on the
       whole Dataset 2 fine-tuning pool and on Dataset 1's base-training images (``val_*`` metrics, never test
       images), so every size, n=20 included, competes on the same images. Some of them are the candidate's own
       training images (more for larger n): the score favours fitting them, which is why rule 3 treats small
       differences as ties.
    2. *Never a flagged run*: a candidate flagged by ``segft.quality.flag_runs`` on its selection images
       (foreground ratio outside [1/3, 3] on either dataset's: Dataset 1's catches a model that forgot Dataset 1;
       or the same masks as another size of its repeat) is out, as is one without Dataset 2 selection scores.
    3. *Differences inside the noise are ties*: the best candidate has the highest mean Dataset 2 selection Dice;
       every candidate whose paired per-image difference to the best (on the images both were scored on) has a
       95 % percentile-bootstrap interval (``BOOTSTRAP_RESAMPLES`` image resamples, fixed seed) containing 0 is
       tied with it. Among the tied candidates the one trained on the most images wins, then the lowest repeat.

    Returns:
        The champion (None when every candidate is out), the reason in one sentence and the tied keys.
    """
    flagged = [c for c in candidates if c.degenerate]
    unscored = [c for c in candidates if not c.degenerate and not c.dice]
    sound = [c for c in candidates if not c.degenerate and c.dice]
    left_out = "".join(
        f"; {len(group)} candidate(s) {why}: {', '.join(c.key for c in group)}"
        for group, why in ((flagged, "flagged as degenerate on their selection images"),
                           (unscored, "without Dataset 2 selection scores")) if group)
    if not candidates:
        return ChampionChoice(None, "no champion: the study has no fine-tuned candidate.")
    if not sound:
        details = "".join(f" {c.key} {c.degenerate}." for c in flagged)
        return ChampionChoice(None, f"no champion: all {len(candidates)} fine-tuned candidates are out{left_out}."
                                    f"{details}")
    best = max(sound, key=lambda c: (c.mean_dice, c.n_images, -c.repeat))
    tied = [c for c in sound if c is best or _tied(best, c)]
    champion = max(tied, key=lambda c: (c.n_images, -c.repeat))
    pool = f"the {len(best.dice)} Dataset 2 pool images"
    if champion is best:
        why = f"best mean Dataset 2 Dice on {pool} ({best.mean_dice:.3f}) among {len(sound)} unflagged candidates"
    else:
        why = (f"mean Dataset 2 Dice {champion.mean_dice:.3f} on {pool}, tied with the best of {len(sound)} "
               f"unflagged candidates, {best.key} ({best.mean_dice:.3f})")
    noise = f"{BOOTSTRAP_CONFIDENCE:.0%} paired image bootstrap"
    if len(tied) > 1:
        why += (f"; {len(tied)} candidates tied within noise ({noise}): the one with the most images (then the "
                "lowest repeat) wins")
    else:
        why += f"; every other is below it beyond noise ({noise})"
    return ChampionChoice(champion, f"{champion.key}: {why}{left_out}.", tuple(c.key for c in tied))


def _tied(best: Candidate, other: Candidate) -> bool:
    """Whether the 95 % percentile-bootstrap interval of the mean paired difference ``best - other`` over the
    images both were scored on contains 0 (no image in common: not comparable, not tied)."""
    theirs = dict(other.dice)
    differences = np.array([d - theirs[image] for image, d in best.dice if image in theirs])
    if differences.size == 0:
        return False
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    means = differences[rng.integers(0, differences.size, (BOOTSTRAP_RESAMPLES, differences.size))].mean(axis=1)
    tail = (1 - BOOTSTRAP_CONFIDENCE) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return bool(low <= 0 <= high)


def selection_sets(split: StudySplit) -> tuple[ImageSet, ImageSet]:
    """The images a study's ``finetune`` runs are scored on to choose the champion (``choose_champion``), the same
    for every run and never a test image: the whole Dataset 2 fine-tuning pool and Dataset 1's base-training
    images."""
    return split.finetune_pool, split.base_train


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


def flag_candidates(plan: list[PlannedRun], tables: dict[str, pd.DataFrame]) -> dict[str, str]:
    """``{run key: reason}`` of the fine-tuned runs that are degenerate on their selection images of either
    dataset (``segft.quality.flag_runs``: foreground ratio out of range, or the same masks as another size of
    the same repeat); ``tables`` as ``selection_tables`` returns them."""
    planned = {p.key: p for p in plan}
    parts = [table.assign(run_id=key, arm=planned[key].arm, n_images=planned[key].n_images,
                          repeat=planned[key].repeat) for key, table in tables.items()]
    if not parts:
        return {}
    flags = quality.flag_runs(pd.concat(parts, ignore_index=True), where="its {dataset} selection images")
    reasons: dict[str, list[str]] = {}
    for key, reason in zip(flags["run_id"], flags["reason"]):  # one row per flagged (run, dataset)
        reasons.setdefault(key, []).append(reason)
    return {key: "; ".join(text) for key, text in reasons.items()}


def candidates_of(plan: list[PlannedRun], results: dict[str, RunResult],
                  tables: dict[str, pd.DataFrame]) -> list[Candidate]:
    """The study's finetune runs as ``Candidate``s: their Dataset 2 selection Dice per image and their flags."""
    flags = flag_candidates(plan, tables)
    candidates = []
    for p in plan:
        if p.arm != schema.FINETUNE_ARM:
            continue
        table = tables.get(p.key)
        dice = () if table is None else tuple(sorted(
            (str(row.image), float(row.dice)) for row in table[table["dataset"] == schema.DATASET2].itertuples()))
        candidates.append(Candidate(p.key, results[p.key].model_uri, p.n_images, p.repeat, dice,
                                    flags.get(p.key, "")))
    return candidates


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
    # resolved once, here: every run and Ray worker receives, applies and logs this count, and the id keys it
    config = dataclasses.replace(config, train=machine.with_threads(train, config.execution))
    track_in(config.tracking)
    sid = study_id(config, prepared.digest)
    plan = plan_runs(config, len(prepared.split.finetune_pool))
    tracking.fail_dead_runs(f"tags.`{schema.STUDY_TAG}` = '{sid}'")  # an earlier start killed mid-run
    finished = {key: _as_result(run) for key, run in tracking.finished_study_runs(sid).items()}
    parent_tags = {schema.ROLE_TAG: schema.ROLE_STUDY, schema.STUDY_TAG: sid, schema.DIGEST_TAG: prepared.digest}
    with tracking.start_run(f"study-{sid}", parent_tags, run_id=tracking.study_parent_to_resume(sid)) as parent:
        tracking.log_params({**tracking.flatten_config(config), **machine.run_params(), "data_digest": prepared.digest,
                             "study_id": sid})
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
            f"{len(results)} child runs. Recommended model: {champion.model_uri if champion else 'none'} (why: tag "
            f"{schema.CHAMPION_REASON_TAG}).")
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
    with executor.ray_session(runs.config.execution, destination, runs.config.train.threads) as session:
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
                             **machine.run_params(),
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
        validation_sets=selection_sets(split) if planned.arm == schema.FINETUNE_ARM else (),
        nested=True,
    )
    return spec, model
