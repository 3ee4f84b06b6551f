"""One process of a multi-process run, watched from a small parent so that every way it ends reads as one line.

When a peer dies, JAX's distributed service ends the others from C++ (a fatal log line, a
stack trace, SIGABRT), and XLA and gloo write their own log lines on stderr. The parent runs
the real command as its child with stdout passed through and stderr filtered: JAX's log lines
are dropped, and once an error-level one appears the rest is held back; if the child then
fails, the held text is replaced by `lljx: error: ...` naming what happened. LLJX_DEBUG=1
passes everything through. The parent imports nothing heavy and forwards SIGTERM and SIGHUP;
the child dies with it (PR_SET_PDEATHSIG), so no orphan keeps a run waiting.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Sequence
from typing import IO

CHILD_ENV = "LLJX_PARALLEL_CHILD"
DEBUG_ENV = "LLJX_DEBUG"
# absl / glog: 'E1201 17:28:49.626077    2001 coordination_service.cc:1520] ...'
LOG_LINE = re.compile(rb"^([IWEF])\d{4} \d\d:\d\d:\d\d\.\d+\s+\d+\s+\S+:\d+\]")
NOISE = (re.compile(rb"^\[Gloo\] Rank \d+ is connected"),)
OURS = b"lljx: "
DISTRIBUTED_FATAL = b"JAX distributed service detected fatal errors"
# 'Task 1 heartbeat timeout', or the service's list: 'unhealthy (stopped sending heartbeats):\n1\n0\nThe tasks ...'
STALLED_TASK = re.compile(rb"Task (\d+) heartbeat timeout")
STALLED_LIST = re.compile(rb"stopped sending heartbeats\):((?:[\s,]*\d+\b)+)")
JOIN_FAILED = b"CoordinationService/RegisterTask"  # the RPC that times out when not every process came
COORDINATOR_GONE = (b"Failed to send RPC to coordination service", b"Socket closed", b"Connection reset by peer")


def is_child() -> bool:
    return os.environ.get(CHILD_ENV) == "1"


def supervise(argv: Sequence[str], label: str, process_id: int | None = None) -> int:
    """Run `lljx <argv>` as a child process; returns the exit code to leave with."""
    env = {**os.environ, CHILD_ENV: "1"}
    child = subprocess.Popen(
        [sys.executable, "-m", "lljx.cli", *argv], stderr=subprocess.PIPE, env=env, preexec_fn=die_with_parent,
    )
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda number, _frame: child.send_signal(number))
    # Ctrl-C reaches the child too (same process group); the parent waits for it to finish.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    assert child.stderr is not None
    relay = StderrFilter(sys.stderr.buffer, raw=bool(os.environ.get(DEBUG_ENV)))
    reader = threading.Thread(target=relay.pump, args=(child.stderr,), daemon=True)
    reader.start()
    code = child.wait()
    reader.join()
    if code == 0:
        relay.release()
        return 0
    if code < 0 or (relay.held and not relay.said_error):
        sys.stderr.buffer.write(f"lljx: error: {label} {why(code, relay.held_text(), process_id)}\n".encode())
        sys.stderr.buffer.flush()
        return 1
    return code


def die_with_parent() -> None:
    """In the child: SIGKILL when the parent goes (Linux), so a killed process takes its worker along."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def stalled_tasks(log: bytes) -> list[int]:
    """The process ids JAX's distributed service says stopped sending heartbeats, in the order named."""
    named = [int(found) for found in STALLED_TASK.findall(log)]
    for listed in STALLED_LIST.findall(log):
        named += [int(number) for number in re.findall(rb"\d+", listed)]
    return list(dict.fromkeys(named))


def why(code: int, log: bytes, process_id: int | None = None) -> str:
    """What ended the child, from its exit and the log it left (`process_id`: the child's own, if known)."""
    stalled = stalled_tasks(log)
    # On a loaded machine the service may list the survivor too: the peer that died is the one to name.
    others = [task for task in stalled if task != process_id]
    if others:
        names = ", ".join(map(str, others))
        subject = f"process {names} of this run" if len(others) == 1 else f"processes {names} of this run"
        return f"stopped: {subject} stopped responding (JAX's distributed service ended the run)"
    if stalled:
        return ("stopped: JAX's distributed service missed this process's own heartbeats (a loaded machine? "
                "a longer --peer-timeout allows more)")
    if DISTRIBUTED_FATAL in log and JOIN_FAILED in log:
        return ("could not join the run: not every process reached the coordinator within --join-timeout "
                "(start every process with the same --coordinator and --num-processes)")
    if DISTRIBUTED_FATAL in log and any(marker in log for marker in COORDINATOR_GONE):
        return "stopped: the coordinator (process 0) is gone (JAX's distributed service ended the run)"
    if DISTRIBUTED_FATAL in log:
        return "stopped: another process of this run failed (JAX's distributed service ended the run)"
    if code < 0:
        name = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else str(-code)
        return f"was ended by {name}"
    return f"failed (exit code {code}; {DEBUG_ENV}=1 shows the log)"


class StderrFilter:
    """Child stderr to ours: lljx's own lines always, JAX's log lines never, the rest until an error is logged."""

    def __init__(self, out: IO[bytes], *, raw: bool = False) -> None:
        self.out = out
        self.raw = raw
        self.held: list[bytes] = []
        self.said_error = False  # the child printed its own one-line error
        self.in_log = False  # inside a multi-line log message that is dropped
        self.dropped: deque[bytes] = deque(maxlen=200)  # recent log lines, for naming what went wrong

    def pump(self, stream: IO[bytes]) -> None:
        # Lines end in \n, progress bars redraw with \r: both pass on as soon as they are whole.
        pending = b""
        while chunk := stream.read1(65536):  # type: ignore[attr-defined]
            pending += chunk
            *whole, pending = re.split(rb"(?<=[\r\n])", pending)
            # A log message's further lines come in the same write as its first: they go with it.
            self.in_log = False
            for line in whole:
                self.line(line)
        if pending:
            self.line(pending)

    def line(self, line: bytes) -> None:
        if self.raw:
            self.write(line)
            return
        log = LOG_LINE.match(line)
        if line.startswith(OURS):
            self.in_log = False
            self.said_error = self.said_error or line.startswith(OURS + b"error:")
            self.write(line)
        elif self.held or (log and log.group(1) in b"EF"):
            self.held.append(line)
        elif log or self.in_log:
            self.in_log = True
            self.dropped.append(line)
        elif not any(pattern.match(line) for pattern in NOISE):
            self.write(line)

    def write(self, line: bytes) -> None:
        self.out.write(line)
        self.out.flush()

    def held_text(self) -> bytes:
        """The log behind a failure: what was held back, after the log lines dropped before it."""
        return b"".join([*self.dropped, *self.held])

    def release(self) -> None:
        """The child ended well after all: what was held was not a failure's log, so it passes."""
        for line in self.held:
            self.write(line)
        self.held.clear()
