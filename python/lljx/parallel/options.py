"""The command-line face of lljx.parallel: --tensor-parallel and the multi-process options, shared by
generate, bench, serve and profile, and the set-up they run before the command itself."""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

import click

from lljx.parallel.distributed import DEFAULT_JOIN_TIMEOUT, DEFAULT_PEER_TIMEOUT, Cluster

F = TypeVar("F", bound=Callable[..., Any])

# How a collective with a process that has gone fails on CPU (gloo over TCP).
COLLECTIVE_FAILED = "Gloo"
OPTION_NAMES = ("tensor_parallel", "coordinator", "num_processes", "process_id", "distributed", "peer_timeout",
                "join_timeout")


def mesh_options(command: F) -> F:
    """Add the mesh options to a click command (`mesh_click_options`) and set them up before it runs (`on_mesh`)."""
    return mesh_click_options(on_mesh(command))


def on_mesh(command: F) -> F:
    """Take the mesh options out of the command's arguments and set them up before it runs."""

    @wraps(command)
    def run(*args: Any, **kwargs: Any) -> Any:
        settings = {name: kwargs.pop(name) for name in OPTION_NAMES}
        context = click.get_current_context(silent=True)
        name = context.command_path if context is not None else command.__name__
        same = {"command": name, **kwargs, **{k: v for k, v in settings.items() if k != "process_id"}}
        return run_on_mesh(lambda: command(*args, **kwargs), **settings, same=same)

    return run  # type: ignore[return-value]


def mesh_click_options(command: F) -> F:
    """--tensor-parallel, --coordinator, --num-processes, --process-id, --distributed, --peer-timeout, --join-timeout."""
    options = [
        click.option("--tensor-parallel", "-tp", "tensor_parallel", type=int, default=None,
                     help="Shard the model over N devices (heads, FFN, vocabulary) [default: 1, or every device of "
                          "the run with several processes]. On CPU, XLA_FLAGS=--xla_force_host_platform_device_count=N "
                          "splits a host into N devices."),
        click.option("--coordinator", default=None, metavar="HOST:PORT",
                     help="Run as one of several processes: process 0's address (every process gives the same)."),
        click.option("--num-processes", type=int, default=None, help="How many processes the run has."),
        click.option("--process-id", type=int, default=None, help="This process's index, 0 to N-1; 0 writes the output."),
        click.option("--distributed", is_flag=True,
                     help="Join a run of several processes described by the cluster's environment "
                          "(Slurm, Open MPI, TPU and others that jax.distributed detects)."),
        click.option("--peer-timeout", type=int, default=DEFAULT_PEER_TIMEOUT, show_default=True,
                     help="Seconds without a sign of life before a peer process counts as gone and the run ends."),
        click.option("--join-timeout", type=int, default=DEFAULT_JOIN_TIMEOUT, show_default=True,
                     help="Seconds for every process to reach the coordinator before the run gives up."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def run_on_mesh(body: Callable[[], Any], *, tensor_parallel: int | None, coordinator: str | None,
                num_processes: int | None, process_id: int | None, distributed: bool, peer_timeout: int,
                join_timeout: int = DEFAULT_JOIN_TIMEOUT, same: dict[str, Any] | None = None) -> Any:
    """Set up processes and mesh, then run `body`. A run of several processes is watched by a parent
    (see `supervise`), and a process of one that fails leaves at once, without JAX's shutdown barrier.

    `same`: the command's name and options as every process must be given them, compared once they have
    joined. Put it under `one_line_errors`: a mesh or cluster that cannot work raises a one-line ValueError."""
    from lljx.parallel import distributed as cluster_state
    from lljx.parallel import supervise

    cluster = Cluster(coordinator, num_processes, process_id, distributed, peer_timeout, join_timeout)
    cluster.check()
    if tensor_parallel is not None and tensor_parallel < 1:
        raise click.BadParameter(f"must be at least 1, got {tensor_parallel}", param_hint="--tensor-parallel")
    if cluster.wanted and not supervise.is_child():
        sys.exit(supervise.supervise(sys.argv[1:], cluster.label(), cluster.process_id))
    if not cluster.wanted:
        if tensor_parallel is not None:
            configure(tensor_parallel)
        return body()
    try:
        cluster = cluster_state.start(cluster)
        if same is not None:
            cluster_state.check_same_command(same, cluster)
        configure(tensor_parallel)
        return body()
    except SystemExit as exit_:
        if exit_.code not in (None, 0):
            cluster_state.leave(exit_.code if isinstance(exit_.code, int) else 1)
        raise
    except click.ClickException as error:
        click.echo(f"lljx: error: {error.format_message()}", err=True)
        cluster_state.leave(error.exit_code)
    except BaseException as error:  # noqa: BLE001 - a process of several never hangs on its way out
        message = " ".join(str(error).split()) or type(error).__name__
        if COLLECTIVE_FAILED in message:
            message = f"{cluster.label()} lost touch with another process of the run ({message})"
        click.echo(f"lljx: error: {message}", err=True)
        cluster_state.leave(130 if isinstance(error, KeyboardInterrupt) else 1)


def configure(tensor_parallel: int | None) -> None:
    """The mesh: N devices, or by default every device of the run (one per process on CPU, unless forced)."""
    import jax

    from lljx import parallel

    parallel.configure(tensor_parallel if tensor_parallel is not None else jax.device_count())
