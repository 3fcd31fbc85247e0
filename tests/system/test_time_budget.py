"""--time-budget on a real search: Tune stops the trials still running at the deadline without a completion event;
their MLflow runs must still be closed and tagged, the summary must list them, and the Optuna study must not keep
them RUNNING. (Found on the README's cpu_quick search: two child runs left RUNNING for ever.) The same search runs
with --verbose: Tune's own output and the workers' reach the console too (the default's compact console is checked
on the shared search, test_search_shared.py)."""

from __future__ import annotations

import optuna
from helpers.search_checks import check_study_tells_the_truth
from helpers.search_cli import run_search_cli
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

# No ASHA: it could stop trials before the budget does (a fast machine ran one 200-epoch trial to its end in 40 s
# while ASHA stopped the others, and the budget stopped nothing).
SPACE = """description: trials far longer than the budget
search: {metric: val_macro_f1, num_samples: 4, max_concurrent: 2}
params:
  backbone: baseline_cnn
  image_size: 32
  lr: {loguniform: [1.0e-3, 1.0e-2]}
  batch_size: 8
  epochs: 1000
"""


def test_trials_running_at_the_time_budget_are_closed_listed_and_told_to_the_study(tmp_path, dev_films):
    (tmp_path / "long.yaml").write_text(SPACE)
    proc, summary = run_search_cli(tmp_path, dev_films, "long.yaml", "--name", "budget", "--time-budget", "25s",
                                   "--scheduler", "none", "--verbose")
    stopped = summary["stopped_by_time_budget"]
    assert stopped and "time budget of 25s reached" in proc.stdout
    verbose = proc.stdout + proc.stderr
    assert "Trial status" in verbose and "(actor_trial pid=" in verbose  # Tune's table, the trial actors' output

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    children = [client.get_run(r) for r in summary["child_run_ids"]]
    assert children and all(c.info.status == "FINISHED" for c in children)
    by_trial = {c.data.tags["tune_ct.trial_id"]: c for c in children}
    for trial_id in stopped:
        tags = by_trial[trial_id].data.tags
        assert tags["stopped_early"] == "time_budget" and 0 < int(tags["epochs_run"]) < 1000

    # Stopped by the budget after a few of their 1000 epochs: PRUNED, every epoch an intermediate value.
    study = optuna.load_study(study_name="budget", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    check_study_tells_the_truth(study, client, summary, planned_epochs=1000)
    assert TrialState.PRUNED in {t.state for t in study.trials} and TrialState.COMPLETE not in {t.state for t in study.trials}
