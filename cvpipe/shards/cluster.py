"""The shard job's Ray side: starting or joining a cluster, and checking that its workers
can run the job before anything is planned or written.

A worker that imports another cvpipe than the driver's, or one without its compiled
extension (a source tree shadowing the installed package, FFmpeg's libraries missing on a
node), would fail every video it touches. That is the environment's fault, not the
videos', so it stops the job with one message (`EnvironmentProblem`), before any record or
errors list exists, instead of filling the errors list with a thousand copies of it.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cvpipe
from cvpipe.shards.schema import SCHEMA_VERSION

# A worker process starts in a second or two; minutes mean a node that cannot start one.
WORKER_CHECK_TIMEOUT_S = 180.0
# How long the head of a joined cluster may refuse connections before the driver gives up
# (a head restarting on the same port comes back within seconds), and the exit status then.
HEAD_LOST_S = 15.0
HEAD_LOST_STATUS = 3


class EnvironmentProblem(RuntimeError):
    """The cluster cannot run the job, whatever the videos are: fix it and run again."""


def connect(address: str | None, workers: int,
            on_head_lost: Callable[[str], None] | None = None) -> Callable[[], None] | None:
    """Makes sure Ray is initialised; returns how to stop what this call started (None
    when it started nothing).

    None or "local": a new local cluster with `workers` CPUs, dashboard and token auth
    off (REFERENCE.md s.4), whose processes end with this one however it ends (`_REAPER`).
    "auto" or an address: join that cluster, which has its own CPU count; `on_head_lost`
    is called (from a watching thread) once its head has refused connections for
    HEAD_LOST_S. A Ray already initialised in this process (a test's, a Ray job's) is used.
    """
    # Ray is imported where it is used: it takes about a second, and every `cvpipe`
    # subcommand loads this module through the command line's parser.
    import ray

    if ray.is_initialized():
        return None
    if address not in (None, "", "local"):
        _check_reachable(address)
        ray.init(address=address, logging_level=logging.WARNING)
        if on_head_lost is not None:
            _watch_head(ray.get_runtime_context().gcs_address, on_head_lost)
        return ray.shutdown
    if workers < 1:
        raise ValueError(f"--workers {workers} must be at least 1")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    before = _children(os.getpid())
    ray.init(address="local", num_cpus=workers, include_dashboard=False, logging_level=logging.WARNING)
    reaper = subprocess.Popen([sys.executable, "-c", _REAPER, *map(str, sorted(_children(os.getpid()) - before))],
                              stdin=subprocess.PIPE, start_new_session=True)

    def stop() -> None:
        ray.shutdown()
        reaper.stdin.close()   # the reaper then removes whatever Ray left behind
        reaper.wait(timeout=60)

    return stop


def _children(pid: int) -> set[int]:
    """The processes whose parent is `pid` (Linux /proc)."""
    found = set()
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/stat") as f:
                    fields = f.read().rpartition(")")[2].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.add(int(entry.name))
    return found


# The reaper: given the processes the embedded cluster started (its roots), it follows
# their descendants once a second until the driver ends (its stdin closes, however the
# driver ends: return, Ctrl-C, SIGKILL), then kills every one still alive (pid and start
# time both matching, so a reused pid is spared). Ray's own reaper stops the roots, but the
# dashboard and runtime-env agents the raylet starts (~200 MB) outlived a SIGKILLed driver.
# It runs in a session of its own, so the terminal's Ctrl-C reaches the driver, not it.
_REAPER = """
import os, select, signal, sys

def table():
    rows = {}
    for name in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
        except OSError:
            continue
        rows[int(name)] = (int(fields[1]), fields[19])   # parent, start time
    return rows

def follow(rows, known):
    grew = True
    while grew:
        new = {pid: start for pid, (parent, start) in rows.items()
               if parent in known and pid not in known and pid != os.getpid()}
        known.update(new)
        grew = bool(new)

rows = table()
known = {pid: rows[pid][1] for pid in map(int, sys.argv[1:]) if pid in rows}
while not select.select([sys.stdin], [], [], 1.0)[0]:
    rows = table()
    follow(rows, known)
