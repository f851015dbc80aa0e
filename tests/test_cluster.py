"""The shard job on a real two-node Ray cluster on this machine, as deployed: a head
(`ray start --head`, the job API on) and a second node (`ray start --address`), each a
process group of its own that a test can take away with SIGKILL, as a machine that dies.
Every run is compared byte for byte with the embedded single-node run of the same manifest
(`shard_dataset` in conftest.py: eight good clips, three bad files).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from cvpipe.cli import main as cli
from cvpipe.shards.cluster import HEAD_LOST_STATUS
from cvpipe.shards.job import FAULT_STALL_ON_NODE_ENV, run_job
from cvpipe.shards.output import FAULT_MARKER, RECORDS_DIR, file_sha256

pytest.importorskip("ray")

SHARD_SIZE = 2
TIMEOUT = 240   # seconds for a job; a hang fails here
BIN = Path(sys.executable).parent   # the ray and cvpipe commands of this environment


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(condition: Callable[[], object], what: str, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout:.0f} s for {what}")
        time.sleep(0.5)


class TwoNodes:
    """A head and a second node with one CPU each, on loopback ports nobody else uses.

    Args:
        stall_second: the second node's tasks stall after their first sample
            (FAULT_STALL_ON_NODE_ENV), so a test can take it away while they run.
    """

    def __init__(self, stall_second: bool = False) -> None:
        # Ray's socket paths must fit in 107 bytes: a short folder, not pytest's tmp_path.
        self.root = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
        self.port, self.dashboard_port = _free_port(), _free_port()
        self.env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "RAY_AUTH_MODE": "disabled",
                    # A dead node is noticed in a few seconds, not Ray's default of about 15.
                    "RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "3"}
        self.head = self._start("head", ["--head", "--port", str(self.port), "--include-dashboard", "true",
                                         "--dashboard-host", "127.0.0.1", "--dashboard-port", str(self.dashboard_port),
                                         "--temp-dir", str(self.root), "--disable-usage-stats"])
        _wait_for(self._head_answers, "the head's GCS")
        self.second = self._start("second", ["--address", self.address],
                                  {FAULT_STALL_ON_NODE_ENV: "1"} if stall_second else {})
        _wait_for(lambda: self.alive_nodes() == 2, "two alive nodes")

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def _start(self, name: str, args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        # Each node's agents get ports of their own: Ray's fixed defaults would collide on one machine.
        ports = [arg for option in ("--dashboard-agent-listen-port", "--dashboard-agent-grpc-port",
                                    "--runtime-env-agent-port", "--metrics-export-port")
                 for arg in (option, str(_free_port()))]
        log = open(self.root / f"{name}.log", "w")
        return subprocess.Popen([str(BIN / "ray"), "start", "--block", "--num-cpus", "1", "--node-ip-address",
                                 "127.0.0.1", *ports, *args], env={**self.env, **(env or {})}, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)

    def _head_answers(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            return True
        except OSError:
            return False

    def alive_nodes(self) -> int:
        status = subprocess.run([str(BIN / "ray"), "status", "--address", self.address], env=self.env,
                                capture_output=True, text=True).stdout
        active = status.partition("Active:")[2].partition("Pending:")[0]
        return len(re.findall(r"^\s*1 node_", active, re.MULTILINE))

    def submit(self, entrypoint: list[str]) -> subprocess.CompletedProcess:
        """`ray job submit`, waiting for the job to end. The head's job agent starts a few
        seconds after its GCS; until then a submission is refused, and nothing runs."""
        deadline = time.monotonic() + 60
        while True:
            job = subprocess.run([str(BIN / "ray"), "job", "submit", "--address", self.dashboard, "--", *entrypoint],
                                 env=self.env, capture_output=True, text=True, timeout=TIMEOUT)
            if "No available agent to submit job" not in job.stderr or time.monotonic() > deadline:
                return job
            time.sleep(1)

    @staticmethod
    def kill(node: subprocess.Popen) -> None:
        """SIGKILL to every process of the node (`ray start --block` and all it started)."""
        try:
            os.killpg(node.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        node.wait()

    def close(self) -> None:
        for node in (self.second, self.head):
            self.kill(node)
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def two_nodes():
    cluster = TwoNodes()
    yield cluster
    cluster.close()


@pytest.fixture
def two_nodes_second_stalls():
    cluster = TwoNodes(stall_second=True)
    yield cluster
    cluster.close()


@pytest.fixture(scope="module")
def embedded(ray_cluster, shard_dataset, tmp_path_factory) -> Path:
    """The reference: the same manifest on the session's embedded single-node cluster."""
    out = tmp_path_factory.mktemp("embedded") / "shards"
    run_job(shard_dataset.manifest, out, shard_size=SHARD_SIZE, progress=False)
    return out


