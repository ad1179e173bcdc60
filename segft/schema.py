"""Every name segft writes into MLflow and reads back: tags, params, metrics, artifact paths, roles, arms, aliases.

The writer (``segft.tracking`` and the run pipeline) and the reader (``analysis``) share names only through this
module, which imports nothing, so reading a study back needs no torch. A test checks that tag and artifact names
appear as string literals nowhere else.
"""

from __future__ import annotations

# ---- run tags
ROLE_TAG = "segft.role"
ARM_TAG = "segft.arm"
REPEAT_TAG = "segft.repeat"
STUDY_TAG = "segft.study_id"
RUN_KEY_TAG = "segft.run_key"
DIGEST_TAG = "segft.data_digest"
ENCODER_TAG = "segft.encoder"
MODEL_URI_TAG = "segft.model_uri"
#: Digest of everything that defines a base model (``segft.runs.base_key``): reuse only under the same key.
BASE_KEY_TAG = "segft.base_key"
#: On a study's parent run: the model version it recommends.
CHAMPION_TAG = "segft.champion"
#: On a study's parent run: one sentence naming the champion rule and why this run won.
CHAMPION_REASON_TAG = "segft.champion_reason"
TUNING_STUDY_TAG = "segft.tuning_study"
TRIAL_NUMBER_TAG = "segft.trial_number"
#: Optuna's state of a tuning trial's run: RUNNING, then COMPLETE, PRUNED or FAIL.
TRIAL_STATE_TAG = "segft.trial_state"
BEST_TRIAL_TAG = "segft.best_trial"
#: The process that runs a run (host name, pid, the pid's start time): a resumed study or tuning marks its runs
#: that are RUNNING while that process is gone as FAILED (``segft.tracking.fail_dead_runs``).
HOST_TAG = "segft.host"
PID_TAG = "segft.pid"
PID_STARTED_TAG = "segft.pid_started"
#: The Ray task that runs a run (``--executor ray``): a retried task first marks its dead attempts' runs FAILED.
RAY_TASK_TAG = "segft.ray_task"
#: On a claim (``segft.tracking.claims``): what it claims (``study-<study id>``): one live process at a time.
CLAIM_TAG = "segft.claim"
#: On a claim: when its process last said it was alive, in seconds since the epoch.
HEARTBEAT_TAG = "segft.heartbeat"
#: Why a run ended FAILED or KILLED, in one line.
ERROR_TAG = "segft.error"
#: On a registered model version: the status of its run when that run did not finish (never reused or aliased).
UNFINISHED_RUN_TAG = "segft.unfinished_run"
BEST_RUN_ID_TAG = "segft.best_run_id"

# ---- run params besides the settings (every settings field is a param of the same name: ``flatten_config``)
#: Dataset 2 images a run trained on (0 for a base model); also a column of the analysis's tidy table.
N_IMAGES_PARAM = "n_images"
#: The repeat a study's run belongs to; also a column of the analysis's tidy table.
REPEAT_PARAM = "repeat"
#: The arm a study's run belongs to; also a column of the analysis's tidy table.
ARM_PARAM = "arm"
DATA_DIGEST_PARAM = "data_digest"
#: Where the training images came from (a folder, or the built-in generator and its version).
DATA_SOURCE_PARAM = "data_source"
TRAIN_PATCHES_PARAM = "train_patches"
#: The registered model a run started from (empty: random weights).
BASE_MODEL_URI_PARAM = "base_model_uri"
BASE_RUN_ID_PARAM = "base_run_id"
BASE_KEY_PARAM = "base_key"
STUDY_ID_PARAM = "study_id"
TUNING_STUDY_PARAM = "study_name"
#: What a tuning study tunes: ``base`` or ``finetune``.
TUNING_TARGET_PARAM = "target"
TRIAL_NUMBER_PARAM = "trial_number"
#: Prefix of the params holding a split's file names, one per part (``split_train``...).
SPLIT_PARAM_PREFIX = "split_"


def threshold_polarity_param(dataset: str) -> str:
    """The polarity (objects brighter or darker) the threshold arm chose for ``dataset``."""
    return f"threshold_polarity_{dataset}"


def threshold_polarity_source_param(dataset: str) -> str:
    """The images the threshold arm chose ``dataset``'s polarity on (never test images)."""
    return f"threshold_polarity_chosen_on_{dataset}"


# ---- metrics besides ``metric_name``'s per-dataset scores
#: Mean training loss of an epoch (step = epoch).
TRAIN_LOSS_METRIC = "train_loss"
#: The last epoch's training loss, logged with the model and linked to the training data it was computed on (so
#: that the logged model's "Datasets used" lists its training data, not only the data it was scored on).
FINAL_TRAIN_LOSS_METRIC = "final_train_loss"
#: A tuning trial's validation Dice (step = epoch).
TRIAL_DICE_METRIC = "val_dice"
#: On a tuning study's parent run: the best learning rate so far and its validation Dice (step = trials done).
BEST_LR_METRIC, BEST_VALUE_METRIC = "best_lr", "best_value"


def headline_metric(arm: str, n_images: int, dataset: str) -> str:
    """On a study's parent run: mean test Dice of an arm and size over its repeats (``raw_n0_test_dice_dataset2``);
    the report's intervals are ``analysis``'s."""
    return f"{arm}_n{n_images}_{metric_name(TEST, 'dice', dataset)}"


def loss_branch_metric(branch: str) -> str:
    """How many patches (or batches) of an epoch took a branch of the dynamic loss."""
    return f"loss_branch_{branch}"


