"""Search spaces: YAML files in search_spaces/, validated before any compute, turned into a Ray Tune space.

A space file has two sections::

    search:                      # how to search (all optional, defaults below)
      metric: val_macro_f1
      num_samples: 8
      max_concurrent: 2
      grace_period: 1            # ASHA: epochs every trial gets before it can be stopped
      reduction_factor: 2        # ASHA: keep the top 1/rf at each rung
      workers_per_trial: 1       # Ray Train workers (DDP when > 1)
      cpus_per_worker: 1
      gpus_per_worker: auto      # auto: 1 per worker when the cluster has GPUs, else 0; or a number
                                 # (a fraction such as 0.25 lets four trials share one GPU)
      objectives:                # instead of metric: a multi-objective search (Optuna's multi-objective TPE)
        val_macro_f1: max        #   the first: a per-epoch val metric, picks each trial's epoch
        cpu_ms_per_film: min     #   then costs: cpu_ms_per_film, param_count
      pick:                      # which member of the Pareto front is tested and registered
        best: val_macro_f1
        limits: {cpu_ms_per_film: 5.0}   # a ceiling for a min objective, a floor for a max one
    params:                      # what to search: a fixed value, or one distribution
      backbone: {choice: [baseline_cnn, resnet18]}
      lr: {loguniform: [1.0e-4, 3.0e-3]}
      epochs: 3

Distributions: ``choice: [a, b, ...]``, ``uniform: [low, high]``, ``loguniform: [low, high]`` (low > 0),
``randint: [low, high]`` (both ends included).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from tune_ct.train.hyperparameters import DEFAULTS, KINDS, NAMES, HyperparameterError, check_value

METRICS = {"val_macro_f1": "max", "val_balanced_accuracy": "max", "val_accuracy": "max", "val_loss": "min",
           # With --select-on DIR: the same figures on films from other sources (over the classes present there),
           # and their blend with the val split: blend_macro_f1 = (val_macro_f1 + ext_val_macro_f1) / 2.
           "ext_val_macro_f1": "max", "ext_val_balanced_accuracy": "max", "blend_macro_f1": "max"}
EXTERNAL_METRICS = ("ext_val_macro_f1", "ext_val_balanced_accuracy", "blend_macro_f1")
# A trial's costs, the same at every epoch (they depend on the network and image size, not on the weights):
# the network's forward time per film on one CPU thread (fp32, eager PyTorch, a fixed batch of val films) and its
# parameter count. Objectives of a multi-objective search besides one per-epoch metric.
COSTS = {"cpu_ms_per_film": "min", "param_count": "min"}
DISTRIBUTIONS = ("choice", "uniform", "loguniform", "randint")

@dataclass(frozen=True)
class Pick:
    """The rule that picks the registered model from a Pareto front: the member with the best `best` among those
    within every limit (objective -> ceiling for a min objective, floor for a max one)."""

    best: str
    limits: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class SearchSettings:
    """The `search` section of a space file (how to search), validated."""

    metric: str = "val_macro_f1"
    num_samples: int = 8
    max_concurrent: int = 2
    grace_period: int = 1  # ASHA: epochs every trial gets before it can be stopped
    reduction_factor: float = 2  # ASHA: keep the top 1/rf at each rung
    workers_per_trial: int = 1  # Ray Train workers (DDP when > 1)
    cpus_per_worker: float = 1
    gpus_per_worker: float | str = "auto"  # auto: 1 per worker when the cluster has GPUs, else 0
    # actor: the loop runs in the reused Tune trial actor (starts in ~1 s); train: a Ray Train TorchTrainer per
    # trial (needed for DDP); auto: actor for one worker per trial, train for several.
    runner: str = "auto"
    time_budget: str | None = None  # "15m", "90s", "2h": no trial starts after it; running ones are stopped
    # Optuna's sampler: auto (GP without early stopping on a small budget, else TPE), tpe, gp or random.
    sampler: str = "auto"
    # Random trials before the sampler models (tpe, gp); None (auto): a quarter of the budget, 3 to 10.
    startup_trials: int | None = None
    # Multi-objective: ((name, mode), ...), the first a per-epoch metric (it replaces `metric`), then costs.
    objectives: tuple[tuple[str, str], ...] = ()
    pick: Pick | None = None  # which member of the Pareto front is registered (default: best on the first)

    @property
    def multi_objective(self) -> bool:
        return len(self.objectives) > 1

    @property
    def resolved_runner(self) -> str:
        if self.runner != "auto":
            return self.runner
        return "actor" if self.workers_per_trial == 1 else "train"

    @property
    def time_budget_s(self) -> float | None:
        return parse_duration(self.time_budget) if self.time_budget else None


RUNNERS = ("auto", "actor", "train")
SAMPLERS = ("auto", "tpe", "gp", "random")
SCHEDULERS = ("asha", "none")
_DURATION = {"s": 1, "m": 60, "h": 3600}


def parse_duration(text: str) -> float:
    """'15m' -> 900.0; '90s', '2h', '1.5h', or a plain number of seconds."""
    value = str(text).strip().lower()
    unit = value[-1] if value and value[-1] in _DURATION else "s"
    number = value[:-1] if value and value[-1] in _DURATION else value
    try:
        seconds = float(number) * _DURATION[unit]
    except ValueError:
        raise ValueError(f"{text!r} is not a duration: use e.g. 15m, 90s or 2h") from None
    if seconds <= 0:
        raise ValueError(f"{text!r}: a time budget must be positive")
    return seconds


SEARCH_KEYS = tuple(f.name for f in fields(SearchSettings))


class SpaceError(ValueError):
    """A search-space file is wrong; the message names the file and the key."""


@dataclass
class Space:
    path: Path
    search: SearchSettings
    params: dict[str, Any]  # name -> fixed value or {distribution: args}

    @property
    def metric(self) -> str:
        """The per-epoch metric: it picks each trial's epoch and the checkpoints kept (the first objective)."""
        return self.search.metric

    @property
    def mode(self) -> str:
        return METRICS[self.metric]

    @property
    def objectives(self) -> tuple[tuple[str, str], ...]:
        """(name, mode) of every objective: the space's objectives, or its one metric."""
        return self.search.objectives or ((self.metric, self.mode),)

    @property
    def max_epochs(self) -> int:
        return int(max(self.values("epochs")))

    def values(self, name: str) -> list:
        """Every value a parameter can take (choices, the fixed value, or the two range ends)."""
        spec = self.params[name]
        if isinstance(spec, dict):
            return list(next(iter(spec.values())))
        return [spec]

    def finite_values(self, name: str) -> list:
        """The values of a fixed or choice parameter; [] for a range (unknown until sampled)."""
        spec = self.params[name]
        return self.values(name) if not isinstance(spec, dict) or "choice" in spec else []

    def tune_space(self) -> dict:
        from ray import tune

        out = {}
        for name, spec in self.params.items():
            if not isinstance(spec, dict):
                out[name] = spec
                continue
            (dist, args), = spec.items()
            if dist == "choice":
                out[name] = tune.choice(list(args))
            elif dist == "uniform":
                out[name] = tune.uniform(*args)
            elif dist == "loguniform":
                out[name] = tune.loguniform(*args)
            else:  # randint: inclusive in the file, exclusive upper end in Tune
                out[name] = tune.randint(args[0], args[1] + 1)
        return out