def _snapshot(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted([*out.glob("*.tar"), out / "manifest.json"])}


def _records(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((out / RECORDS_DIR).glob("*.json"))]


def _shard_command(manifest: Path, out: Path, *extra: str) -> list[str]:
    return [str(BIN / "cvpipe"), "shard", "--manifest", str(manifest), "--out", str(out),
            "--shard-size", str(SHARD_SIZE), "--no-progress", *extra]


def test_ray_job_submit_on_two_nodes_writes_the_embedded_runs_bytes(two_nodes, shard_dataset, embedded, tmp_path):
    out = tmp_path / "shards"
    job = two_nodes.submit(_shard_command(shard_dataset.manifest, out))
    # The three bad videos are recorded, so cvpipe shard exits 1 and Ray calls the job failed.
    assert "11 (8 stored, 3 failed)" in job.stdout and "verified  OK" in job.stdout, job.stdout + job.stderr
    assert _snapshot(out) == _snapshot(embedded)
    assert len({r["node"] for r in _records(out)}) == 2   # both nodes wrote shards
    assert cli(["verify", str(out)]) == 0


def _stalled(out: Path) -> list[Path]:
    return list(out.glob(f"{FAULT_MARKER}stalled-*"))


def test_a_node_lost_mid_job_costs_only_its_tasks(two_nodes_second_stalls, shard_dataset, embedded, tmp_path):
    cluster, out = two_nodes_second_stalls, tmp_path / "shards"
    driver = subprocess.Popen(_shard_command(shard_dataset.manifest, out, "--ray-address", cluster.address),
                              env=cluster.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: _stalled(out), "a task stalled on the second node")
    cluster.kill(cluster.second)
    stdout, stderr = driver.communicate(timeout=TIMEOUT)
    assert driver.returncode == 1, stdout + stderr   # the bad videos; every other one stored
    assert "11 (8 stored, 3 failed)" in stdout and "verified  OK" in stdout
    assert _snapshot(out) == _snapshot(embedded)
    assert not list(out.glob("*.tmp-*"))
    assert len({r["node"] for r in _records(out)}) == 1   # the head wrote them all, the stalled ones again


def test_the_head_lost_mid_job_stops_the_driver_and_a_run_again_resumes(two_nodes_second_stalls, shard_dataset,
                                                                        embedded, tmp_path, capsys):
    cluster, out = two_nodes_second_stalls, tmp_path / "shards"
    driver = subprocess.Popen(_shard_command(shard_dataset.manifest, out, "--ray-address", cluster.address),
                              env=cluster.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: _stalled(out) and len(_records(out)) >= 2, "finished shards and a stalled one")
    cluster.kill(cluster.head)
    started = time.monotonic()
    stdout, stderr = driver.communicate(timeout=TIMEOUT)
    print(f"the driver exited {time.monotonic() - started:.0f} s after the head went away")
    assert driver.returncode == HEAD_LOST_STATUS, stdout + stderr
    assert re.search(rf"the Ray cluster's head at [\d.]+:{cluster.port} has not answered", stderr), stderr
    assert "run the same command again" in stderr
    # Nothing half-written: every tar there is whole, as its record says.
    records = {r["name"]: r for r in _records(out)}
    assert records and {p.stem for p in out.glob("*.tar")} <= set(records)
    for tar in out.glob("*.tar"):
        assert file_sha256(tar) == records[tar.stem]["sha256"]
    cluster.kill(cluster.second)

    # A run again, here on the embedded cluster, keeps what was finished and builds the rest.
    assert cli(_shard_command(shard_dataset.manifest, out)[1:]) == 1
    assert "kept from an earlier run" in capsys.readouterr().out
    assert _snapshot(out) == _snapshot(embedded)
    assert not list(out.glob("*.tmp-*"))
