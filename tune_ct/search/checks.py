"""The checks a search runs before anything is written or computed: the space, the selection metric, pretrained
weights, the tracking server. This module imports nothing heavy, so that a mistake is reported in seconds,
before Ray and MLflow load (run_search runs these first; tune_ct.search.pipeline imports the rest of the
search only after them). Checking the space's backbone names loads timm.
"""

from __future__ import annotations

import logging
import os

from tune_ct.search.options import SearchOptions
from tune_ct.train.space import EXTERNAL_METRICS, Space, SpaceError, load_space

log = logging.getLogger(__name__)


def check_before_compute(options: SearchOptions) -> Space:
    """Every check that writes nothing: the space, the selection metric, pretrained weights, the tracking server."""
    space = load_space(options.space)  # every space mistake fails here, before any compute
    check_selection_metric(space, options)
    check_pretrained(space, options.weights)  # weights neither cached nor reachable fail here
    check_tracking(options.tracking_uri)  # a dead or credential-rejecting server fails here
    return space


def check_selection_metric(space: Space, options: SearchOptions) -> None:
    if space.metric in EXTERNAL_METRICS and not options.select_on:
        raise SpaceError(f"{space.path}: search.metric {space.metric} scores films from other sources: pass "
                         "--select-on DIR (a labelled folder, as for evaluate --external), or use val_macro_f1")


def check_pretrained(space: Space, weights: dict[str, str]) -> None:
    """Every backbone a trial may build with `pretrained: true` has its timm weights in the Hugging Face cache,
    fetched now when the hub is reachable (trials then load them from the cache); a --weights file wins."""
    if True not in space.finite_values("pretrained"):
        return
    from tune_ct.model.networks import pretrained_weights

    for backbone in space.finite_values("backbone"):
        if backbone not in weights:
            path = pretrained_weights(backbone)
            log.info(f"pretrained weights of {backbone}: {path or 'none in timm (trains from scratch)'}")


def check_tracking(uri: str) -> None:
    from tune_ct.track.server import check_tracking_uri

    check_tracking_uri(uri)
    if uri.startswith(("http://", "https://")):
        # Fail a log call within ~15 s instead of MLflow's minutes of backoff: TrialTracker queues and retries it.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
