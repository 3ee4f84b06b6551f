"""The watchdog parent's reading of a child's stderr (log lines as JAX and gloo write them), and cluster options."""

from __future__ import annotations

import io

import pytest

from lljx.parallel.distributed import Cluster, ClusterError
from lljx.parallel.supervise import StderrFilter, why

# Written by a process of two whose peer never reached the coordinator (--join-timeout 5).
JOIN_TIMED_OUT = (
    b"F1201 18:58:11.240740   17231 client.h:80] Terminating process because the JAX distributed service detected "
    b"fatal errors. This most likely indicates that another task died; see the other task logs for more details. "
    b"Disable Python buffering, i.e. `python -u`, to be sure to see all the previous output. absl::Status: "
    b"DEADLINE_EXCEEDED: Deadline Exceeded\n"
    b"RPC: /xla.coordination.CoordinationService/RegisterTask\n"
    b"*** Check failure stack trace: ***\n"
)
INFO = b"I1201 18:58:06.120301   17231 distributed.py:158] Connecting to JAX distributed service on 127.0.0.1:4000\n"
GLOO = b"[Gloo] Rank 0 is connected to 1 peer ranks. Expected number of connected peer ranks is : 1\n"


class Writes:
    """A pipe's read end as the child wrote into it: each read returns one write."""

    def __init__(self, chunks: tuple[bytes, ...]) -> None:
        self.chunks = list(chunks)

    def read1(self, _size: int) -> bytes:
        return self.chunks.pop(0) if self.chunks else b""


def filtered(*writes: bytes) -> tuple[StderrFilter, bytes]:
    """What reaches our stderr from the child's `writes`, and the filter after them."""
    out = io.BytesIO()
    relay = StderrFilter(out)
    relay.pump(Writes(writes))  # type: ignore[arg-type]
    return relay, out.getvalue()


def test_jax_log_lines_and_gloo_notices_are_dropped_and_lljx_lines_pass():
    relay, out = filtered(INFO + b"  a log message's second line\n", GLOO, b"Generating...\n", b"lljx: loaded\n")
    assert out == b"Generating...\nlljx: loaded\n" and not relay.held


def test_a_fatal_log_is_held_back_and_named_in_one_line():
    relay, out = filtered(INFO, b"partial text\n", JOIN_TIMED_OUT)
    assert out == b"partial text\n" and relay.held and not relay.said_error
    assert why(-6, relay.held_text()).startswith("could not join the run: not every process reached the coordinator")


def test_what_a_held_log_passes_on_when_the_child_ends_well():
    relay, out = filtered(b"E1201 18:58:11.240740   17231 x.cc:1] a warning-like error\n", b"more\n")
    assert out == b""
    relay.release()
    assert relay.held == []


def test_the_child_s_own_error_line_is_kept():
    relay, out = filtered(b"lljx: error: process 1 of 2 lost touch with another process of the run\n")
    assert relay.said_error and out.startswith(b"lljx: error: ")


def test_an_ending_with_no_log_names_the_signal_or_code():
    assert why(-9, b"") == "was ended by SIGKILL"
    assert why(3, b"").startswith("failed (exit code 3; LLJX_DEBUG=1 shows the log)")


@pytest.mark.parametrize(("cluster", "message"), [
    (Cluster("127.0.0.1:1", None, 0), "need --coordinator HOST:PORT, --num-processes N and --process-id I together"),
    (Cluster("127.0.0.1", 2, 0), "--coordinator must be HOST:PORT"),
    (Cluster("h:70000", 2, 0), "--coordinator must be HOST:PORT"),
    (Cluster("h:1", 2, -1), "--process-id must be in 0..1"),
    (Cluster("h:1", 2, 0, peer_timeout=0), "--peer-timeout must be at least 1 second"),
    (Cluster("h:1", 2, 0, join_timeout=0), "--join-timeout must be at least 1 second"),
])
def test_options_that_do_not_make_a_cluster(cluster, message):
    with pytest.raises(ClusterError, match=message.replace(".", r"\.")):
        cluster.check()


def test_no_options_are_a_run_of_one_process():
    assert not Cluster().wanted and Cluster().label() == "this process"
    assert Cluster("h:1", 2, 1).label() == "process 1 of 2"


def unhealthy(*tasks: int) -> bytes:
    """What the coordinator's process logs when heartbeats stop (its list has one task id per line)."""
    listed = b"".join(b"%d\n" % task for task in tasks)
    return (b"E1203 18:21:23.235488   14354 coordination_service.cc:1549] [7261676818706345022] Use error polling to "
            b"propagate the following error to all tasks: UNAVAILABLE: The following tasks are unhealthy (stopped "
            b"sending heartbeats):\n" + listed + b"The tasks have crashed. Check the task logs for an earlier error, "
            b"or scheduler events (e.g. preemption, eviction) to debug further.\n"
            b"F1203 18:21:23.237132   14365 client.h:80] Terminating process because the JAX distributed service "
            b"detected fatal errors.\n")


def test_the_peer_that_stopped_sending_heartbeats_is_named_not_the_survivor():
    relay, out = filtered(INFO, unhealthy(1))
    assert out == b"" and why(-6, relay.held_text(), 0).startswith("stopped: process 1 of this run stopped responding")
    # A loaded survivor may be listed beside the peer that died: the peer is the one named.
    assert why(-6, unhealthy(0, 1), 0).startswith("stopped: process 1 of this run stopped responding")
    assert why(-6, unhealthy(0, 2, 3), 0).startswith("stopped: processes 2, 3 of this run stopped responding")
    assert why(-6, unhealthy(1), None).startswith("stopped: process 1 of this run")
    assert why(-6, unhealthy(0), 0).startswith("stopped: JAX's distributed service missed this process's own heartbeats")