def _check_value(where: str, name: str, value: Any) -> Any:
    try:
        return check_value(where, name, value)
    except HyperparameterError as exc:
        raise SpaceError(str(exc)) from None


def _check_param(file: Path, name: str, spec: Any) -> Any:
    where = f"{file}: params.{name}"
    if name not in NAMES:
        raise SpaceError(f"{where}: unknown parameter; known: {', '.join(NAMES)}")
    if not isinstance(spec, dict):
        return _check_value(where, name, spec)
    if len(spec) != 1:
        raise SpaceError(f"{where}: give exactly one distribution ({', '.join(DISTRIBUTIONS)}), got {list(spec)}")
    (dist, args), = spec.items()
    where = f"{where}.{dist}"
    if dist not in DISTRIBUTIONS:
        raise SpaceError(f"{where}: unknown distribution {dist!r}; use one of {', '.join(DISTRIBUTIONS)}")
    if not isinstance(args, list) or not args:
        raise SpaceError(f"{where}: expected a list, got {args!r}")
    if dist == "choice":
        return {dist: [_check_value(f"{where}[{i}]", name, v) for i, v in enumerate(args)]}
    kind = KINDS[name]
    if kind not in (int, float):
        raise SpaceError(f"{where}: {name} is not numeric; use choice")
    if dist == "randint" and kind is not int:
        raise SpaceError(f"{where}: randint needs a whole-number parameter; {name} is {kind.__name__}")
    if len(args) != 2:
        raise SpaceError(f"{where}: expected [low, high], got {args!r}")
    low, high = (_check_value(f"{where}", name, v) for v in args)
    if not low < high:
        raise SpaceError(f"{where}: needs low < high, got [{low}, {high}]")
    if dist == "loguniform" and low <= 0:
        raise SpaceError(f"{where}: loguniform needs low > 0, got {low}")
    if kind is int and dist in ("uniform", "loguniform"):
        raise SpaceError(f"{where}: {name} is a whole number; use randint or choice")
    return {dist: [low, high]}


