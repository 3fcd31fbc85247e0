"""The Tune objects of a search, built in one place: searcher, scheduler, trainable and Tuner (new or restored)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from ray.tune.search.optuna import OptunaSearch

from tune_ct.train.settings import TrialSettings
from tune_ct.train.space import Space

log = logging.getLogger(__name__)
GP_MAX_TRIALS = 32  # GPSampler's fit grows with the trials (cubic): beyond this budget TPE is the choice
TRIAL_RETRIES = 1  # Tune's failure policy: an errored trial (or one killed for memory) is retried once


@dataclass(frozen=True)
class Sampler:
    """The Optuna sampler of a search, resolved from search.sampler (or --sampler), and why."""

    kind: str  # tpe | gp | random
    n_startup_trials: int  # trials sampled at random before the model is used (tpe, gp)
    why: str

    def build(self, seed: int):
        import optuna

        if self.kind == "gp":
            return optuna.samplers.GPSampler(seed=seed, n_startup_trials=self.n_startup_trials)
        if self.kind == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        # Optuna 5's defaults kept: multivariate TPE, constant liar (concurrent trials sample apart).
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=self.n_startup_trials)

    def describe(self) -> str:
        return f"{self.kind}" + (f" ({self.n_startup_trials} random start-up trials)" if self.kind != "random" else "")


def resolve_sampler(asked: str, scheduler: str, num_samples: int, multi_objective: bool,
                    startup: int | None = None) -> Sampler:
    """auto: GP when every trial runs all its epochs (no ASHA: GPSampler learns from COMPLETE trials only, and under
    ASHA most end PRUNED) on a small budget of one objective; else TPE. Either way the random start-up is `startup`
    or, by default, a quarter of the budget, 3 to 10 trials (Optuna's fixed 10 made a 16-trial search mostly random
    sampling)."""
    startup = startup or max(3, min(10, round(num_samples / 4)))
    if asked != "auto":
        return Sampler(asked, startup, f"search.sampler {asked}")
    if not multi_objective and scheduler == "none" and num_samples <= GP_MAX_TRIALS:
        return Sampler("gp", startup, f"auto: no early stopping, {num_samples} trials <= {GP_MAX_TRIALS}")
    why = "multi-objective" if multi_objective else ("ASHA stops trials early (PRUNED)" if scheduler == "asha"
                                                      else f"{num_samples} trials > {GP_MAX_TRIALS}")
    return Sampler("tpe", startup, f"auto: {why}")


@dataclass(frozen=True)
class TunePlan:
    """How many trials, how many at once, and how they are sampled and stopped."""

    run_name: str
    storage: str
    num_samples: int
    max_concurrent: int
    sampler: Sampler = Sampler("tpe", 10, "default")  # the Optuna sampler of the study
    scheduler: str = "asha"  # asha: stop weak trials early; none: every trial runs all its epochs
    seed: int = 0
    runner: str = "train"  # actor: the loop in the reused trial actor; train: a Ray Train run per trial
    time_budget_s: float | None = None  # no trial starts after it; running ones are stopped where they are
    study_storage: str | None = None  # Optuna RDB storage URL of the TPE searcher's study (named run_name)
    verbose: bool = False  # Tune's own per-trial output on the console too (else only tune_ct's trial table)
    objectives: tuple[tuple[str, str], ...] = ()  # (name, mode) x 2+: a multi-objective search (no ASHA)


class StudySearch(OptunaSearch):
    """Ray's OptunaSearch on a storage, telling the study the truth about each trial, and made to agree with that
    storage after `Tuner.restore`.

    The truth (tune_ct.track.study.verdict): every epoch is an intermediate value at step = epoch (Tune's
    training_iteration restarts when a Train-runner trial is retried); a trial that ran all its epochs ends COMPLETE
    with the value(s) of its best epoch on the search metric, the epoch the search itself would pick (its
    checkpoint is kept); a trial stopped early (ASHA) ends PRUNED, so TPE ranks it by how far it got instead of
    taking an epoch-1 figure for a finished configuration; an errored trial FAIL. (Ray's OptunaSearch tells
    COMPLETE with the last result whenever there is one.)

    After a restore the study on disk may be ahead of the searcher's snapshot: an Optuna trial asked for just
    before the driver died is RUNNING on disk but unknown to Tune (closed FAIL, never counted), and a trial told
    after the snapshot would be told again (marked completed in the searcher instead)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._best_epochs: dict[str, dict] = {}  # trial -> its best report on the (first) objective
        self._progress: dict[str, tuple[int, int]] = {}  # trial -> (epochs reported, epochs planned)

    def restore(self, checkpoint_path: str):
        from tune_ct.track.study import reconcile

        super().restore(checkpoint_path)
        if self._ot_study is not None:
            reconcile(self._ot_study, self._ot_trials, self._completed_trials)

    def _state(self, name: str) -> dict:
        return self.__dict__.setdefault(name, {})  # a searcher pickled by an older tune_ct lacks it

    def on_trial_result(self, trial_id: str, result: dict):
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        self._note(trial_id, result)

    def _note(self, trial_id: str, result: dict) -> None:
        """One epoch's report: its progress, the best report so far, its intermediate value at step = epoch."""
        from tune_ct.train.best import better

        first = self.metric[0] if isinstance(self.metric, list) else self.metric
        if first not in result:
            return
        epoch = int(result.get("epoch", result.get("training_iteration", 0)))
        planned = int(result.get("epochs_planned", (result.get("config") or {}).get("epochs", epoch)))
        self._state("_progress")[trial_id] = (epoch, planned)
        best = self._state("_best_epochs").get(trial_id)
        mode = self.mode[0] if isinstance(self.mode, list) else self.mode
        if best is None or better(result[first], best[first], mode):
            self._state("_best_epochs")[trial_id] = result
        if not isinstance(self.metric, list):  # Optuna keeps no intermediate values for several objectives
            self._ot_trials[trial_id].report(float(result[first]), step=epoch)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        from tune_ct.track.study import verdict

        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        # A result the scheduler stopped the trial on (ASHA), or a trial's final one, comes here and not through
        # on_trial_result: count it as the epoch it is, once.
        noted = self._state("_progress").get(trial_id, (0, 0))[0]
        if result and not error and int(result.get("epoch", 0)) > noted:
            self._note(trial_id, result)
        metrics = self.metric if isinstance(self.metric, list) else [self.metric]
        epochs_run, planned = self._state("_progress").get(trial_id, (0, 0))
        state, values = verdict(self._state("_best_epochs").get(trial_id), metrics, epochs_run, planned, error)
        try:
            self._ot_study.tell(self._ot_trials[trial_id], values, state=state)
        except Exception as exc:  # noqa: BLE001 - e.g. a NaN value: Optuna refuses it, the search goes on
            log.warning(f"Optuna study: trial {trial_id} not told ({exc})")
        self._completed_trials.add(trial_id)

