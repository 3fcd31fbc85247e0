"""Searches that build on each other: a new search's study seeded with the finished and pruned trials of earlier
studies in the same Optuna storage that searched the same data for the same objectives (`--warm-start`).

"The same data" is what each study records about itself when it is created (tune_ct.search.plan.study_identity:
the manifest hash, --limit-per-class and the seed that drew it, the objectives, the select-on set). A study without the
`tune_ct.truthful` attribute told early-stopped trials COMPLETE with a truncated value: it is not imported. An
imported trial is rebuilt with the new space's distributions; one whose values lie outside them, or whose fixed
settings differ from the new space's, is skipped and counted. Imported trials carry the user attribute
IMPORTED_FROM, so the report can keep them apart; they are never run again (the sampler learns from them).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tune_ct.track.study import TRUTHFUL_ATTR, StudyError, open_storage

IMPORTED_FROM = "tune_ct.imported_from"
FIXED_ATTR = "tune_ct.fixed_params"  # the space's fixed values (study user attribute), for compatibility


@dataclass
class WarmStart:
    studies: list[str] = field(default_factory=list)  # the studies trials came from
    imported: int = 0
    skipped: int = 0  # trials outside the new space's ranges or choices, or with other fixed settings
    refused: dict[str, str] = field(default_factory=dict)  # study -> why it was not used

    def as_dict(self) -> dict:
        return {"studies": self.studies, "imported": self.imported, "skipped": self.skipped, "refused": self.refused}


def fits(distribution, value) -> bool:
    try:
        return bool(distribution._contains(distribution.to_internal_repr(value)))
    except (ValueError, TypeError):
        return False


def rebuilt(trial, distributions: dict, fixed: dict, old_fixed: dict):
    """The trial with the new space's distributions, or None when it is not a configuration of the new space."""
    from optuna.trial import create_trial

    seen = {**old_fixed, **trial.params}
    if any(seen.get(k, v) != v for k, v in fixed.items()):
        return None
    params = {name: seen[name] for name in distributions if name in seen}
    if len(params) != len(distributions) or not all(fits(distributions[k], v) for k, v in params.items()):
        return None
    # A pruned trial keeps the value Optuna gave it (its last intermediate value), as in its own study.
    value = {"values": trial.values} if len(trial.values or []) > 1 else {"value": trial.value}
    return create_trial(params=params, distributions=distributions, state=trial.state,
                        intermediate_values=dict(trial.intermediate_values), user_attrs=dict(trial.user_attrs),
                        **(value if trial.values is not None else {}))


def candidates(storage, name: str, asked: str) -> list[str]:
    import optuna

    names = [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]
    if asked == "auto":
        return [n for n in names if n != name]
    wanted = [n.strip() for n in asked.split(",") if n.strip()]
    missing = [n for n in wanted if n not in names]
    if missing:
        raise StudyError(f"--warm-start: no study {', '.join(missing)} in the Optuna storage; known: "
                         f"{', '.join(names) or 'none'}")
    return wanted


def why_not(study, identity: dict) -> str | None:
    attrs = study.user_attrs
    if not attrs.get(TRUTHFUL_ATTR):
        return "written before trials were told the truth (early-stopped ones recorded COMPLETE)"
    differs = [k for k, v in identity.items() if attrs.get(k) != v]
    return f"searched other data or objectives ({', '.join(differs)})" if differs else None


def warm_start(url: str, name: str, asked: str, identity: dict, distributions: dict, fixed: dict) -> WarmStart:
    """Seed study `name` with the compatible trials of earlier studies (all of them with asked = "auto")."""
    import optuna
    from optuna.trial import TrialState

    storage = open_storage(url)
    target, out = optuna.load_study(study_name=name, storage=storage), WarmStart()
    for source in candidates(storage, name, asked):
        study = optuna.load_study(study_name=source, storage=storage)
        reason = why_not(study, identity)
        if reason:
            if asked != "auto":
                raise StudyError(f"--warm-start {source}: {reason}; pass studies of the same data and objectives")
            out.refused[source] = reason
            continue
        old_fixed = study.user_attrs.get(FIXED_ATTR) or {}
        for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
            copy = rebuilt(trial, distributions, fixed, old_fixed)
            if copy is None:
                out.skipped += 1
                continue
            copy.set_user_attr(IMPORTED_FROM, source)
            target.add_trial(copy)
            out.imported += 1
        out.studies.append(source)
    return out
