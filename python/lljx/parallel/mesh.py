"""The tensor-parallel mesh: one named axis over N devices, checked against the devices this run can see."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from jax.sharding import Mesh

AXIS = "tp"
FORCE_DEVICES_FLAG = "--xla_force_host_platform_device_count"


class MeshError(ValueError):
    """A mesh that cannot work here: more devices than there are, a split the processes cannot share evenly."""


@dataclass(frozen=True)
class Layout:
    """Where a model runs: a 1-D mesh whose axis `AXIS` splits heads, the FFN and the vocabulary."""

    mesh: Mesh

    @property
    def size(self) -> int:
        return int(self.mesh.devices.size)

    @property
    def devices(self) -> list[Any]:
        return list(self.mesh.devices.flat)

    @property
    def processes(self) -> int:
        return len({d.process_index for d in self.devices})

    def describe(self) -> str:
        """'tp=2 over 2 cpu devices in 1 process', as bench and profile print it."""
        first = self.devices[0]
        plural = "es" if self.processes > 1 else ""
        return f"{AXIS}={self.size} over {self.size} {first.platform} devices in {self.processes} process{plural}"

    def as_dict(self) -> dict[str, Any]:
        """The mesh as runs.json and profile metadata keep it."""
        first = self.devices[0]
        return {
            "axis": AXIS, "tensor_parallel": self.size, "processes": self.processes,
            "platform": first.platform, "device_kind": first.device_kind,
            "devices": [f"{d.platform}:{d.id} (process {d.process_index})" for d in self.devices],
        }


def make_layout(size: int) -> Layout:
    """A mesh over `size` devices, the same number from every process, process 0's first.

    Raises MeshError (one line) for a size this run cannot hold.
    """
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise MeshError(f"--tensor-parallel must be a whole number of devices, at least 1; got {size!r}")
    import jax  # here, not at import: the CLI imports this module before any command needs JAX

    devices = jax.devices()
    processes = jax.process_count()
    if size % processes:
        raise MeshError(
            f"--tensor-parallel {size} cannot be shared evenly by {processes} processes: give a multiple of {processes}"
        )
    per_process = size // processes
    by_process: dict[int, list[Any]] = {}
    for device in devices:
        by_process.setdefault(device.process_index, []).append(device)
    fewest = min(len(local) for local in by_process.values())
    if size > len(devices) or per_process > fewest:
        raise MeshError(too_few_devices(size, devices, processes, fewest))
    chosen = [d for p in sorted(by_process) for d in sorted(by_process[p], key=lambda d: d.id)[:per_process]]
    mesh = jax.make_mesh((size,), (AXIS,), axis_types=(jax.sharding.AxisType.Auto,), devices=chosen)
    return Layout(mesh)


def too_few_devices(size: int, devices: list[Any], processes: int, per_process: int) -> str:
    platform = devices[0].platform
    where = f"this run sees {len(devices)} {platform} device{'s' if len(devices) != 1 else ''}"
    if processes > 1:
        where += f" ({per_process} in the process with fewest, across {processes} processes)"
    message = f"--tensor-parallel {size} needs {size} devices; {where}"
    if platform == "cpu":
        # XLA gives one CPU device per process unless told to split the host.
        per = -(-size // processes)
        message += f"; on CPU, XLA_FLAGS={FORCE_DEVICES_FLAG}={per} splits each process's host into {per}"
    return message