def build_searcher(sampler: Sampler, seed: int, param_space: dict, max_concurrent: int = 0,
                   study_name: str = "optuna", study_storage: str | None = None,
                   objectives: tuple[tuple[str, str], ...] = ()):
    """An Optuna study (seeded sampler; in `study_storage`, an RDB URL, when given) told the truth about each trial
    (StudySearch). OptunaSearch refuses a space with nothing to sample (every value fixed): such trials run as they
    are, through Tune's BasicVariantGenerator (which takes the concurrency limit itself). With two or more
    `objectives` the study is multi-objective and the searcher holds the metric and mode lists itself."""
    from ray.tune.search.basic_variant import BasicVariantGenerator
    from ray.tune.search.sample import Domain

    from tune_ct.track.study import open_storage

    if any(isinstance(v, Domain) for v in param_space.values()):
        storage = open_storage(study_storage) if study_storage else None
        lists = {"metric": [n for n, _ in objectives], "mode": [m for _, m in objectives]} if objectives else {}
        return StudySearch(sampler=sampler.build(seed), study_name=study_name, storage=storage, **lists)
    log.info("every parameter is fixed, so there is nothing to sample; running the trials as given")
    return BasicVariantGenerator(random_state=seed, max_concurrent=max_concurrent)


def build_scheduler(kind: str, max_epochs: int, grace_period: int, reduction_factor: float):
    """ASHA on the epoch count (Tune's training_iteration restarts when a trial is retried), or none."""
    from ray.tune.schedulers import ASHAScheduler

    if kind == "none":
        return None
    return ASHAScheduler(time_attr="epoch", max_t=max_epochs, grace_period=min(grace_period, max_epochs),
                         reduction_factor=reduction_factor)


