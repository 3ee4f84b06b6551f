"""A strict, bounded reader for the GGUF container: key/values and the tensor directory, never tensor data.

gguf.GGUFReader walks every array element in Python (about 2 s for a 49k-token vocabulary)
and trusts the counts it reads, so a hostile header can make it allocate or loop far beyond
the file. This reader checks every count and offset against the file size before acting on
it, so any input fails fast with a ModelFileError, and it decodes a vocabulary in tens of ms.
"""

from __future__ import annotations

import mmap
import os
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, overload

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType

from lljx.models.errors import ModelFileError

MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
MAX_DIMS = 4  # GGML_MAX_DIMS
MAX_NESTING = 2  # arrays of arrays exist in the spec; deeper nesting is only ever an attack
DEFAULT_ALIGNMENT = 32

_SCALARS: dict[int, str] = {
    GGUFValueType.UINT8: "<B",
    GGUFValueType.INT8: "<b",
    GGUFValueType.UINT16: "<H",
    GGUFValueType.INT16: "<h",
    GGUFValueType.UINT32: "<I",
    GGUFValueType.INT32: "<i",
    GGUFValueType.FLOAT32: "<f",
    GGUFValueType.BOOL: "<?",
    GGUFValueType.UINT64: "<Q",
    GGUFValueType.INT64: "<q",
    GGUFValueType.FLOAT64: "<d",
}
_NUMPY = {k: np.dtype(v) for k, v in _SCALARS.items()}
# Smallest encoded size of one element of each type, used to reject counts the file cannot hold.
_MIN_SIZE = {**{k: struct.calcsize(v) for k, v in _SCALARS.items()}, GGUFValueType.STRING: 8, GGUFValueType.ARRAY: 12}


@dataclass(frozen=True)
class TensorInfo:
    """One entry of the tensor directory; `shape` is in ggml order, shape[0] being the contiguous axis."""

    name: str
    ggml_type: GGMLQuantizationType
    shape: tuple[int, ...]
    offset: int  # absolute offset of the data in the file
    n_bytes: int

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def type_name(self) -> str:
        return self.ggml_type.name


@dataclass
class GGUFFile:
    """The parsed header of one GGUF file."""

    path: str
    file_size: int
    version: int
    alignment: int
    data_offset: int
    fields: dict[str, Any] = field(default_factory=dict)
    field_types: dict[str, GGUFValueType] = field(default_factory=dict)
    tensors: dict[str, TensorInfo] = field(default_factory=dict)

    def error(self, message: str) -> ModelFileError:
        return ModelFileError(self.path, message)

    def value(self, key: str, kind: type, default: Any = ...) -> Any:
        """A metadata value of type `kind` (int, float, str); a per-layer array must be uniform.

        Without a default, a missing key is an error; a value of another type always is.
        """
        if key not in self.fields:
            if default is ...:
                raise self.error(f"missing metadata key {key!r}")
            return default
        value = self.fields[key]
        if isinstance(value, np.ndarray) and value.ndim == 1 and value.size and kind is not str:
            # Some architectures give per-layer head counts; every Llama layer has one shape.
            if np.any(value != value[0]):
                raise self.error(f"{key!r} varies per layer ({value.tolist()[:8]}...), which is not supported")
            value = value[0].item()
        if kind is int:
            ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
        elif kind is float:
            ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
        else:
            ok = isinstance(value, kind)
        if not ok:
            raise self.error(f"metadata {key!r} should be {kind.__name__}, got {type(value).__name__}")
        return kind(value)

    def positive(self, key: str, default: Any = ..., *, kind: type = int) -> Any:
        """A size or rate: an int up to 2**24, or a finite float, above zero."""
        value = self.value(key, kind, default)
        limit = 1 << 24 if kind is int else float("inf")
        if not 0 < value < limit:
            raise self.error(f"metadata {key!r} = {value} is out of range")
        return value


class _Cursor:
    """Bounds-checked little-endian reads from a buffer; running off the end is a ModelFileError."""

    def __init__(self, path: str, buf: mmap.mmap, size: int) -> None:
        self.path, self.buf, self.size, self.pos = path, buf, size, 0

    def fail(self, message: str) -> ModelFileError:
        return ModelFileError(self.path, message)

    def need(self, n: int, what: str) -> int:
        if n < 0 or self.pos + n > self.size:
            raise self.fail(f"truncated header: {what} at offset {self.pos} needs {n} bytes, file has {self.size}")
        start = self.pos
        self.pos += n
        return start

    def scalar(self, fmt: str, what: str) -> Any:
        start = self.need(struct.calcsize(fmt), what)
        return struct.unpack_from(fmt, self.buf, start)[0]

    def u32(self, what: str) -> int:
        return int(self.scalar("<I", what))

    def u64(self, what: str) -> int:
        return int(self.scalar("<Q", what))

    def raw_string(self, what: str) -> bytes:
        n = self.u64(f"{what} length")
        start = self.need(n, what)
        return bytes(self.buf[start : start + n])

    def string(self, what: str) -> str:
        return self.raw_string(what).decode("utf-8", errors="replace")

    def count(self, n: int, min_size: int, what: str) -> int:
        # Every element takes at least min_size bytes, so a count the rest of the file
        # cannot hold is rejected before any loop or allocation depends on it.
        if n * min_size > self.size - self.pos:
            raise self.fail(f"{what} {n} is impossible for a file of {self.size} bytes")
        return n


