"""Type stubs for the Rust extension; tests/test_native_stubs.py checks them against it."""

import os
from typing import Any, final

__all__ = [
    "TokenizerError",
    "TemplateError",
    "GrammarError",
    "Tokenizer",
    "StreamDecoder",
    "ChatTemplate",
    "TokenLoop",
    "BatchLoop",
    "Grammars",
    "Grammar",
    "matvec_ffi_handler",
    "attend_ffi_handler",
    "int8_dot_kernel_available",
    "columns_ffi_handler",
    "argmax_ffi_handler",
    "rms_norm_ffi_handler",
    "block_matmul_ffi_handler",
    "block_rows_ffi_handler",
    "block_kernel_types",
    "gguf_string_starts",
    "populate_pages",
    "read_bandwidth",
]

class TokenizerError(ValueError):
    """A tokenizer file, vocabulary or token id that cannot be used."""

class TemplateError(ValueError):
    """A chat template that does not compile or fails to render."""

class GrammarError(ValueError):
    """A JSON schema that cannot be compiled into a grammar, or a grammar that failed mid-reply."""

@final
class Tokenizer:
    @staticmethod
    def from_file(
        path: str | os.PathLike[str],
        *,
        bos: str | None = None,
        eos: str | None = None,
        add_bos: bool | None = None,
        tiktoken_specials: list[str] | None = None,
    ) -> Tokenizer: ...
    @staticmethod
    def from_gguf_vocab(
        *,
        model: str,
        pre: str,
        tokens: list[str] | tuple[bytes, int],
        merges: list[str] | tuple[bytes, int],
        token_types: list[int],
        bos_id: int | None,
        eos_id: int | None,
        add_bos: bool,
    ) -> Tokenizer: ...
    def encode(self, text: str, *, add_bos: bool, parse_special: bool) -> list[int]: ...
    def decode(self, ids: list[int], *, skip_special: bool) -> str: ...
    def token_bytes(self, id: int) -> bytes: ...
    def id_to_token(self, id: int) -> str: ...
    def token_to_id(self, token: str) -> int | None: ...
    def is_special(self, id: int) -> bool: ...
    @property
    def vocab_size(self) -> int: ...
    @property
    def bos_id(self) -> int | None: ...
    @property
    def eos_id(self) -> int | None: ...
    @property
    def add_bos(self) -> bool: ...
    @property
    def special_ids(self) -> list[int]: ...
    def stream_decoder(self, *, skip_special: bool) -> StreamDecoder: ...

@final
class StreamDecoder:
    def push(self, id: int) -> str: ...
    def flush(self) -> str: ...

@final
class ChatTemplate:
    def __new__(cls, source: str | None, *, bos_token: str, eos_token: str) -> ChatTemplate: ...
    def render(
        self,
        messages: object,
        *,
        add_generation_prompt: bool,
        extra: dict[str, object],
        utc_offset: int,
    ) -> str: ...

@final
class TokenLoop:
    def __new__(
        cls,
        decoder: object,
        tokenizer: Tokenizer,
        prompt_ids: object,
        plan: object,
        *,
        max_tokens: int,
        stop_ids: list[int],
        stop_strings: list[str],
        settings: object,
        grammar: Grammar | None = None,
    ) -> TokenLoop: ...
    def __iter__(self) -> TokenLoop: ...
    def __next__(self) -> str: ...
    def close(self) -> None: ...
    @property
    def token_ids(self) -> list[int]: ...
    @property
    def stats(self) -> dict[str, Any]: ...

@final
class BatchLoop:
    def __new__(
        cls,
        decoder: object,
        tokenizer: Tokenizer,
        *,
        slots: int,
        mask_words: int,
        step_target_ms: int = 120,
        idle_chunk: int = 256,
        reuse_prompts: bool = False,
        kept_scratches: int = 0,
        gather_ms: int = 0,
    ) -> BatchLoop: ...
    @staticmethod
    def cache_bucket(need: int) -> int: ...
    def submit(
        self,
        id: int,
        prompt_ids: list[int],
        *,
        max_tokens: int,
        stop_ids: list[int],
        stop_strings: list[str],
        key: tuple[int, int],
        temperature: float,
        top_k: int,
        top_p: float,
        min_p: float,
        grammar: Grammar | None = None,
    ) -> None: ...
    def cancel(self, id: int) -> int | None: ...
    def step(self) -> list[tuple[int, str, str, Any]]: ...
    def fail_all(self, message: str) -> list[tuple[int, str, str, Any]]: ...
    @property
    def progressed(self) -> bool: ...
    @property
    def live(self) -> int: ...
    @property
    def in_slots(self) -> int: ...
    @property
    def shape(self) -> tuple[int, int] | None: ...

@final
class Grammars:
    def __new__(
        cls,
        tokenizer: Tokenizer,
        *,
        stop_ids: list[int],
        vocab_size: int,
        max_schema_bytes: int | None = None,
        compile_timeout_ms: int | None = None,
        cache_entries: int | None = None,
    ) -> Grammars: ...
    def compile(self, schema: str) -> tuple[Grammar, int, bool]: ...
    @property
    def mask_words(self) -> int: ...
    @property
    def cached(self) -> int: ...

@final
class Grammar:
    def allowed_after(self, prefix: list[int]) -> list[int]: ...
    def is_complete_after(self, ids: list[int]) -> bool: ...
    @property
    def mask_words(self) -> int: ...

def matvec_ffi_handler() -> object:
    """The XLA FFI handler of the matvec kernel, as the capsule `jax.ffi.register_ffi_target` takes."""

def attend_ffi_handler() -> object:
    """The XLA FFI handler of the decode attention kernel, as `jax.ffi.register_ffi_target` takes it."""

def columns_ffi_handler() -> object:
    """The XLA FFI handler that reads embedding vectors from a head's columns, as `jax.ffi.register_ffi_target` takes it."""

def argmax_ffi_handler() -> object:
    """The XLA FFI handler of greedy sampling's argmax, as `jax.ffi.register_ffi_target` takes it."""

def rms_norm_ffi_handler() -> object:
    """The XLA FFI handler of RMSNorm by rows, as `jax.ffi.register_ffi_target` takes it."""

def block_matmul_ffi_handler() -> object:
    """The XLA FFI handler that multiplies activations by GGUF-format weights, as `jax.ffi.register_ffi_target` takes it."""

def block_rows_ffi_handler() -> object:
    """The XLA FFI handler that dequantizes rows of a GGUF-format table, as `jax.ffi.register_ffi_target` takes it."""

def gguf_string_starts(data: Any, start: int, count: int) -> tuple[bytes, int]: ...
def populate_pages(data: Any) -> bool:
    """Maps in every page of a read-only file mapping, with the GIL released; False where the kernel cannot."""

def block_kernel_types() -> list[int]:
    """The ggml type ids (`gguf.GGMLQuantizationType` values) the block kernels multiply on this CPU;
    tensors of other types need a fallback."""

def int8_dot_kernel_available() -> bool:
    """Whether this CPU runs the int8 dot-product kernel (AVX-512 VNNI) that tiled int8 weights need;
    without it those weights would take a slow portable path, so callers keep the plain layout."""

def read_bandwidth(nbytes: int, threads: int, *, seconds: float = 0.5) -> tuple[float, int, int]:
    """Read bandwidth in GB/s of `threads` threads streaming an `nbytes` buffer for about `seconds`:
    the fastest of many short timed units. Returns (GB/s, bytes read per pass, passes per unit)."""