# ---- run params recording what results depend on besides settings and data (``segft.machine``)
#: The resolved PyTorch thread count (``TrainConfig.threads``, logged with the settings).
THREADS_PARAM = "threads"
CPU_MODEL_PARAM = "cpu_model"
CPU_FAMILY_PARAM = "cpu_family"
CPU_MODEL_NUMBER_PARAM = "cpu_model_number"
#: The CPU's vector instruction sets PyTorch and oneDNN choose kernels by, comma-separated (``avx2,fma,avx512f``).
CPU_ISA_PARAM = "cpu_isa"
#: What PyTorch's own kernels dispatch to (``torch.backends.cpu.get_cpu_capability``: ``AVX2``, ``AVX512``...).
TORCH_CPU_CAPABILITY_PARAM = "torch_cpu_capability"
#: The PyTorch version (``torch.__version__``).
TORCH_VERSION_PARAM = "torch_version"
#: The CPU cores the process may use (its affinity), not the machine's.
CPU_CORES_PARAM = "cpu_cores"
#: The CUDA device's name, ``none`` without one.
GPU_PARAM = "gpu_name"
#: segft's package version.
CODE_VERSION_PARAM = "code_version"
#: The git commit segft ran from, ``-dirty`` when tracked files had changes; empty outside a checkout.
GIT_COMMIT_PARAM = "git_commit"

# ---- roles (tag ``segft.role``) and arms (tag ``segft.arm``)
ROLE_BASE = "base"
ROLE_FINETUNE = "finetune"
ROLE_STUDY = "study"
ROLE_TUNE = "tune"
ROLE_TUNE_TRIAL = "tune_trial"
#: The base model scored as it is (no Dataset 2 images).
RAW_ARM = "raw"
FINETUNE_ARM = "finetune"
SCRATCH_ARM = "scratch"
JOINT_ARM = "joint"
#: Otsu's threshold per image, no training: run once per study.
THRESHOLD_ARM = "threshold"
#: Arms that train a model on Dataset 2 images.
TRAINED_ARMS = (FINETUNE_ARM, SCRATCH_ARM, JOINT_ARM)
#: The arms a study can run beside the raw base model.
ARMS = (*TRAINED_ARMS, THRESHOLD_ARM)

# ---- datasets and metrics
DATASET1 = "dataset1"
DATASET2 = "dataset2"


TEST, VALIDATION = "test", "val"


def metric_name(part: str, name: str, dataset: str) -> str:
    """``<part>_<name>_<dataset>``: ``test_dice_dataset1``, ``val_fg_ratio_dataset2``... (``part`` is ``TEST`` or
    ``VALIDATION``: validation images are never test images)."""
    return f"{part}_{name}_{dataset}"


# ---- dataset inputs (``mlflow.log_input``): the contexts a run used a part of the data in
TRAINING_CONTEXT, VALIDATION_CONTEXT, TEST_CONTEXT = "training", "validation", "test"


def input_name(dataset: str, part: str) -> str:
    """Name of a logged dataset input: ``dataset1-train``, ``dataset2-validation``, ``dataset2-test``..."""
    return f"{dataset}-{part}"


# ---- experiments
#: MLflow's experiment tag that makes its UI open an experiment as model training (not GenAI traces).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
#: MLflow 3's UI starts in GenAI mode (a global toggle kept in the browser) whatever the kind tag says; this query
#: opens an experiment's page in model-training mode, on its runs.
UI_MODEL_TRAINING_QUERY = "workflowType=machine_learning"
#: ``mlflow ui``'s address, for links when the tracking URI is a local store.
DEFAULT_UI = "http://127.0.0.1:5000"
#: MLflow's tag holding a run's (or an experiment's) description, shown in the UI.
DESCRIPTION_TAG = "mlflow.note.content"

# ---- artifacts
EVALUATION_CSV = "evaluation/per_image_dice.csv"
VALIDATION_CSV = "evaluation/val_per_image_dice.csv"
SPLIT_JSON = "split.json"
#: A tuning study's Optuna plots (interactive HTML), on its parent run.
TUNING_PLOTS_DIR = "tuning"


def tuning_plot_path(plot: str) -> str:
    """One of a tuning study's plots: ``tuning/<plot>.html``."""
    return f"{TUNING_PLOTS_DIR}/{plot}.html"
REPORT_DIR = "report"
TEST_DATA_DIR = "test_data"
#: Where a logged segft pyfunc keeps its checkpoint, inside the model's artifacts.
CHECKPOINT_ARTIFACT = "checkpoint"


def overlay_path(dataset: str, image: str) -> str:
    """A test image's overlay of prediction against ground truth."""
    return f"overlays/{dataset}/{image}.png"


def prediction_path(dataset: str, image: str) -> str:
    """A test image's predicted mask (0/255)."""
    return f"predictions/{dataset}/{image}.png"


def study_images_dir(dataset: str) -> str:
    """The folder of a dataset's test images (8-bit, for display) on a study's parent run."""
    return f"{TEST_DATA_DIR}/{dataset}/images"


def study_image_path(dataset: str, image: str) -> str:
    """A test image (8-bit, for display) on a study's parent run."""
    return f"{study_images_dir(dataset)}/{image}.png"


def study_mask_path(dataset: str, image: str) -> str:
    """A test image's ground-truth mask on a study's parent run."""
    return f"{TEST_DATA_DIR}/{dataset}/masks/{image}.png"


# ---- registry aliases a study sets
CHAMPION_ALIAS = "champion"
BASE_ALIAS = "base"
