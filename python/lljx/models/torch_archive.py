"""Tensors from a PyTorch `torch.save` zip archive, without torch and without running its pickle.

Since PyTorch 1.6 a `.pth` file is a zip archive: `<name>/data.pkl` (a pickle of the object
saved) and one `<name>/data/<key>` record per storage (raw little-endian bytes, stored
uncompressed). The pickle describes each tensor as a call to `torch._utils._rebuild_tensor_v2`
on a storage it names through a persistent id. It is read here by an unpickler that knows
only those names: a tensor rebuild becomes a `TensorRef` (dtype, shape, strides, where the
bytes are), and any other global the pickle names (a function, a class) is refused before
anything is built, so no code from the file ever runs. The bytes are memory-mapped, not read.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import zipfile
from dataclasses import dataclass
from typing import Any

import ml_dtypes
import numpy as np

# torch's storage classes, as the pickle names them, and the numpy dtype of their elements.
STORAGE_DTYPES: dict[str, np.dtype] = {
    "DoubleStorage": np.dtype(np.float64),
    "FloatStorage": np.dtype(np.float32),
    "HalfStorage": np.dtype(np.float16),
    "BFloat16Storage": np.dtype(ml_dtypes.bfloat16),
    "LongStorage": np.dtype(np.int64),
    "IntStorage": np.dtype(np.int32),
    "ShortStorage": np.dtype(np.int16),
    "CharStorage": np.dtype(np.int8),
    "ByteStorage": np.dtype(np.uint8),
    "BoolStorage": np.dtype(np.bool_),
}
# The pickle of a saved state dict is small; a bigger one is not what this reader is for.
MAX_PICKLE_BYTES = 64 << 20
_LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature, then the name and extra-field lengths at offset 26


class ArchiveError(ValueError):
    """The file is not a torch archive of tensors; the message is one line."""


# Slots and frozen: a pickle's BUILD opcode cannot change these after they were checked.
@dataclass(frozen=True, slots=True)
class _StorageType:
    name: str
    dtype: np.dtype


@dataclass(frozen=True, slots=True)
class _Storage:
    key: str
    dtype: np.dtype
    numel: int


@dataclass(frozen=True, slots=True)
class TensorRef:
    """One tensor of an archive, not yet read: `Archive.read` maps its bytes."""

    storage: str  # the record data/<storage>
    dtype: np.dtype
    offset: int  # in elements, into the storage
    shape: tuple[int, ...]
    strides: tuple[int, ...]  # in elements

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


def _end(tensor: TensorRef) -> int:
    """One past the last storage element a non-empty tensor covers."""
    return tensor.offset + sum((n - 1) * s for n, s in zip(tensor.shape, tensor.strides, strict=True)) + 1


def _ints(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, tuple | list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise ArchiveError(f"a tensor's {what} is {value!r}, not a tuple of integers")
    return tuple(value)


def _rebuild_tensor(storage: Any, offset: Any, size: Any, stride: Any, *_ignored: Any) -> TensorRef:
    """What `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks[, metadata])` means."""
    if not isinstance(storage, _Storage):
        raise ArchiveError(f"a tensor is built on {type(storage).__name__}, not on a storage record")
    shape, strides = _ints(size, "shape"), _ints(stride, "strides")
    if not isinstance(offset, int) or offset < 0 or len(shape) != len(strides) or min(shape + strides, default=0) < 0:
        raise ArchiveError(f"a tensor has offset {offset!r}, shape {shape} and strides {strides}, which do not fit")
    extent = offset + sum((n - 1) * s for n, s in zip(shape, strides, strict=True)) + 1 if all(shape) else 0
    if extent > storage.numel:
        raise ArchiveError(f"a tensor reaches element {extent} of a storage of {storage.numel}")
    return TensorRef(storage.key, storage.dtype, offset, shape, strides)


def _rebuild_parameter(data: Any, *_ignored: Any) -> Any:
    """`torch._utils._rebuild_parameter(data, requires_grad, hooks)`: an nn.Parameter is its tensor."""
    if not isinstance(data, TensorRef):
        raise ArchiveError(f"a parameter wraps {type(data).__name__}, not a tensor")
    return data


_ALLOWED: dict[tuple[str, str], Any] = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    # Empty hook dicts and the state dict itself; building an OrderedDict runs nothing of the file's.
    ("collections", "OrderedDict"): collections.OrderedDict,
    **{("torch", name): _StorageType(name, dtype) for name, dtype in STORAGE_DTYPES.items()},
}


class _TensorUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the names in _ALLOWED; anything else ends the load."""

    def find_class(self, module: str, name: str) -> Any:
        found = _ALLOWED.get((module, name))
        if found is None:
            raise ArchiveError(f"the pickle names {module}.{name}, which is not a tensor or a storage: refused")
        return found

    def persistent_load(self, pid: Any) -> _Storage:
        # ('storage', storage type, key, location, number of elements), as torch.save writes it
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise ArchiveError(f"the pickle refers to {pid!r}, not to a storage record")
        _, kind, key, _location, numel = pid
        if not isinstance(kind, _StorageType) or not isinstance(key, str) or not isinstance(numel, int) or numel < 0:
            raise ArchiveError(f"malformed storage reference {pid!r}")
        return _Storage(key, kind.dtype, numel)


