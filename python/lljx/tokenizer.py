"""Tokenizer: text to token ids and back for byte-level BPE vocabularies (Rust core).

One :class:`Tokenizer` type serves a HF ``tokenizer.json``, the vocabulary stored in a
GGUF file, and Meta's tiktoken-format ``tokenizer.model``. Decoding works on the exact
bytes of each token, and :meth:`Tokenizer.stream_decoder` turns generated ids into text
without ever splitting a UTF-8 character.
"""

from __future__ import annotations

import operator
import os
from collections.abc import Iterable, Sequence

from lljx import _native
from lljx._native import TokenizerError

__all__ = ["StreamDecoder", "Tokenizer", "TokenizerError"]


def _ids(ids: Iterable[int]) -> list[int]:
    """Accepts any iterable of integers (lists, tuples, NumPy arrays) as plain ints."""
    if isinstance(ids, (str, bytes)):
        raise TypeError(f"ids must be an iterable of ints, not {type(ids).__name__}")
    try:
        return [operator.index(i) for i in ids]
    except TypeError as e:
        raise TypeError(f"ids must be an iterable of ints: {e}") from None


def _strings(strings: Sequence[str]) -> list[str] | tuple[bytes, int]:
    """A list of str, or a GGUF string array still packed as the file stores it (its bytes and
    count; `lljx.models.gguf_file.GGUFStrings`), which the extension decodes without Python strings."""
    packed = getattr(strings, "packed", None)
    if isinstance(packed, bytes):
        return packed, len(strings)
    return list(strings)


def _check_bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, not {type(value).__name__}")
    return value


