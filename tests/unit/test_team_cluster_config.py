"""cluster.yaml (AWS) and cluster-onprem.yaml (Ray's local provider) against Ray's own cluster-config schema."""

from __future__ import annotations


import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from helpers.search_cli import REPO


def load(name: str) -> tuple[dict, dict]:
    raw = yaml.safe_load((REPO / name).read_text())
    prepared = prepare_config(raw)  # merges the provider's defaults, as `ray up` does
    validate_config(prepared)  # raises on any field Ray's schema does not know or mistypes
    return raw, prepared


def start_commands(cfg: dict) -> str:
    return "\n".join(cfg["head_start_ray_commands"] + cfg["worker_start_ray_commands"])


@pytest.mark.timeout(60)
def test_aws_cluster_yaml():
    cfg, prepared = load("cluster.yaml")
    assert cfg["provider"]["type"] == "aws"
    head = cfg["available_node_types"][cfg["head_node_type"]]
    assert "GPU" not in str(head["node_config"]["InstanceType"]).upper()
    gpu = cfg["available_node_types"]["gpu_worker"]
    assert 1 <= gpu["min_workers"] < gpu["max_workers"] <= cfg["max_workers"]  # autoscaling GPU workers
    assert gpu["node_config"]["InstanceType"].startswith(("g", "p"))
    setup = "\n".join(cfg["setup_commands"])
    assert "pip install" in setup and "~/tune_ct" in setup and "/usr/local/bin/ray" in setup
    assert "aws s3 sync" in setup and "/data/COVID-19_Radiography_Dataset" in setup  # dataset on every node
    text = (REPO / "cluster.yaml").read_text()
    assert "--storage s3://" in text and "--tracking-uri http://127.0.0.1:5000" in text
    check_private(cfg)


@pytest.mark.timeout(60)
def test_onprem_cluster_yaml():
    cfg, prepared = load("cluster-onprem.yaml")
    assert cfg["provider"]["type"] == "local" and cfg["provider"]["head_ip"] and cfg["provider"]["worker_ips"]
    assert cfg["auth"]["ssh_user"] and cfg["auth"]["ssh_private_key"]
    assert prepared["available_node_types"]  # prepare_local turned the IPs into Ray's single node type
    # Every `ray` call uses the venv's ray by path (not the SSH user's PATH), and `ray down`'s plain `ray stop`
    # finds it through the link the setup makes.
    for line in start_commands(cfg).splitlines():
        assert " ray " not in f" {line} ".replace("~/venv/bin/ray", "VENV_RAY"), line
    assert any("ln -sf ~/venv/bin/ray" in c for c in cfg["setup_commands"])
    check_private(cfg)


def check_private(cfg: dict) -> None:
    """Dashboard and MLflow on 127.0.0.1 only; token auth on; no secret in the file; the key is not in the repo."""
    head = "\n".join(cfg["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head and "0.0.0.0" not in str(cfg)
    assert "serve.py start" in head and "--host" not in head  # the launcher binds 127.0.0.1 by default
    assert all("RAY_AUTH_MODE=token" in c for c in cfg["head_start_ray_commands"] + cfg["worker_start_ray_commands"]
               if "ray start" in c)
    assert cfg["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"  # from the user's home, not the repo
    text = yaml.safe_dump(cfg).lower()
    for word in ("password", "secret_access_key", "aws_secret", "begin openssh private key"):
        assert word not in text
    assert not any(str(p).startswith(str(REPO)) for p in cfg["file_mounts"].values() if p != ".")