rows = table()
follow(rows, known)
for pid, start in known.items():
    if pid in rows and rows[pid][1] == start:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
"""


def _watch_head(address: str, on_lost: Callable[[str], None], period_s: float = 1.0) -> None:
    """Calls `on_lost(why)` from a daemon thread once the head's GCS at HOST:PORT has
    refused connections for HEAD_LOST_S in a row."""
    host, _, port = address.rpartition(":")

    def watch() -> None:
        answered = time.monotonic()
        while True:
            time.sleep(period_s)
            try:
                socket.create_connection((host, int(port)), timeout=period_s).close()
                answered = time.monotonic()
            except OSError:
                if time.monotonic() - answered >= HEAD_LOST_S:
                    on_lost(f"the Ray cluster's head at {address} has not answered for {HEAD_LOST_S:.0f} s")
                    return

    threading.Thread(target=watch, name="cvpipe-head-watch", daemon=True).start()


def _check_reachable(address: str) -> None:
    """Fails fast for a HOST:PORT nobody answers at (ray.init would retry for minutes)."""
    host, _, port = address.rpartition(":")
    if "://" in address or not host or not port.isdigit():
        return  # "auto", a ray:// client address: Ray reports those itself
    try:
        socket.create_connection((host, int(port)), timeout=10).close()
    except OSError as e:
        raise ConnectionError(f"no Ray cluster answers at {address}: {e}") from None


def worker_environment() -> dict[str, Any]:
    """The cvpipe this process imports: version, schema, where from, and whether its
    compiled extension loads (None) or why not."""
    from cvpipe.extension import load_extension

    try:
        load_extension()
        problem = None
    except ImportError as e:
        problem = str(e)
    return {"version": cvpipe.__version__, "schema_version": SCHEMA_VERSION,
            "package": str(Path(cvpipe.__file__).parent), "python": sys.executable, "problem": problem}


def check_workers(timeout: float = WORKER_CHECK_TIMEOUT_S) -> int:
    """Runs `worker_environment` once on every alive node with CPUs (where shard tasks can
    run) and compares it with the driver's cvpipe; returns the number of nodes checked.

    Raises:
        EnvironmentProblem: naming each node that imports another version, lacks the
            extension, cannot import cvpipe at all, or starts no worker within `timeout`.
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [n for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) > 0]
    if not nodes:
        raise EnvironmentProblem("the Ray cluster has no alive node with CPUs to run shard tasks on")
    # num_cpus=0: the check needs no CPU slot, so it never waits behind other jobs' tasks.
    probe = ray.remote(num_cpus=0, max_retries=0)(worker_environment)
    pending = {probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(): n
               for n in nodes}
    driver = {"version": cvpipe.__version__, "schema_version": SCHEMA_VERSION}
    problems = []
    deadline = time.monotonic() + timeout
    for ref, node in pending.items():
        where = f"node {node.get('NodeManagerAddress', '?')}"
        try:
            env = ray.get(ref, timeout=max(deadline - time.monotonic(), 0.0))
        except ray.exceptions.GetTimeoutError:
            problems.append(f"{where}: no worker started within {timeout:.0f} s")
            continue
        except ray.exceptions.RayError as e:
            problems.append(f"{where}: a worker could not run cvpipe: {last_line(e)}")
            continue
        if env["problem"]:
            problems.append(f"{where}: {env['problem']}")
        elif {k: env[k] for k in driver} != driver:
            problems.append(f"{where}: the workers import cvpipe {env['version']} (shard schema "
                            f"{env['schema_version']}) from {env['package']}, the driver cvpipe {driver['version']} "
                            f"(schema {driver['schema_version']}): install the same cvpipe everywhere")
    if problems:
        raise EnvironmentProblem("the Ray workers cannot run this job (a problem of the environment, not of the "
                                 "videos; nothing was written):\n" + "\n".join(f"  {p}" for p in problems))
    return len(nodes)


def last_line(error: BaseException) -> str:
    """The line of an exception's text that says what went wrong (Ray's end in it)."""
    text = str(error).strip().splitlines()
    return text[-1] if text else repr(error)