def trainable(settings: TrialSettings, runner: str, sampled_as: str | None = None, sample_every_s: float = 5.0):
    """The trial function with the resources Tune reserves for it: the whole trial for `actor`; for `train` only
    its driver, the Train workers reserving their own. `sampled_as`: the run name whose SystemSink receives the
    trial process's system metrics (tune_ct.track.system)."""
    from ray import tune

    from tune_ct.track.system import with_system_metrics
    from tune_ct.train.memory_kills import with_kill_record

    def watched(fn, own_process: bool):
        if not sampled_as:
            return fn
        return with_kill_record(with_system_metrics(fn, sampled_as, sample_every_s, own_process), TRIAL_RETRIES)

    if runner == "actor":
        from tune_ct.train.actor import actor_trial

        fn = watched(actor_trial, True)
        resources = {"cpu": settings.cpus_per_worker, "gpu": settings.gpus_per_worker}
        return tune.with_resources(tune.with_parameters(fn, settings=settings), resources)
    from tune_ct.train.trial import TRIAL_DRIVER_CPU, tune_trial

    fn = watched(tune_trial, False)
    return tune.with_resources(tune.with_parameters(fn, settings=settings), {"cpu": TRIAL_DRIVER_CPU})


def uses_study(space: Space) -> bool:
    """Whether the search keeps an Optuna study: a space with something to sample."""
    return any(isinstance(v, dict) for v in space.params.values())


def new_tuner(fn, space: Space, plan: TunePlan, callbacks: list):
    from ray import tune

    param_space = space.tune_space()
    multi = len(plan.objectives) > 1  # the searcher holds the objectives; Tune's single metric would replace them
    return tune.Tuner(
        fn,
        param_space=param_space,
        tune_config=tune.TuneConfig(
            metric=None if multi else space.metric, mode=None if multi else space.mode, num_samples=plan.num_samples,
            max_concurrent_trials=plan.max_concurrent,
            search_alg=build_searcher(plan.sampler, plan.seed, param_space, plan.max_concurrent, plan.run_name,
                                      plan.study_storage, plan.objectives if multi else ()),
            scheduler=build_scheduler(plan.scheduler, space.max_epochs, space.search.grace_period,
                                      space.search.reduction_factor),
            reuse_actors=plan.runner == "actor", time_budget_s=plan.time_budget_s,
        ),
        run_config=tune.RunConfig(
            name=plan.run_name, storage_path=plan.storage, callbacks=callbacks,
            failure_config=tune.FailureConfig(max_failures=TRIAL_RETRIES),
            # 0: Tune prints nothing (the trial table is a callback, tune_ct.track.trial_table); verbose: its default
            # output too. (log_to_file is left off: with reused actors Ray 2.60 flushes a closed log file and warns.)
            verbose=None if plan.verbose else 0,
            # Keep the best epoch (what the search picks) and not only the newest ones (actor runner; the train
            # runner keeps its checkpoints in each Train run with the same rule).
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2, checkpoint_score_attribute=space.metric,
                                                    checkpoint_score_order=space.mode),
        ),
    )


def restored_tuner(fn, plan: TunePlan, resume_errored: bool = True):
    """Finished trials stay finished; unfinished (and, with `resume_errored`, errored) ones restart, and each Train
    run resumes from its own checkpoint (same name under <storage>/train_runs). The searcher and callbacks come
    back from storage."""
    from ray import tune

    return tune.Tuner.restore(f"{plan.storage}/{plan.run_name}", trainable=fn, resume_errored=resume_errored)


def restored_callback(tuner, kind: type, fallback):
    """The callback of `kind` that Tuner.restore unpickled (it, not `fallback`, receives the trial events)."""
    run_config = getattr(getattr(tuner, "_local_tuner", None), "_run_config", None)
    for callback in getattr(run_config, "callbacks", None) or []:
        if isinstance(callback, kind):
            return callback
    return fallback