def _check_setting(where: str, key: str, value: Any) -> Any:
    if key == "runner":
        if value not in RUNNERS:
            raise SpaceError(f"{where}: runner must be one of {', '.join(RUNNERS)}, got {value!r}")
    elif key == "sampler":
        if value not in SAMPLERS:
            raise SpaceError(f"{where}: sampler must be one of {', '.join(SAMPLERS)}, got {value!r}")
    elif key == "startup_trials":
        if value == "auto":
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise SpaceError(f"{where}: expected auto or a whole number >= 1, got {value!r}")
    elif key == "time_budget":
        try:
            parse_duration(value)
        except ValueError as exc:
            raise SpaceError(f"{where}: {exc}") from None
        return str(value)
    elif key == "metric":
        if value not in METRICS:
            raise SpaceError(f"{where}: unknown metric {value!r}; use one of {', '.join(METRICS)}")
    elif key == "reduction_factor":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 1.5:
            raise SpaceError(f"{where}: expected a number >= 1.5, got {value!r}")
    elif key == "gpus_per_worker":
        # Ray places fractions of one GPU (several small trials share a card) or whole GPUs, nothing between.
        fraction = isinstance(value, float) and 0 < value < 1
        whole = isinstance(value, int) and not isinstance(value, bool) and value >= 0
        if value != "auto" and not (fraction or whole):
            raise SpaceError(f"{where}: expected auto, a fraction of one GPU (0 < x < 1, e.g. 0.25: four trials "
                             f"share a GPU) or a whole number >= 0, got {value!r}")
    elif key == "cpus_per_worker":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise SpaceError(f"{where}: expected a number > 0, got {value!r}")
    elif isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SpaceError(f"{where}: expected a whole number >= 1, got {value!r}")
    return value


def _check_objectives(where: str, raw: Any) -> tuple[tuple[str, str], ...]:
    """objectives: {per-epoch metric: mode, cost: mode, ...}, the metric first, each in its natural direction."""
    known = {**METRICS, **COSTS}
    if not isinstance(raw, dict) or len(raw) < 2:
        raise SpaceError(f"{where}: expected a mapping of two or more objective: max|min, e.g. "
                         "{val_macro_f1: max, cpu_ms_per_film: min}; for one objective use search.metric")
    out = []
    for i, (name, mode) in enumerate(raw.items()):
        if name not in known:
            raise SpaceError(f"{where}.{name}: unknown objective; use one of {', '.join(known)}")
        if mode != known[name]:
            raise SpaceError(f"{where}.{name}: {name} is better when {'higher' if known[name] == 'max' else 'lower'}"
                             f"; write {name}: {known[name]} (got {mode!r})")
        if (i == 0) != (name in METRICS):
            raise SpaceError(f"{where}: the first objective, and only the first, is a per-epoch metric ("
                             f"{', '.join(METRICS)}): it picks each trial's epoch; the others are costs ("
                             f"{', '.join(COSTS)}); got {name} in place {i + 1}")
        out.append((name, mode))
    return tuple(out)


