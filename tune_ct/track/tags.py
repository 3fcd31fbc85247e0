"""Every MLflow tag name and role value tune_ct writes or reads, owned here alone (as model/checkpoint.py owns the
checkpoint format): a writer in one stage and a reader in another agree because both import the name from here.

Runs: a search's parent run (role `search`), its child runs (one per trial) and the external evaluations (role
`external_evaluation`, experiment `tune_ct-evaluations`). Registered versions carry the TEST_FIGURE, VERSION,
EXTERNAL and PROMOTION tags.
"""

from __future__ import annotations

PREFIX = "tune_ct."

# The registered model a search adds its winner to unless --register-name says otherwise.
DEFAULT_REGISTER_NAME = "cxr-classifier"

# MLflow's own experiment tag: which view its UI opens an experiment in. tune_ct trains models, so the
# model-training view (runs, models, metrics per dataset), not the GenAI one (traces, agents).
EXPERIMENT_KIND = "mlflow.experimentKind"
MODEL_TRAINING = "custom_model_development"

# What a run is (tag ROLE): the search report finds the newest search by it, and evaluations by theirs.
ROLE = "tune_ct.role"
ROLE_SEARCH = "search"
ROLE_EXTERNAL = "external_evaluation"
EVALUATIONS_EXPERIMENT = "tune_ct-evaluations"  # where `evaluate --external` logs its runs

# A search's parent run: what defines it, where its study is, and (with --select-on) the set it selected on.
TUNE_EXPERIMENT = "tune_ct.tune_experiment"  # the Tune experiment (--name): --resume finds the parent by it
SPACE_FILE = "tune_ct.space_file"
MANIFEST_HASH = "tune_ct.manifest_hash"
CODE_VERSION = "tune_ct.code_version"
DATA = "tune_ct.data"
DATA_SPEC = "tune_ct.data_spec"  # added collections and held-out origins (JSON): rebuilds the same manifest
LIMIT_PER_CLASS = "tune_ct.limit_per_class"
OPTUNA_STORAGE = "tune_ct.optuna_storage"
OPTUNA_STUDY = "tune_ct.optuna_study"
SELECT_ON = "tune_ct.select_on."  # + dir, name, hash, n, classes, unreadable, labels_csv
SELECT_ON_HASH = SELECT_ON + "hash"  # read by `evaluate --external` to refuse the set a model was selected on
ORIGINS = "tune_ct.origins."  # + trained_on, selected_on, held_out: comma-separated origin names
HELD_OUT_PREFIX = "holdout_"  # parent metrics: holdout_macro_f1 (pooled), holdout_<origin>_macro_f1
RESUMED = "tune_ct.resumed"
INTERRUPTED = "tune_ct.interrupted"  # parent and its child runs closed KILLED by a signal
BEST_TRIAL_ID = "tune_ct.best_trial_id"
BEST_RUN_ID = "tune_ct.best_run_id"
BEST_CHECKPOINT = "tune_ct.best_checkpoint"
BEST_EPOCH = "tune_ct.best_epoch"
MODEL_URI = "tune_ct.model_uri"
PICK_MET = "tune_ct.pick_met"  # multi-objective: whether the registered front member meets the pick rule

# A trial's child run.
TRIAL_ID = "tune_ct.trial_id"
ORPHAN = "tune_ct.orphan"  # started as the driver died; closed KILLED on --resume
PARETO_FRONT = "tune_ct.pareto_front"  # "true", or "picked" for the registered member
EPOCHS_RUN = "epochs_run"
EPOCHS_RERUN = "epochs_rerun"  # epochs a restarted trial trained twice; its run keeps each epoch's first report
STOPPED_EARLY = "stopped_early"  # no | asha | time_budget | ...
ERROR = "error"

# A registered version: what it is, where it came from, its locked-test figures.
BACKBONE = "tune_ct.backbone"
IMAGE_SIZE = "tune_ct.image_size"
CLASSES = "tune_ct.classes"
SOURCE_RUN_ID = "tune_ct.source_run_id"
ONNX = "tune_ct.onnx"
TEST_N = "tune_ct.test_n"
TEST_FIGURES = ("accuracy", "balanced_accuracy", "macro_f1")  # each a version tag tune_ct.<figure>
DEMOTED = "tune_ct.demoted"
PROMOTION = "tune_ct.promotion."  # + time, user, decision, previous_champion, test_split, gates, ...

# A trial's LoggedModel (one per trial that reported: its kept best checkpoint, whose weights stay in the Tune
# storage) and the registered version's link to the winner's.
CHECKPOINT_URI = "tune_ct.checkpoint_uri"
SEARCH_PARENT = "tune_ct.search_parent_run"
TRIAL_MODEL_ID = "tune_ct.trial_model_id"  # on the registered model: the winner's trial model
REGISTERED_AS = "tune_ct.registered_as"  # on the winner's trial model: NAME/VERSION

# An external evaluation's run, and the figures it leaves on the version.
MODEL_NAME = "tune_ct.model_name"
MODEL_VERSION = "tune_ct.model_version"
EXTERNAL = "tune_ct.external."  # run: + name, hash, n, classes, root, unreadable


def test_figure(figure: str) -> str:
    """The version tag of a locked-test figure: tune_ct.accuracy, tune_ct.macro_f1, ..."""
    return PREFIX + figure


def external_figure(set_name: str, what: str) -> str:
    """The version tag of an external set's figure: tune_ct.external.<set>.<what> (macro_f1, hash, n, run_id),
    which the promotion gate `min_external_macro_f1` reads."""
    return f"{EXTERNAL}{set_name}.{what}"