class Archive:
    """One open torch zip archive: its tensors by name, read on demand (memory-mapped, read-only)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        try:
            with zipfile.ZipFile(self.path) as archive:
                infos = {info.filename: info for info in archive.infolist()}
                pickles = [n for n in infos if n.count("/") == 1 and n.endswith("/data.pkl")]
                if len(pickles) != 1:
                    raise ArchiveError("no <name>/data.pkl record: not an archive written by torch.save")
                self.prefix = pickles[0].removesuffix("data.pkl")
                byteorder = infos.get(self.prefix + "byteorder")
                if byteorder is not None and archive.read(byteorder).strip() not in (b"", b"little"):
                    raise ArchiveError("the tensors are big-endian, which is not supported")
                if infos[pickles[0]].file_size > MAX_PICKLE_BYTES:
                    raise ArchiveError(f"data.pkl is {infos[pickles[0]].file_size} bytes, too big for a state dict")
                data = archive.read(pickles[0])
        except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as e:
            raise ArchiveError(f"not a readable zip archive, so truncated or not saved by torch 1.6+ ({e})") from None
        except OSError as e:
            raise ArchiveError(f"cannot read: {e.strerror or e}") from None
        self._records = infos
        self._maps: dict[tuple[str, np.dtype], np.ndarray] = {}
        self.tensors = self._unpickle(data)
        for tensor in self.tensors.values():  # every record there and long enough, before any is read
            name = f"{self.prefix}data/{tensor.storage}"
            if name not in infos:
                raise ArchiveError(f"the pickle names storage {tensor.storage!r}, but there is no record {name}")
            if tensor.size and _end(tensor) * tensor.dtype.itemsize > infos[name].file_size:
                raise ArchiveError(f"record {name} is {infos[name].file_size} bytes, too short for its tensor")

    @staticmethod
    def _unpickle(data: bytes) -> dict[str, TensorRef]:
        try:
            root = _TensorUnpickler(io.BytesIO(data)).load()
        except ArchiveError:
            raise
        except Exception as e:  # noqa: BLE001  (a malformed pickle fails in many ways; each is one line here)
            raise ArchiveError(f"data.pkl is not a readable pickle ({type(e).__name__}: {e})") from None
        if not isinstance(root, dict):
            raise ArchiveError(f"data.pkl holds a {type(root).__name__}, not a dict of tensors")
        for name, value in root.items():
            if not isinstance(name, str) or not isinstance(value, TensorRef):
                raise ArchiveError(f"data.pkl maps {name!r} to a {type(value).__name__}, not to a tensor")
        return dict(root)

    def read(self, tensor: TensorRef) -> np.ndarray:
        """The tensor's values: a read-only view of the mapped file (strided as saved)."""
        storage = self._storage(tensor.storage, tensor.dtype)
        if tensor.size == 0:
            return np.zeros(tensor.shape, tensor.dtype)
        end = _end(tensor)
        if tensor.offset < 0 or min(tensor.strides) < 0 or end > len(storage):
            raise ArchiveError(f"a tensor reaches element {end} of data/{tensor.storage}, which has {len(storage)}")
        itemsize = tensor.dtype.itemsize
        strides = [s * itemsize for s in tensor.strides]
        return np.lib.stride_tricks.as_strided(storage[tensor.offset :], tensor.shape, strides, writeable=False)

    def _storage(self, key: str, dtype: np.dtype) -> np.ndarray:
        found = self._maps.get((key, dtype))
        if found is None:
            name = f"{self.prefix}data/{key}"
            info = self._records.get(name)
            if info is None:
                raise ArchiveError(f"the pickle names storage {key!r}, but there is no record {name}")
            if info.file_size % dtype.itemsize:
                raise ArchiveError(f"record {name} is {info.file_size} bytes, not a whole number of {dtype} values")
            found = self._maps[(key, dtype)] = self._map(info).view(dtype)
        return found

    def _map(self, info: zipfile.ZipInfo) -> np.ndarray:
        if info.compress_type != zipfile.ZIP_STORED:  # torch.save never compresses, and mapping needs raw bytes
            raise ArchiveError(f"record {info.filename} is compressed, which torch.save never does")
        with open(self.path, "rb") as f:
            f.seek(info.header_offset)
            signature, name_length, extra_length = _LOCAL_HEADER.unpack(f.read(_LOCAL_HEADER.size))
            start = info.header_offset + _LOCAL_HEADER.size + name_length + extra_length
            end = f.seek(0, os.SEEK_END)
        if signature != b"PK\x03\x04" or start + info.file_size > end:
            raise ArchiveError(f"record {info.filename} is cut off: the file is truncated")
        if info.file_size == 0:
            return np.zeros(0, np.uint8)
        return np.memmap(self.path, np.uint8, mode="r", offset=start, shape=(info.file_size,))