def _value_type(cur: _Cursor, raw: int, what: str) -> GGUFValueType:
    try:
        return GGUFValueType(raw)
    except ValueError:
        raise cur.fail(f"{what} has unknown value type {raw}") from None


def _read_value(cur: _Cursor, vtype: GGUFValueType, key: str, depth: int = 0) -> Any:
    if vtype == GGUFValueType.FLOAT32:
        # The shortest decimal that round-trips in f32: 1e-05, not 9.999999747378752e-06, so
        # configs compare equal to their config.json twins and `show` prints what was written.
        return float(str(np.float32(cur.scalar("<f", key))))
    if vtype in _SCALARS:
        return cur.scalar(_SCALARS[vtype], key)
    if vtype == GGUFValueType.STRING:
        return cur.string(key)
    # ARRAY
    if depth >= MAX_NESTING:
        raise cur.fail(f"key {key!r} nests arrays deeper than {MAX_NESTING}")
    etype = _value_type(cur, cur.u32(f"{key} element type"), key)
    n = cur.count(cur.u64(f"{key} length"), _MIN_SIZE[etype], f"array length of {key!r}:")
    if etype in _NUMPY:
        dt = _NUMPY[etype]
        start = cur.need(n * dt.itemsize, key)
        return np.frombuffer(bytes(cur.buf[start : start + n * dt.itemsize]), dtype=dt)
    if etype == GGUFValueType.STRING:
        if n >= PACKED_MIN and _string_starts is not None:
            return _packed_strings(cur, n, key)
        return _read_strings(cur, n, key)
    return [_read_value(cur, etype, key, depth + 1) for _ in range(n)]


# String arrays this long (vocabularies, merges) stay packed; short ones become lists.
PACKED_MIN = 1024

try:
    from lljx._native import gguf_string_starts as _string_starts
except ImportError:  # the extension is not built: every array is decoded in Python
    _string_starts = None


class GGUFStrings(Sequence[str]):
    """A GGUF string array kept as the file's packed bytes (u64 length, then the bytes, per
    string), each string decoded when read. A Llama 3 vocabulary and its merges are 400,000
    strings; the tokenizer takes the packed bytes, so loading never makes a Python string of each."""

    def __init__(self, packed: bytes, starts: np.ndarray) -> None:
        self.packed = packed
        self._starts = starts

    def __len__(self) -> int:
        return len(self._starts)

    @overload
    def __getitem__(self, index: int) -> str: ...
    @overload
    def __getitem__(self, index: slice) -> list[str]: ...
    def __getitem__(self, index: int | slice) -> str | list[str]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        start = int(self._starts[index])
        length = int.from_bytes(self.packed[start - 8 : start], "little")
        return self.packed[start : start + length].decode("utf-8", errors="replace")

    def __iter__(self) -> Iterator[str]:
        return iter(self.tolist())

    def tolist(self) -> list[str]:
        packed, unpack = self.packed, struct.Struct("<Q").unpack_from
        return [
            packed[start : start + unpack(packed, start - 8)[0]].decode("utf-8", errors="replace")
            for start in self._starts.tolist()
        ]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, GGUFStrings):
            return self.packed == other.packed
        return isinstance(other, Sequence) and not isinstance(other, str) and list(self) == list(other)

    __hash__ = None  # type: ignore[assignment]  # equal to lists, which do not hash


def _packed_strings(cur: _Cursor, n: int, key: str) -> GGUFStrings | list[str]:
    start = cur.pos
    try:
        starts, end = _string_starts(cur.buf, start, n)  # type: ignore[misc]
    except ValueError:
        return _read_strings(cur, n, key)  # runs out of bytes too, with the message naming where
    cur.pos = end
    return GGUFStrings(bytes(cur.buf[start:end]), np.frombuffer(starts, dtype="<u8") - start)


def _read_strings(cur: _Cursor, n: int, key: str) -> list[str]:
    # The hot loop of the whole reader (vocabularies and merges): locals, no method calls.
    buf, size, pos = cur.buf, cur.size, cur.pos
    unpack = struct.Struct("<Q").unpack_from
    out: list[str] = []
    append = out.append
    for _ in range(n):
        if pos + 8 > size:
            cur.pos = pos
            cur.need(8, f"{key} element length")
        (length,) = unpack(buf, pos)
        pos += 8
        if pos + length > size:
            cur.pos = pos
            cur.need(length, f"{key} element")
        append(buf[pos : pos + length].decode("utf-8", errors="replace"))
        pos += length
    cur.pos = pos
    return out


