"""A multi-node Ray cluster on one machine, each node its own `ray start --block` process: for trying
`--address`, lost nodes and token auth without cloud machines (and for the tests).

    python tests/helpers/ray_cluster.py --workers 2 --folder /tmp/raycluster    # prints the address; Ctrl-C stops it all

Every port is chosen free and bound to 127.0.0.1, so it neither clashes with nor captures anyone else's Ray on
the machine (plain `ray stop` would stop every Ray of the user: stopping here kills only our process groups).
Token auth stays on: the cluster gets its own token file, passed as RAY_AUTH_TOKEN_PATH.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path


def distinct_ports(n: int, taken: set[int] = frozenset()) -> list[int]:
    """n free ports, no two alike and none in `taken` (free_port() may hand out a port twice once it is released,
    and the ports of a node still starting are not bound yet)."""
    out: list[int] = []
    while len(out) < n:
        port = free_port()
        if port not in out and port not in taken:
            out.append(port)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Node:
    name: str
    proc: subprocess.Popen
    log: Path
    worker_lo: int = 0  # first port of this node's private worker-port range
    ports: tuple[int, ...] = ()  # the ports it was given

    def pids(self) -> list[int]:
        """Every live process of this node (ray start, raylet, agents, workers): they share its process group."""
        out = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    zombie = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
                    if os.getpgid(int(entry.name)) == self.proc.pid and not zombie:
                        out.append(int(entry.name))
                except (OSError, IndexError):
                    pass
        return out

    def raylet_pid(self) -> int | None:
        for pid in self.pids():
            try:
                if "raylet" in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode():
                    return pid
            except OSError:
                pass
        return None

    def started(self) -> bool:
        """`ray start` has printed that this node runs (for a worker: it has registered with the head's GCS)."""
        return self.log.is_file() and "Ray runtime started." in self.log.read_text(errors="replace")

    def send(self, sig: int = signal.SIGTERM) -> bool:
        try:
            os.killpg(self.proc.pid, sig)
            return True
        except ProcessLookupError:
            return False

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        if not self.send(sig):
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.pids():
            time.sleep(0.3)
        if self.pids():
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass


@dataclass
class LocalCluster:
    folder: Path
    address: str
    env: dict[str, str]  # what a driver or CLI needs to join (RAY_AUTH_MODE, RAY_AUTH_TOKEN_PATH)
    dashboard: str
    temp_dir: Path  # Ray's session folder (logs) for this cluster only
    nodes: list[Node] = field(default_factory=list)

    def add_worker(self, name: str, num_cpus: float = 1, resources: dict | None = None, timeout: float = 120) -> Node:
        """Start a worker node and return once it has joined: `ray start` prints "Ray runtime started." only after
        the head's GCS has the new node (a file read here; `ray status` is a ~2 s CLI start per call). One at a
        time: three `ray start` at once on one IP all failed "Failed to get node info"."""
        for attempt in range(3):  # a loaded machine can time out a raylet's registration ("Deadline Exceeded")
            node = _start(self, name, ["--address", self.address], num_cpus, resources)
            self.nodes.append(node)
            deadline = time.monotonic() + timeout
            while node.proc.poll() is None and time.monotonic() < deadline:
                if node.started():
                    return node
                time.sleep(0.2)
            node.stop()
            node.log.rename(node.log.with_suffix(f".failed{attempt + 1}.log"))  # kept for the reader
        raise RuntimeError(f"node {name} did not join {self.address}: see {self.folder}/{name}.failed*.log")

    def alive_nodes(self) -> int:
        out = subprocess.run([_ray(), "status", "--address", self.address], capture_output=True, text=True,
                             env=self.env, timeout=60)
        # "Active:" section lists one "1 node_<id>" line per alive node.
        active = out.stdout.split("Active:")[1].split("Pending:")[0] if "Active:" in out.stdout else ""
        return sum(1 for line in active.splitlines() if "node_" in line)

    def wait_nodes(self, n: int, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.nodes[0].proc.poll() is None:  # a head that exited: say so now
            try:
                if self.alive_nodes() >= n:
                    return
            except subprocess.TimeoutExpired:
                pass
            time.sleep(1)
        why = "the head exited" if self.nodes[0].proc.poll() is not None else f"after {timeout:g}s"
        raise RuntimeError(f"cluster at {self.address}: fewer than {n} nodes alive ({why}); see the logs in "
                           f"{self.folder}")

    def stop(self, remove_logs: bool = True) -> None:
        workers, head = self.nodes[1:], self.nodes[:1]
        for node in workers:  # all workers told at once (each drains for a few seconds), the head last
            node.send()
        for node in workers:
            node.stop()
        for node in head:  # nothing left to drain: its GCS took the whole 10 s to exit on SIGTERM
            node.stop(timeout=3.0)
        if remove_logs:
            shutil.rmtree(self.temp_dir, ignore_errors=True)

    def node_ids(self) -> dict[str, str]:
        """Ray node id -> the custom resource that names it (the names given to add_worker / head_resources)."""
        out = subprocess.run([_ray(), "list", "nodes", "--address", self.address, "--format", "json", "--detail",
                              "--limit", "1000"], capture_output=True, text=True, env=self.env, timeout=60)
        nodes = json.loads(out.stdout[out.stdout.index("["):])
        return {n["node_id"]: next((r for r in n.get("resources_total", {}) if r.startswith(("head", "worker"))),
                                   "?") for n in nodes}

    def actors(self, class_name: str) -> list[dict]:
        """Every actor of a class, dead ones included (Ray's state API keeps them for a while)."""
        out = subprocess.run([_ray(), "list", "actors", "--address", self.address, "--format", "json", "--detail",
                              "--limit", "10000", "--filter", f"class_name={class_name}"],
                             capture_output=True, text=True, env=self.env, timeout=60)
        return json.loads(out.stdout[out.stdout.index("["):]) if "[" in out.stdout else []

    def leftovers(self) -> list[int]:
        return [pid for node in self.nodes for pid in node.pids()]


def _ray() -> str:
    here = Path(sys.executable).with_name("ray")
    return str(here) if here.exists() else "ray"


def _start(cluster: LocalCluster, name: str, extra: list[str], num_cpus: float, resources: dict | None,
           reserved: tuple[int, ...] = ()) -> Node:
    """`reserved`: ports this node takes in `extra` (the head's GCS, dashboard, client server)."""
    log = cluster.folder / f"{name}.log"
    distinct = distinct_ports(6, {*reserved, *(port for node in cluster.nodes for port in node.ports)})
    ports = {
        "--node-manager-port": distinct[0], "--object-manager-port": distinct[1],
        "--dashboard-agent-listen-port": distinct[2], "--dashboard-agent-grpc-port": distinct[3],
        "--metrics-export-port": distinct[4], "--runtime-env-agent-port": distinct[5],
    }
    # A private range of worker ports per node, below the kernel's ephemeral range (32768-60999) that free_port()
    # draws from: an agent port drawn inside a worker range made a node refuse to start ("port ... used by other
    # components").
    # Distinct per node of this cluster too.
    taken = {node.worker_lo for node in cluster.nodes}
    block = free_port() % 100
    while 10000 + block * 200 in taken:
        block = (block + 1) % 100
    worker_lo = 10000 + block * 200
    cmd = [_ray(), "start", "--block", "--node-ip-address", "127.0.0.1", "--num-cpus", str(num_cpus),
           "--resources", json.dumps(resources or {}), "--min-worker-port", str(worker_lo),
           "--max-worker-port", str(worker_lo + 199), "--disable-usage-stats", *extra]
    for flag, port in ports.items():
        cmd += [flag, str(port)]
    # RAY_ADDRESS in the nodes' environment: Ray Train's placement-group cleaner (an actor) otherwise stops with
    # "Found multiple active Ray instances" when other Ray clusters run on the same host.
    env = {**cluster.env, "RAY_ADDRESS": cluster.address}
    proc = subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)  # its own process group: stop() kills exactly this node
    return Node(name, proc, log, worker_lo, (*distinct, *reserved))


def start_local_cluster(folder: Path, head_cpus: float = 1, head_resources: dict | None = None,
                        env: dict[str, str] | None = None, timeout: float = 180, dashboard: bool = True) -> LocalCluster:
    """Start a head node; add workers with `cluster.add_worker`. Call `cluster.stop()` in a finally block."""
    folder = Path(folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    token = folder / "auth_token"
    if not token.exists():
        token.write_text(secrets.token_hex(32))
        token.chmod(0o600)
    port, dashboard_port, client_port = distinct_ports(3)
    env = {**(env or os.environ), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
    env.pop("RAY_ADDRESS", None)
    # Short and unique: Ray's socket paths under it must stay below the 107-byte Unix socket limit.
    temp_dir = Path("/tmp") / f"ray_tc_{port}"
    cluster = LocalCluster(folder, f"127.0.0.1:{port}", env, f"http://127.0.0.1:{dashboard_port}", temp_dir)
    head = _start(cluster, "head", [
        "--head", "--port", str(port), "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard_port),
        "--ray-client-server-port", str(client_port), "--temp-dir", str(temp_dir),
        *([] if dashboard else ["--include-dashboard=false"]),
    ], head_cpus, head_resources, reserved=(port, dashboard_port, client_port))
    cluster.nodes.append(head)
    deadline = time.monotonic() + timeout
    while head.proc.poll() is None and not head.started() and time.monotonic() < deadline:
        time.sleep(0.2)  # its log first: `ray status` is a ~2 s CLI start per try
    try:
        cluster.wait_nodes(1, max(deadline - time.monotonic(), 1.0))
    except BaseException:
        cluster.stop()
        raise
    return cluster


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python tests/helpers/ray_cluster.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--folder", type=Path, default=Path("local_cluster"), help="logs and the cluster's token")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--cpus", type=float, default=1, help="CPUs per node")
    args = p.parse_args(argv)
    cluster = start_local_cluster(args.folder, args.cpus)
    try:
        for i in range(args.workers):
            cluster.add_worker(f"worker{i + 1}", args.cpus, {f"worker{i + 1}": 1})
        print(f"address {cluster.address}; dashboard {cluster.dashboard}\n"
              f"export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH={cluster.env['RAY_AUTH_TOKEN_PATH']}\n"
              f"python -m tune_ct.search --address {cluster.address} ...   (Ctrl-C stops the cluster)", flush=True)
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    finally:
        cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