class Tokenizer:
    """A byte-level BPE tokenizer.

    Build one with :meth:`from_file` or :meth:`from_gguf_vocab`. Instances are immutable
    and safe to share between threads; encoding and decoding release the GIL.
    """

    __slots__ = ("_native",)

    def __init__(self, native: _native.Tokenizer) -> None:
        """Wraps a native tokenizer; use :meth:`from_file` or :meth:`from_gguf_vocab`."""
        if not isinstance(native, _native.Tokenizer):
            raise TypeError("use Tokenizer.from_file or Tokenizer.from_gguf_vocab")
        self._native = native

    @classmethod
    def from_file(
        cls,
        path: str | os.PathLike[str],
        *,
        bos_token: str | None = None,
        eos_token: str | None = None,
        add_bos: bool | None = None,
        tiktoken_specials: Sequence[str] | None = None,
    ) -> Tokenizer:
        """Loads a HF ``tokenizer.json`` or a tiktoken ``tokenizer.model`` (told apart by content).

        BOS/EOS come from the file where it says (a post-processor template), else from
        well-known token names (``<|begin_of_text|>``, ``<|end_of_text|>``, ``<s>``, ...).
        ``bos_token``/``eos_token`` (token strings, as in ``tokenizer_config.json``) and
        ``add_bos`` override that. A tiktoken file holds only ranks: its special tokens are
        numbered from the number of ranks on, named ``tiktoken_specials`` (default: the
        256 Llama 3 special tokens).

        Raises:
            TokenizerError: the file is missing, unreadable or not a byte-level BPE tokenizer.
        """
        path = os.fspath(path)
        if not isinstance(path, str):
            raise TypeError("path must be a str or os.PathLike[str]")
        for name, value in (("bos_token", bos_token), ("eos_token", eos_token)):
            if value is not None and not isinstance(value, str):
                raise TypeError(f"{name} must be a str or None")
        if add_bos is not None:
            _check_bool("add_bos", add_bos)
        specials = None
        if tiktoken_specials is not None:
            if isinstance(tiktoken_specials, str) or not all(isinstance(s, str) for s in tiktoken_specials):
                raise TypeError("tiktoken_specials must be a sequence of str")
            specials = list(tiktoken_specials)
        native = _native.Tokenizer.from_file(
            path, bos=bos_token, eos=eos_token, add_bos=add_bos, tiktoken_specials=specials
        )
        return cls(native)

    @classmethod
    def from_gguf_vocab(
        cls,
        *,
        model: str,
        pre: str,
        tokens: Sequence[str],
        merges: Sequence[str],
        token_types: Sequence[int],
        bos_id: int | None,
        eos_id: int | None,
        add_bos: bool,
    ) -> Tokenizer:
        """Builds the tokenizer a GGUF file describes (its ``tokenizer.ggml.*`` fields).

        ``model`` must be ``"gpt2"`` (byte-level BPE); ``pre`` picks llama.cpp's
        pre-tokenizer (``llama-bpe``, ``qwen2``, ``smollm``, ``gpt2``, ``default`` and their
        aliases). Token types decide special tokens: control (3) and unknown (2) tokens are
        special, matched in text only with ``parse_special``; user-defined (4) tokens are
        always matched; an empty ``token_types`` means all normal.

        Raises:
            TokenizerError: an unsupported model or pre-tokenizer, or inconsistent data.
        """
        for name, value in (("model", model), ("pre", pre)):
            if not isinstance(value, str):
                raise TypeError(f"{name} must be a str")
        for name, seq in (("tokens", tokens), ("merges", merges)):
            if isinstance(seq, str):
                raise TypeError(f"{name} must be a sequence of str, not a str")
        native = _native.Tokenizer.from_gguf_vocab(
            model=model,
            pre=pre,
            tokens=_strings(tokens),
            merges=_strings(merges),
            token_types=_ids(token_types),
            bos_id=None if bos_id is None else operator.index(bos_id),
            eos_id=None if eos_id is None else operator.index(eos_id),
            add_bos=_check_bool("add_bos", add_bos),
        )
        return cls(native)

    def encode(self, text: str, *, add_bos: bool = False, parse_special: bool = False) -> list[int]:
        """Encodes ``text`` to token ids.

        With ``parse_special`` the text of a special token (``<|eot_id|>``) becomes its id;
        without it, such text is encoded as ordinary text (like tiktoken's
        ``encode_ordinary`` or llama.cpp with ``special=False``), which is what untrusted
        text needs. ``add_bos`` prepends :attr:`bos_id`.
        """
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, not {type(text).__name__}")
        return self._native.encode(
            text, add_bos=_check_bool("add_bos", add_bos), parse_special=_check_bool("parse_special", parse_special)
        )

    def decode(self, ids: Iterable[int], *, skip_special: bool = False) -> str:
        """Decodes ids to text; bytes that are not valid UTF-8 become U+FFFD.

        ``skip_special`` leaves out special tokens; otherwise they appear as their text.

        Raises:
            TokenizerError: an id outside the vocabulary.
        """
        return self._native.decode(_ids(ids), skip_special=_check_bool("skip_special", skip_special))

    def token_bytes(self, id: int) -> bytes:
        """The exact bytes token ``id`` stands for (special tokens: their text)."""
        return self._native.token_bytes(operator.index(id))

    def token_to_id(self, token: str) -> int | None:
        """The id of a token written as in the vocabulary (``"Ġthe"``, ``"<|eot_id|>"``)."""
        if not isinstance(token, str):
            raise TypeError(f"token must be a str, not {type(token).__name__}")
        return self._native.token_to_id(token)

    def id_to_token(self, id: int) -> str:
        """The vocabulary spelling of token ``id`` (byte-level, e.g. ``"Ġthe"``)."""
        return self._native.id_to_token(operator.index(id))

    def is_special(self, id: int) -> bool:
        """Whether ``id`` is a special (control) token."""
        return self._native.is_special(operator.index(id))

    @property
    def vocab_size(self) -> int:
        """Number of ids, special tokens included."""
        return self._native.vocab_size

    @property
    def bos_id(self) -> int | None:
        return self._native.bos_id

    @property
    def eos_id(self) -> int | None:
        return self._native.eos_id

    @property
    def add_bos(self) -> bool:
        """Whether the model expects prompts to start with BOS."""
        return self._native.add_bos

    @property
    def special_ids(self) -> frozenset[int]:
        """All special (control) token ids."""
        return frozenset(self._native.special_ids)

    def stream_decoder(self, *, skip_special: bool = False) -> StreamDecoder:
        """A decoder for one stream of generated ids; see :class:`StreamDecoder`."""
        return StreamDecoder(self._native.stream_decoder(skip_special=_check_bool("skip_special", skip_special)))

    def __repr__(self) -> str:
        return (
            f"Tokenizer(vocab_size={self.vocab_size}, bos_id={self.bos_id}, "
            f"eos_id={self.eos_id}, add_bos={self.add_bos})"
        )


class StreamDecoder:
    """Turns token ids into text one at a time, never emitting half a UTF-8 character.

    :meth:`push` returns the text a token completes (often ``""`` while a multi-byte
    character is still arriving); :meth:`flush` ends the stream. For valid text the pieces
    concatenate to exactly :meth:`Tokenizer.decode` of all ids. Bytes that can no longer
    become valid UTF-8 are emitted as U+FFFD as soon as that is certain.
    """

    __slots__ = ("_native",)

    def __init__(self, native: _native.StreamDecoder) -> None:
        """Wraps a native decoder; use :meth:`Tokenizer.stream_decoder`."""
        if not isinstance(native, _native.StreamDecoder):
            raise TypeError("use Tokenizer.stream_decoder()")
        self._native = native

    def push(self, id: int) -> str:
        """Adds token ``id``; returns the text that is now complete."""
        return self._native.push(operator.index(id))

    def flush(self) -> str:
        """Ends the stream; an unfinished character becomes U+FFFD. The decoder can be reused."""
        return self._native.flush()
