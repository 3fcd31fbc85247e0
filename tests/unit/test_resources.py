"""Cluster checks before any trial (tune_ct/train/resources.py): `cluster` is what ray.cluster_resources() returns,
given here as a plain dict (no Ray)."""

from __future__ import annotations

import pytest

from tune_ct.train.resources import ClusterError, check_dashboard, check_resources
from tune_ct.train.space import SearchSettings, SpaceError


def settings(**kw) -> SearchSettings:
    return SearchSettings(**kw)


def test_auto_gpu_takes_one_gpu_per_worker_and_gpus_cap_concurrency():
    gpus, at_once = check_resources(settings(gpus_per_worker="auto"), 4, {"CPU": 16.0, "GPU": 2.0})
    assert (gpus, at_once) == (1.0, 2)  # CPUs allow 16, max_concurrent 4, but two GPUs hold two trials


def test_auto_gpu_on_a_cpu_cluster_is_zero_and_cpus_cap_concurrency():
    gpus, at_once = check_resources(settings(gpus_per_worker="auto", cpus_per_worker=2), 8, {"CPU": 5.0})
    assert (gpus, at_once) == (0.0, 2)  # 5 CPUs // 2 per trial


def test_auto_gpu_with_fewer_gpus_than_workers_falls_back_to_cpu():
    gpus, at_once = check_resources(settings(gpus_per_worker="auto", workers_per_trial=2), 3, {"CPU": 8.0, "GPU": 1.0})
    assert (gpus, at_once) == (0.0, 3)


def test_fractional_gpus_let_trials_share_a_card():
    gpus, at_once = check_resources(settings(gpus_per_worker=0.25), 8, {"CPU": 16.0, "GPU": 1.0})
    assert (gpus, at_once) == (0.25, 4)
    # Two workers per trial at 0.25 each: half a GPU per trial, two trials per card, four on two cards.
    assert check_resources(settings(gpus_per_worker=0.25, workers_per_trial=2), 8, {"CPU": 16.0, "GPU": 2.0}) == (0.25, 4)


def test_max_concurrent_is_an_upper_bound_and_at_least_one_trial_runs():
    assert check_resources(settings(), 1, {"CPU": 64.0}) == (0.0, 1)
    assert check_resources(settings(cpus_per_worker=3), 5, {"CPU": 3.0}) == (0.0, 1)  # exactly one fits


def test_too_many_cpus_per_trial_is_a_space_error_naming_the_keys():
    with pytest.raises(SpaceError) as err:
        check_resources(settings(workers_per_trial=2, cpus_per_worker=4), 2, {"CPU": 6.0, "GPU": 0.0}, where="sp.yaml")
    msg = str(err.value)
    assert msg.startswith("sp.yaml:") and "2 worker(s) x 4 CPU" in msg and "has 6 CPU" in msg
    for key in ("search.workers_per_trial", "cpus_per_worker", "gpus_per_worker"):
        assert key in msg


def test_gpus_asked_of_a_cpu_cluster_is_a_space_error():
    with pytest.raises(SpaceError, match=r"1 GPU per trial, but the cluster has 4 CPU and 0 GPU"):
        check_resources(settings(gpus_per_worker=1), 2, {"CPU": 4.0})


def test_an_empty_cluster_description_fits_nothing():
    with pytest.raises(SpaceError, match="has 0 CPU and 0 GPU"):
        check_resources(settings(), 2, {})


def test_a_tenth_of_a_gpu_per_trial_runs_ten_trials_per_gpu():
    assert check_resources(settings(gpus_per_worker=0.1), 10, {"CPU": 16.0, "GPU": 1.0}) == (0.1, 10)


def test_a_tenth_of_a_cpu_per_trial_runs_ten_trials_per_cpu():
    assert check_resources(settings(cpus_per_worker=0.1), 10, {"CPU": 1.0}) == (0.0, 10)


def test_dashboard_present_passes():
    check_dashboard("http://127.0.0.1:8265", None)
    check_dashboard("127.0.0.1:8265", "10.0.0.1:6379")


@pytest.mark.parametrize("url", [None, ""])
def test_missing_dashboard_names_the_cluster_or_the_local_ray(url):
    with pytest.raises(ClusterError) as err:
        check_dashboard(url, "10.0.0.1:6379")
    assert "the cluster at 10.0.0.1:6379" in str(err.value) and "ray[default]" in str(err.value)
    with pytest.raises(ClusterError, match="the local Ray this search started"):
        check_dashboard(url, None)