def _check_pick(where: str, raw: Any, objectives: dict[str, str]) -> Pick:
    """pick: {best: OBJECTIVE, limits: {OBJECTIVE: number, ...}} over the space's objectives."""
    if not objectives:
        raise SpaceError(f"{where}: a pick rule chooses from a Pareto front; declare search.objectives too")
    if not isinstance(raw, dict) or set(raw) - {"best", "limits"} or "best" not in raw:
        raise SpaceError(f"{where}: expected {{best: OBJECTIVE, limits: {{OBJECTIVE: number}}}}, got {raw!r}")
    if raw["best"] not in objectives:
        raise SpaceError(f"{where}.best: {raw['best']!r} is not one of the objectives ({', '.join(objectives)})")
    limits = raw.get("limits") or {}
    if not isinstance(limits, dict):
        raise SpaceError(f"{where}.limits: expected a mapping of objective: number, got {limits!r}")
    for name, bound in limits.items():
        if name not in objectives:
            raise SpaceError(f"{where}.limits.{name}: not one of the objectives ({', '.join(objectives)})")
        if isinstance(bound, bool) or not isinstance(bound, (int, float)) or not math.isfinite(bound):
            raise SpaceError(f"{where}.limits.{name}: expected a finite number, got {bound!r}")
    return Pick(raw["best"], tuple((k, float(v)) for k, v in limits.items()))


def _check_search(file: Path, raw: Any) -> SearchSettings:
    if raw is not None and not isinstance(raw, dict):
        raise SpaceError(f"{file}: search must be a mapping of setting: value")
    values = {}
    for key, value in (raw or {}).items():
        where = f"{file}: search.{key}"
        if key not in SEARCH_KEYS:
            raise SpaceError(f"{where}: unknown setting; known: {', '.join(SEARCH_KEYS)}")
        if key not in ("objectives", "pick"):
            values[key] = _check_setting(where, key, value)
    if "objectives" in (raw or {}):
        values["objectives"] = _check_objectives(f"{file}: search.objectives", raw["objectives"])
        if "metric" in values and values["metric"] != values["objectives"][0][0]:
            raise SpaceError(f"{file}: search.metric {values['metric']} and search.objectives (first: "
                             f"{values['objectives'][0][0]}) disagree; give objectives only")
        values["metric"] = values["objectives"][0][0]
    if "pick" in (raw or {}):
        values["pick"] = _check_pick(f"{file}: search.pick", raw["pick"], dict(values.get("objectives", ())))
    settings = SearchSettings(**values)
    if settings.runner == "actor" and settings.workers_per_trial > 1:
        raise SpaceError(f"{file}: search.runner: actor runs one process per trial; workers_per_trial "
                         f"{settings.workers_per_trial} (DDP) needs runner: train or auto")
    return settings


def _read_yaml(file: Path) -> dict:
    if not file.is_file():
        raise SpaceError(f"search space file {file} does not exist (see search_spaces/ for examples)")
    try:
        raw = yaml.safe_load(file.read_text())
    except yaml.YAMLError as exc:
        raise SpaceError(f"{file}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict) or "params" not in raw:
        raise SpaceError(f"{file}: expected a mapping with a `params` section (and optionally `search`)")
    unknown = set(raw) - {"search", "params", "description"}
    if unknown:
        raise SpaceError(f"{file}: unknown top-level key(s) {', '.join(sorted(unknown))}; use search, params, description")
    return raw


def load_space(path: str | Path) -> Space:
    """Read and validate a space file; every mistake is a SpaceError naming the file and key."""
    file = Path(path)
    raw = _read_yaml(file)
    search = _check_search(file, raw.get("search"))
    params_raw = raw.get("params") or {}
    if not isinstance(params_raw, dict):
        raise SpaceError(f"{file}: params must be a mapping of parameter -> value or distribution")
    params = {name: _check_param(file, name, spec) for name, spec in params_raw.items()}
    for name, default in DEFAULTS.items():
        params.setdefault(name, default)
    return Space(path=file, search=search, params=params)
