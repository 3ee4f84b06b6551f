"""Synthetic models, `synthetic:<shape>[:<format>]`: random weights in the exact shape of a named Llama, made once and cached.

No real weights of Llama 3.2 1B-3B or 3.1 8B can be downloaded here, but random weights of
the same shape, with the real Llama 3 vocabulary, read exactly the same bytes per token, and
llama.cpp runs the same file. So the bench and the profile can measure at the scale users
run, while the text such a model writes is noise. The F16 file is written by lljx
(`synthetic_gguf`); BF16, Q8_0 and Q4_K_M are that file rewritten by llama.cpp's own
quantizer, as Ollama's files are. Files live in the cache (`synthetic/` under lljx's cache folder),
keyed by shape, format and generator version, and appear there only when complete.
"""

from __future__ import annotations

import ctypes
import fcntl
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from lljx.models.errors import ModelError

PREFIX = "synthetic:"
GENERATOR_VERSION = 1  # bump whenever the bytes a shape produces change
LLAMA3_VOCAB = 128256


@dataclass(frozen=True)
class Shape:
    """The architecture numbers of a named model (from its Hugging Face config.json)."""

    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_head: int
    d_ffn: int
    tied: bool
    rope_factor: float  # Llama 3 RoPE scaling: 32 for 3.2, 8 for 3.1
    vocab_size: int = LLAMA3_VOCAB
    context_length: int = 131072

    @property
    def n_params(self) -> int:
        d, f = self.d_model, self.d_ffn
        attn = 2 * d * self.n_heads * self.d_head + 2 * d * self.n_kv_heads * self.d_head
        layer = attn + 3 * d * f + 2 * d
        return self.vocab_size * d * (1 if self.tied else 2) + self.n_layers * layer + d


SHAPES = {
    "llama-3.2-1b": Shape(2048, 16, 32, 8, 64, 8192, tied=True, rope_factor=32.0),
    "llama-3.2-3b": Shape(3072, 28, 24, 8, 128, 8192, tied=True, rope_factor=32.0),
    "llama-3.1-8b": Shape(4096, 32, 32, 8, 128, 14336, tied=False, rope_factor=8.0),
    # For tests: two of Llama 3.2 1B's sixteen layers with its vocabulary. Every layer splits across devices
    # and processes as the sixteen do, at an eighth of the weights and compile time.
    "llama-3.2-1b-2l": Shape(2048, 2, 32, 8, 64, 8192, tied=True, rope_factor=32.0),
    # For tests: the embedded SmolLM2-135M's heads (9 query / 3 KV, width 576, FFN 1536) in two layers, with
    # Llama 3's vocabulary. Its 3 KV heads split over 2 or 4 devices only by repeating, at a fifteenth of the compile.
    "smollm2-heads-2l": Shape(576, 2, 9, 3, 64, 1536, tied=True, rope_factor=32.0),
    # For tests: Llama 3.2's features at a tiny width, every row a multiple of 256 so K-quants are K-quants.
    "llama-tiny": Shape(256, 2, 4, 2, 64, 768, tied=True, rope_factor=32.0),
}
# Format name -> llama.cpp's file type (None: written by lljx itself).
FORMATS = {
    "f16": None, "bf16": "LLAMA_FTYPE_MOSTLY_BF16", "q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0",
    "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M",
}
DEFAULT_FORMAT = "f16"
NOISE_NOTE = "random weights: its text is noise"


class SyntheticSpecError(ModelError, ValueError):
    """A synthetic spec naming an unknown shape or format."""


class SyntheticBuildError(ModelError):
    """A synthetic model that could not be made (a missing package, the quantizer failing, a full disk)."""


@dataclass(frozen=True)
class SyntheticSpec:
    shape_name: str
    format: str

    @property
    def shape(self) -> Shape:
        return SHAPES[self.shape_name]

    @property
    def canonical(self) -> str:
        """The spec with every part spelled out: synthetic:llama-3.2-1b:f16."""
        return f"{PREFIX}{self.shape_name}:{self.format}"

    @property
    def file_name(self) -> str:
        return f"{self.shape_name}.{self.format}.v{GENERATOR_VERSION}.gguf"


def is_synthetic(spec: str | None) -> bool:
    return spec is not None and spec.strip().lower().startswith(PREFIX)


