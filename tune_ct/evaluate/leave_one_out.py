"""Leave-one-origin-out comparison: did the model learn the disease, or the hospital?

Two models trained with the same configuration and budget, one without the films of one origin, both tested on
the locked test split. The held-out origin's test films are the question: a model that learned the disease names
them as well without ever seeing that hospital; a model that learned the source calls them something else. On
this database the sharpest case is `kermany-pediatric`: it supplies all Viral Pneumonia films and some Normal
ones, so a model that learned "child's chest = viral pneumonia" shows it as Normal recall on those films.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import f1_score

from tune_ct.data.files import CLASSES
from tune_ct.evaluate.metrics import recall_per_class_present


def predicted_share(y_pred: np.ndarray) -> dict[str, float]:
    return {c: float((y_pred == k).mean()) for k, c in enumerate(CLASSES)} if len(y_pred) else {}


def compare(holdout: str, evaluations: dict) -> dict:
    """Per model: on the held-out origin's test films, recall per class and what they were called; on the rest,
    macro-F1. Same films, same budget: the difference is what that origin taught the model."""
    out = {}
    for model_name, ev in evaluations.items():
        origins = np.asarray(ev.origins)
        y_pred = ev.probs.argmax(1)
        held = origins == holdout
        yt, yp = ev.y_true[held], y_pred[held]
        out[model_name] = {
            "heldout_n": int(held.sum()),
            "heldout_accuracy": float((yt == yp).mean()) if held.any() else None,
            "heldout_recall": recall_per_class_present(yt, yp),
            "heldout_predicted_as": predicted_share(yp),
            "other_origins_n": int((~held).sum()),
            # Over the classes those films have: a class absent there (Viral Pneumonia when the paediatric
            # collection is held out) would add an F1 of 0 and cap the macro-F1 at 0.75.
            "other_origins_macro_f1": float(f1_score(ev.y_true[~held], y_pred[~held],
                                                     labels=sorted(set(ev.y_true[~held].tolist())),
                                                     average="macro", zero_division=0)),
        }
    return out


def print_comparison(holdout: str, result: dict, missing_classes: list[str]) -> None:
    print(f"\nLeave-one-origin-out: {holdout} (locked test split; same config and budget for both models)")
    if missing_classes:
        print(f"  note: without {holdout}, no training images remain for {', '.join(missing_classes)}: "
              "that class cannot be predicted by the held-out model")
    width = max(len(m) for m in result) + 3
    print(f"  {'':<34}" + "".join(f"{m:>{width}}" for m in result))
    first = next(iter(result.values()))
    rows = [("test films of held-out origin (n)", lambda r: str(r["heldout_n"])),
            ("  accuracy", lambda r: f"{r['heldout_accuracy']:.3f}" if r["heldout_accuracy"] is not None else "-")]
    rows += [(f"  recall {c}", lambda r, c=c: f"{r['heldout_recall'][c]:.3f}") for c in first["heldout_recall"]]
    rows += [(f"  called {c}", lambda r, c=c: f"{r['heldout_predicted_as'].get(c, 0):.1%}") for c in CLASSES]
    rows += [("other origins' test films: macro-F1", lambda r: f"{r['other_origins_macro_f1']:.3f}")]
    for label, fmt in rows:
        print(f"  {label:<34}" + "".join(f"{fmt(r):>{width}}" for r in result.values()))