def _read_tensor_info(cur: _Cursor, index: int) -> tuple[str, GGMLQuantizationType, tuple[int, ...], int]:
    try:
        name = cur.raw_string(f"tensor {index} name").decode("utf-8")
    except UnicodeDecodeError:
        raise cur.fail(f"tensor {index} name is not UTF-8") from None
    n_dims = cur.u32(f"tensor {name!r} dimension count")
    if not 1 <= n_dims <= MAX_DIMS:
        raise cur.fail(f"tensor {name!r} has {n_dims} dimensions (1..{MAX_DIMS} allowed)")
    shape = tuple(cur.u64(f"tensor {name!r} shape") for _ in range(n_dims))
    raw_type = cur.u32(f"tensor {name!r} type")
    try:
        ggml_type = GGMLQuantizationType(raw_type)
    except ValueError:
        raise cur.fail(f"tensor {name!r} has unknown type {raw_type}") from None
    offset = cur.u64(f"tensor {name!r} offset")
    return name, ggml_type, shape, offset


def _tensor_bytes(path: str, name: str, ggml_type: GGMLQuantizationType, shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
        if n > 1 << 60:
            raise ModelFileError(path, f"tensor {name!r} shape {list(shape)} is absurdly large")
    block, type_size = GGML_QUANT_SIZES[ggml_type]
    if shape[0] % block:
        raise ModelFileError(
            path, f"tensor {name!r} row length {shape[0]} is not a multiple of the {ggml_type.name} block size {block}"
        )
    return n // block * type_size


def read_gguf_header(path: str | os.PathLike[str]) -> GGUFFile:
    """Parse and validate the header of a GGUF file; raises ModelFileError naming the file on any problem."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                raise ModelFileError(path, "empty file")
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                return _parse(path, buf, size)
    except FileNotFoundError:
        raise ModelFileError(path, "no such file") from None
    except IsADirectoryError:
        raise ModelFileError(path, "is a directory, not a GGUF file") from None
    except OSError as e:
        raise ModelFileError(path, f"cannot read: {e.strerror or e}") from None


def _parse(path: str, buf: mmap.mmap, size: int) -> GGUFFile:
    cur = _Cursor(path, buf, size)
    magic = bytes(buf[:4])
    if magic != MAGIC:
        raise cur.fail(f"not a GGUF file (starts with {magic!r})")
    cur.pos = 4
    version = cur.u32("version")
    if version & 0xFFFF == 0 and version != 0:
        raise cur.fail("big-endian GGUF files are not supported")
    if version not in SUPPORTED_VERSIONS:
        raise cur.fail(f"unsupported GGUF version {version} (supported: {', '.join(map(str, SUPPORTED_VERSIONS))})")
    n_tensors = cur.count(cur.u64("tensor count"), 24, "tensor count")
    n_kv = cur.count(cur.u64("key/value count"), 13, "key/value count")

    gf = GGUFFile(path=path, file_size=size, version=version, alignment=DEFAULT_ALIGNMENT, data_offset=0)
    for i in range(n_kv):
        try:
            key = cur.raw_string(f"key {i}").decode("utf-8")
        except UnicodeDecodeError:
            raise cur.fail(f"key {i} is not UTF-8") from None
        if key in gf.fields:
            raise cur.fail(f"duplicate key {key!r}")
        vtype = _value_type(cur, cur.u32(f"type of {key!r}"), f"key {key!r}")
        gf.fields[key] = _read_value(cur, vtype, key)
        gf.field_types[key] = vtype

    if "general.alignment" in gf.fields:
        align = gf.fields["general.alignment"]
        if gf.field_types["general.alignment"] != GGUFValueType.UINT32 or align <= 0 or align & (align - 1):
            raise cur.fail(f"general.alignment must be a power-of-two uint32, got {align!r}")
        gf.alignment = int(align)

    infos = [_read_tensor_info(cur, i) for i in range(n_tensors)]
    gf.data_offset = -(-cur.pos // gf.alignment) * gf.alignment
    for name, ggml_type, shape, rel in infos:
        if name in gf.tensors:
            raise cur.fail(f"duplicate tensor {name!r}")
        if rel % gf.alignment:
            raise cur.fail(f"tensor {name!r} offset {rel} is not aligned to {gf.alignment}")
        n_bytes = _tensor_bytes(path, name, ggml_type, shape)
        start = gf.data_offset + rel
        if start + n_bytes > size:
            raise cur.fail(
                f"tensor {name!r} data [{start}, {start + n_bytes}) runs past the end of the file ({size} bytes)"
            )
        gf.tensors[name] = TensorInfo(name, ggml_type, shape, start, n_bytes)
    return gf