def parse(spec: str) -> SyntheticSpec:
    """`synthetic:<shape>[:<format>]`, case-insensitive; an unknown part is an error listing the valid ones."""
    body = spec.strip()[len(PREFIX):].lower()
    shape_name, _, fmt = body.partition(":")
    if shape_name not in SHAPES:
        raise SyntheticSpecError(
            f"unknown synthetic shape {shape_name!r} in {spec!r}; expected one of {', '.join(SHAPES)}"
        )
    fmt = fmt or DEFAULT_FORMAT
    if fmt not in FORMATS:
        raise SyntheticSpecError(f"unknown synthetic format {fmt!r} in {spec!r}; expected one of {', '.join(FORMATS)}")
    return SyntheticSpec(shape_name, fmt)


def cache_folder(cache: Path | None = None) -> Path:
    from lljx.bench.cache import cache_dir

    folder = (cache or cache_dir()) / "synthetic"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def cached_path(spec: SyntheticSpec, cache: Path | None = None) -> Path:
    """Where the file is (or will be) kept."""
    return cache_folder(cache) / spec.file_name


def ensure(spec: SyntheticSpec, *, cache: Path | None = None, threads: int | None = None) -> Path:
    """The model file, made now if it is not in the cache yet (F16 first, then quantized from it).

    A lock file keeps two processes from making the same file at once; each file is written
    under a temporary name and renamed into place, so a failure leaves no partial model.
    """
    target = cached_path(spec, cache)
    if target.exists():
        return target
    threads = threads or len(os.sched_getaffinity(0))
    if spec.format == DEFAULT_FORMAT:
        with locked(target):
            if not target.exists():
                build_f16(spec, target, threads)
        return target
    f16 = ensure(SyntheticSpec(spec.shape_name, DEFAULT_FORMAT), cache=cache, threads=threads)
    with locked(target):
        if not target.exists():
            quantize(spec, f16, target, threads)
    return target


@contextmanager
def locked(target: Path) -> Iterator[None]:
    """Holds the target's lock; partial files found under it are a killed writer's and are removed."""
    with open(target.with_name(target.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for stale in target.parent.glob(target.name + ".*.partial"):
            stale.unlink(missing_ok=True)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@contextmanager
def partial_file(target: Path) -> Iterator[Path]:
    """A temporary path beside `target`, renamed onto it when the block succeeds and removed otherwise."""
    partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
    try:
        yield partial
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)


def build_f16(spec: SyntheticSpec, target: Path, threads: int) -> None:
    from lljx.models import synthetic_gguf

    try:
        vocab = synthetic_gguf.llama3_vocab()
        with partial_file(target) as partial:
            synthetic_gguf.write_f16(partial, spec.shape_name, spec.shape, vocab, threads=threads)
    except synthetic_gguf.VocabularyMissing as error:
        raise SyntheticBuildError(str(error)) from None
    except OSError as error:
        raise SyntheticBuildError(f"could not write {target}: {error.strerror or error}") from None


def quantize(spec: SyntheticSpec, source: Path, target: Path, threads: int) -> None:
    """`source` (F16) rewritten at the spec's format by llama.cpp's quantizer."""
    try:
        import llama_cpp  # type: ignore[import-untyped]
    except ImportError:
        raise SyntheticBuildError(
            f"{spec.canonical} is made by llama.cpp's quantizer, which needs llama-cpp-python "
            "(pip install 'lljx[peers]')"
        ) from None
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, FORMATS[spec.format])  # type: ignore[arg-type]
    params.nthread = threads
    # The quantizer logs every tensor through llama-cpp-python's logger; errors still show.
    logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)
    with partial_file(target) as partial:
        rc = llama_cpp.llama_model_quantize(str(source).encode(), str(partial).encode(), ctypes.byref(params))
        if rc != 0 or not partial.exists():
            raise SyntheticBuildError(f"llama.cpp could not quantize {source.name} to {spec.format} (code {rc})")


def resolved(spec: str, *, cache: Path | None = None) -> tuple[SyntheticSpec, Path]:
    """The parsed spec and its file, made if needed."""
    parsed = parse(spec)
    return parsed, ensure(parsed, cache=cache)


def is_synthetic_model(model: object) -> bool:
    """Whether a loaded Model (or ResolvedModel) is a synthetic one."""
    return getattr(model, "origin", None) == "synthetic"
