"""Several processes as one JAX run: jax.distributed set-up, who writes output, and exits that never hang.

Every process runs the same command; process 0 hosts JAX's coordination service and is the
only one whose stdout and files are kept. A process whose peer stops is ended by JAX's
distributed service once the peer misses heartbeats for `peer_timeout` seconds (at once when
the coordinator goes); `lljx.parallel.supervise` turns that into one line. A collective that
fails under a running program raises, and `leave` then exits at once: JAX's own exit would
first wait at a shutdown barrier for a peer that is gone.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, replace
from typing import Any

DEFAULT_PEER_TIMEOUT = 30  # seconds of missed heartbeats before a peer counts as gone
COMMAND_KEY = "lljx/command/"
COORDINATOR_GRACE_S = 1.0
DEFAULT_JOIN_TIMEOUT = 300  # seconds for every process to reach the coordinator, as JAX's default


class ClusterError(ValueError):
    """Options that do not make a cluster, or a cluster that could not start."""


@dataclass(frozen=True)
class Cluster:
    """How this process joins a run of several: explicit coordinates, or the cluster's environment (`detect`)."""

    coordinator: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    detect: bool = False
    peer_timeout: int = DEFAULT_PEER_TIMEOUT
    join_timeout: int = DEFAULT_JOIN_TIMEOUT

    @property
    def wanted(self) -> bool:
        return self.detect or any(v is not None for v in (self.coordinator, self.num_processes, self.process_id))

    def check(self) -> None:
        """One-line errors for options that cannot describe a run."""
        if not self.wanted:
            return
        explicit = [self.coordinator, self.num_processes, self.process_id]
        if not self.detect and None in explicit:
            raise ClusterError(
                "several processes need --coordinator HOST:PORT, --num-processes N and --process-id I together "
                "(or --distributed, to take them from the cluster's environment)"
            )
        if self.coordinator is not None:
            host, _, port = self.coordinator.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ClusterError(f"--coordinator must be HOST:PORT, got {self.coordinator!r}")
        if self.num_processes is not None and self.num_processes < 1:
            raise ClusterError(f"--num-processes must be at least 1, got {self.num_processes}")
        if self.process_id is not None and self.num_processes is not None and not 0 <= self.process_id < self.num_processes:
            raise ClusterError(
                f"--process-id must be in 0..{self.num_processes - 1} for {self.num_processes} processes, got {self.process_id}"
            )
        if self.peer_timeout < 1:
            raise ClusterError(f"--peer-timeout must be at least 1 second, got {self.peer_timeout}")
        if self.join_timeout < 1:
            raise ClusterError(f"--join-timeout must be at least 1 second, got {self.join_timeout}")

    def label(self) -> str:
        """'process 1 of 2' as far as the options say (before JAX knows)."""
        if self.process_id is None or self.num_processes is None:
            return "this process"
        return f"process {self.process_id} of {self.num_processes}"


_STARTED = False


def start(cluster: Cluster) -> Cluster:
    """Join the run (jax.distributed.initialize); gloo carries CPU collectives between processes.

    Returns the cluster with this process's place in it (from the environment with --distributed)."""
    global _STARTED
    import jax

    cluster.check()
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(
            cluster.coordinator, cluster.num_processes, cluster.process_id,
            initialization_timeout=cluster.join_timeout, heartbeat_timeout_seconds=cluster.peer_timeout,
        )
    except Exception as error:  # noqa: BLE001 - JAX raises several kinds; each becomes one line
        raise ClusterError(join_failure(cluster, error)) from None
    _STARTED = True
    keep_stdout_for_python()
    if jax.process_index() != 0:
        sys.stdout = open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115 - lives as long as the process
        if not os.environ.get("LLJX_DEBUG"):
            sys.stderr = ErrorsOnly(sys.stderr)  # type: ignore[assignment]
    return replace(cluster, num_processes=jax.process_count(), process_id=jax.process_index())


def check_same_command(command: dict[str, Any], cluster: Cluster) -> None:
    """Refuse, in one line on every process, a run whose processes were given different commands (`command`:
    the command's name and options, but --process-id): their programs would not match, and a collective
    waiting for a program another process never runs would not return."""
    import jax
    from jax._src import distributed as jax_distributed

    client: Any = jax_distributed.global_state.client  # set by `start`
    me, wait_ms = jax.process_index(), cluster.join_timeout * 1000
    mine = json.dumps(command, sort_keys=True, default=str)
    client.key_value_set(f"{COMMAND_KEY}{me}", mine)
    problem = None
    for other in range(jax.process_count()):
        theirs = client.blocking_key_value_get(f"{COMMAND_KEY}{other}", wait_ms)
        if theirs != mine and problem is None:
            here, there = json.loads(mine), json.loads(theirs)
            differ = ", ".join(f"{name} {here.get(name)!r} here, {there.get(name)!r} there"
                               for name in sorted(set(here) | set(there)) if here.get(name) != there.get(name))
            problem = (f"{cluster.label()} was given a different command from process {other} ({differ}); "
                       "every process of a run must be given the same one")
    # Every process compares before any leaves: the coordination service goes with process 0.
    client.key_value_set(f"{COMMAND_KEY}compared/{me}", "1")
    for other in range(jax.process_count()):
        client.blocking_key_value_get(f"{COMMAND_KEY}compared/{other}", wait_ms)
    if problem is not None:
        raise ClusterError(problem)


def join_failure(cluster: Cluster, error: Exception) -> str:
    """Why jax.distributed.initialize failed, in a line."""
    text = " ".join(str(error).split())
    if cluster.detect and cluster.coordinator is None and "coordinator_address" in text:
        return ("--distributed found no cluster in the environment that jax.distributed detects (Slurm, Open MPI, "
                "TPU, ...); give --coordinator HOST:PORT, --num-processes N and --process-id I instead")
    where = f" at {cluster.coordinator}" if cluster.coordinator else ""
    return f"{cluster.label()} could not join the run{where}: {text[:300]}"


def started() -> bool:
    return _STARTED


def is_writer() -> bool:
    """Whether this process writes output and files: process 0, or a run of one."""
    if not _STARTED:
        return True
    import jax

    return jax.process_index() == 0


def keep_stdout_for_python() -> None:
    """Point file descriptor 1 at stderr and give Python's stdout the real one.

    gloo's C++ code prints its connection notice ('[Gloo] Rank 0 is connected...') on the
    process's stdout, in the middle of the generated text; after this, only what lljx
    writes reaches stdout."""
    sys.stdout.flush()
    real = os.dup(1)
    os.dup2(2, 1)
    old = sys.stdout
    # Line-buffered where the original was (a terminal), so streamed text shows as it comes.
    buffering = 1 if getattr(old, "line_buffering", False) else -1
    sys.stdout = open(real, "w", buffering=buffering, encoding=old.encoding, errors=old.errors)  # noqa: SIM115


def leave(code: int) -> None:
    """Exit now, skipping JAX's shutdown barrier (which would wait on a peer that is gone)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    if code != 0 and _STARTED and is_writer():
        # The coordination service ends with process 0: a moment first, so that the others, most often
        # stopped by the same error (a mesh, a model), print their own line rather than "the coordinator is gone".
        time.sleep(COORDINATOR_GRACE_S)
    os._exit(code)


class ErrorsOnly:
    """A process other than 0 keeps quiet on stderr too (stats, progress), except for its errors."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.pending = ""

    def write(self, text: str) -> int:
        self.pending += text
        *lines, self.pending = self.pending.split("\n")
        for line in lines:
            if line.startswith("lljx: error"):
                self.stream.write(line + "\n")
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)
