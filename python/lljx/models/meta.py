"""Load a Meta Llama 3 checkpoint folder (params.json, consolidated.NN.pth, tokenizer.model) as Meta's code reads it.

Meta's checkpoints keep Q and K rows in the interleaved-pair RoPE layout (like GGUF); they
are re-ordered here for lljx's rotate-half core. A model-parallel checkpoint has one
consolidated.NN.pth per rank, each holding a slice of every projection: column-parallel
weights (wq, wk, wv, w1, w3, output, and the embeddings) are split along their output
rows, row-parallel ones (wo, w2) along their inputs, and norms are repeated. They are
merged back here. The .pth files are read without torch (see torch_archive).
"""

from __future__ import annotations

import os
import re
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from lljx.config import ModelConfig
from lljx.models import quantize
from lljx.models.arrays import aligned_empty, to_device
from lljx.models.dequant import NP_DTYPES, STORED_DTYPES
from lljx.models.errors import ModelFileError
from lljx.models.gguf import interleaved_to_half
from lljx.models.hf_config import read_json
from lljx.models.meta_config import config_from_params, llama3_special_tokens
from lljx.models.model import Model, Origin, ResolvedModel
from lljx.models.torch_archive import Archive, ArchiveError, TensorRef
from lljx.models.vocab import END_OF_TURN_TOKENS, TokenizerFile, build_tokenizer, stop_token_ids
from lljx.params import LayerParams, Params

PARAMS_FILE, TOKENIZER_FILE = "params.json", "tokenizer.model"
_SHARD = re.compile(r"consolidated(?:\.(\d+))?\.pth")
# LayerParams field -> (Meta's name under layers.{i}., the axis model-parallel ranks split it along, RoPE heads)
_LAYER_TENSORS: dict[str, tuple[str, int | None, str | None]] = {
    "attn_norm": ("attention_norm.weight", None, None),
    "wq": ("attention.wq.weight", 0, "n_heads"),
    "wk": ("attention.wk.weight", 0, "n_kv_heads"),
    "wv": ("attention.wv.weight", 0, None),
    "wo": ("attention.wo.weight", 1, None),
    "ffn_norm": ("ffn_norm.weight", None, None),
    "w_gate": ("feed_forward.w1.weight", 0, None),
    "w_up": ("feed_forward.w3.weight", 0, None),
    "w_down": ("feed_forward.w2.weight", 1, None),
}
NORMS = ("attn_norm", "ffn_norm")
IGNORED = ("rope.freqs",)  # Llama 1 and 2 saved their RoPE table; it is recomputed from rope_theta
DTYPE_NAMES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16", "float64": "F64"}


def checkpoints_root() -> Path:
    """Where Meta's `llama model download` puts checkpoints: $LLAMA_STACK_CONFIG_DIR/checkpoints (default ~/.llama)."""
    return Path(os.environ.get("LLAMA_STACK_CONFIG_DIR") or Path.home() / ".llama") / "checkpoints"


def find_checkpoint(name: str, root: Path) -> Path | None:
    """The folder `name` in a checkpoint store, matched without regard to case when that is unambiguous
    (llama-jax's notebooks write Llama3.2-3b-Instruct for Meta's Llama3.2-3B-Instruct)."""
    exact = root / name
    if exact.is_dir():
        return exact
    matches = [p for p in root.iterdir() if p.name.lower() == name.lower() and p.is_dir()] if root.is_dir() else []
    return matches[0] if len(matches) == 1 else None


def shard_files(folder: Path) -> list[Path]:
    """consolidated.00.pth, .01, ... in rank order (or one consolidated.pth); a gap in the numbers is an error."""
    numbered: dict[int, Path] = {}
    for path in folder.iterdir():
        if (m := _SHARD.fullmatch(path.name)) and path.is_file():
            numbered[int(m.group(1)) if m.group(1) is not None else 0] = path
    if not numbered:
        raise ModelFileError(folder, "no consolidated.NN.pth weights")
    count = max(numbered) + 1
    for rank in range(count):
        if rank not in numbered:
            found = f"{len(numbered)} of {count} found"
            raise ModelFileError(folder, f"shard consolidated.{rank:02d}.pth is missing ({found})")
    return [numbered[rank] for rank in range(len(numbered))]


def is_meta_folder(path: Path) -> bool:
    if not (path.is_dir() and (path / PARAMS_FILE).is_file()):
        return False
    return any(_SHARD.fullmatch(p.name) for p in path.iterdir())


def resolved_folder(spec: str, folder: Path, origin: Origin) -> ResolvedModel:
    size = sum(f.stat().st_size for f in shard_files(folder))
    return ResolvedModel(
        name=folder.resolve().name, source=spec, format="meta", path=str(folder), origin=origin, file_size=size
    )


def store_entries(root: Path) -> list[Path]:
    """The checkpoint folders in a Meta checkpoint store, by name."""
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if is_meta_folder(p)), key=lambda p: p.name)


class _Shards:
    """Every rank's archive, with merged shapes and merged reads; every problem is a ModelFileError."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.files = shard_files(folder)
        self.archives: list[Archive] = []
        for path in self.files:
            try:
                self.archives.append(Archive(path))
            except ArchiveError as e:
                raise ModelFileError(path, str(e)) from None
        self.names = [n for n in self.archives[0].tensors if n not in IGNORED]
        for path, archive in zip(self.files[1:], self.archives[1:], strict=True):
            if set(archive.tensors) != set(self.archives[0].tensors):
                odd = sorted(set(archive.tensors) ^ set(self.archives[0].tensors))[0]
                raise ModelFileError(path, f"the shards do not hold the same tensors ({odd!r} is in only some)")

    def refs(self, name: str) -> list[TensorRef]:
        if name not in self.archives[0].tensors:
            raise ModelFileError(self.files[0], f"missing tensor {name!r}, which params.json implies")
        return [archive.tensors[name] for archive in self.archives]

    def shape(self, name: str, axis: int | None) -> tuple[int, ...]:
        """The tensor's shape once its shards are joined along `axis` (None: repeated in every shard)."""
        refs = self.refs(name)
        shapes = [r.shape for r in refs]
        if axis is None or len(refs) == 1:
            if len(set(shapes)) > 1:
                raise ModelFileError(self.files[0], f"{name!r} differs in shape between shards: {shapes}")
            return shapes[0]
        if any(len(s) != 2 or s[1 - axis] != shapes[0][1 - axis] for s in shapes):
            raise ModelFileError(self.files[0], f"the shards of {name!r} do not join along axis {axis}: {shapes}")
        joined = list(shapes[0])
        joined[axis] = sum(s[axis] for s in shapes)
        return tuple(joined)

    def check(self, name: str, axis: int | None, expected: tuple[int, ...]) -> None:
        """Shape (joined), float dtype, and for a repeated tensor (a norm, small) the same values in every shard."""
        got = self.shape(name, axis)
        if got != expected:
            missing = " (is a shard missing?)" if axis is not None and got[axis] < expected[axis] else ""
            raise ModelFileError(
                self.files[0],
                f"{name!r} is {list(got)} in {len(self.files)} shard(s), "
                f"params.json makes it {list(expected)}{missing}",
            )
        dtype = self.refs(name)[0].dtype
        if dtype.name not in DTYPE_NAMES:
            raise ModelFileError(self.files[0], f"{name!r} is {dtype}, not a float tensor")
        if axis is None:
            first = self.values(0, name)
            for rank in range(1, len(self.files)):
                if not np.array_equal(self.values(rank, name), first):
                    raise ModelFileError(
                        self.files[rank], f"{name!r} differs from shard 00's: not shards of one checkpoint"
                    )

    def values(self, rank: int, name: str) -> np.ndarray:
        """One rank's slice of a tensor, mapped from its file."""
        try:
            return self.archives[rank].read(self.refs(name)[rank])
        except ArchiveError as e:
            raise ModelFileError(self.files[rank], f"{name!r}: {e}") from None

    def read(self, name: str, axis: int | None) -> np.ndarray:
        """The whole tensor: the ranks' slices joined along `axis` (None: repeated, so rank 0's)."""
        if axis is None or len(self.files) == 1:
            return self.values(0, name)
        return np.concatenate([self.values(rank, name) for rank in range(len(self.files))], axis=axis)

    def same_tensor(self, a: str, b: str, *, compare_values: bool) -> bool:
        """Whether two names hold the same values: one storage (a tied module), else (if asked) equal bytes."""
        for rank, (ra, rb) in enumerate(zip(self.refs(a), self.refs(b), strict=True)):
            if ra.shape != rb.shape or ra.dtype != rb.dtype:
                return False
            if ra == rb:
                continue
            if not compare_values:
                return False
            bits = f"u{ra.dtype.itemsize}"
            if not np.array_equal(self.values(rank, a).view(bits), self.values(rank, b).view(bits)):
                return False
        return True

    def stored_dtype(self) -> str:
        counts = Counter[str]()
        for name in self.names:
            ref = self.archives[0].tensors[name]
            counts[DTYPE_NAMES.get(ref.dtype.name, ref.dtype.name.upper())] += ref.size
        return counts.most_common(1)[0][0] if counts else "unknown"


def _embedding_axis(shards: _Shards, vocab: int) -> int:
    """Llama 3 splits the embeddings by vocabulary (axis 0); Llama 2's ParallelEmbedding split them by width."""
    first = shards.refs("tok_embeddings.weight")[0].shape
    return 1 if len(shards.files) > 1 and first[0] == vocab else 0


def _expected(c: ModelConfig, vocab_axis: int) -> dict[str, tuple[tuple[int, ...], int | None]]:
    """Every tensor name -> (shape as Meta stores it, [out, in]; the axis its shards join along)."""
    q, kv = c.n_heads * c.d_head, c.n_kv_heads * c.d_head
    layer = {
        "attn_norm": (c.d_model,), "wq": (q, c.d_model), "wk": (kv, c.d_model), "wv": (kv, c.d_model),
        "wo": (c.d_model, q), "ffn_norm": (c.d_model,), "w_gate": (c.d_ffn, c.d_model),
        "w_up": (c.d_ffn, c.d_model), "w_down": (c.d_model, c.d_ffn),
    }  # fmt: skip
    out = {"tok_embeddings.weight": ((c.vocab_size, c.d_model), vocab_axis), "norm.weight": ((c.d_model,), None)}
    if not c.tie_embeddings:
        out["output.weight"] = ((c.vocab_size, c.d_model), 0)
    for i in range(c.n_layers):
        for leaf, (suffix, axis, _) in _LAYER_TENSORS.items():
            out[f"layers.{i}.{suffix}"] = (layer[leaf], axis)
    return out


def _open(folder: Path, dtype: str, *, compare_head: bool) -> tuple[_Shards, ModelConfig, dict[str, Any]]:
    """The shards, checked against params.json (every name and shape) before any weight is read."""
    params = read_json(folder / PARAMS_FILE)
    shards = _Shards(folder)
    # Meta saves the output weight even where it is the embeddings; one copy is enough then.
    tied = "output.weight" not in shards.names or shards.same_tensor(
        "output.weight", "tok_embeddings.weight", compare_values=compare_head
    )
    if dtype == "auto":  # the checkpoint's own float type (Meta's are bf16)
        dtype = STORED_DTYPES.get(shards.stored_dtype(), "f32")
    config = config_from_params(folder / PARAMS_FILE, params, tied=tied, dtype=dtype)
    expected = _expected(config, _embedding_axis(shards, config.vocab_size))
    for name, (shape, axis) in expected.items():
        shards.check(name, axis, shape)
    extra = [n for n in shards.names if n not in expected and not (tied and n == "output.weight")]
    if extra:
        raise ModelFileError(shards.files[0], f"unexpected tensor {extra[0]!r}: params.json describes another model")
    return shards, config, params


def params_from_meta(shards: _Shards, config: ModelConfig) -> Params:
    """Weights at the compute dtype (norms f32), Q/K rows in rotate-half order; int8 projections as Q8_0 blocks."""
    c = config
    dt, f32, int8 = NP_DTYPES[c.dtype], NP_DTYPES["f32"], c.dtype == "int8"
    orders = {
        "n_heads": interleaved_to_half(c.n_heads, c.d_head),
        "n_kv_heads": interleaved_to_half(c.n_kv_heads, c.d_head),
    }
    expected = _expected(c, _embedding_axis(shards, c.vocab_size))

    def read(name: str, dtype: np.dtype, transpose: bool, heads: str | None = None) -> Any:
        rows = shards.read(name, expected[name][1])
        if heads is not None:
            rows = rows[orders[heads]]
        if int8 and transpose:  # [out, in] as stored, which is how Q8_0 blocks run
            return quantize.from_rows(rows)
        values = rows.T if transpose else rows
        out = aligned_empty(values.shape, dtype)
        np.copyto(out, values, casting="unsafe")  # a float rounding, e.g. bf16 -> f32
        return to_device(out)

    jobs = [
        (f"layers.{i}.{suffix}", f32 if leaf in NORMS else dt, axis is not None, heads)
        for i in range(c.n_layers)
        for leaf, (suffix, axis, heads) in _LAYER_TENSORS.items()
    ]
    # The head is kept [d_model, vocab]; a tied model keeps only that, read from the embeddings.
    head = "tok_embeddings.weight" if c.tie_embeddings else "output.weight"
    jobs += [("norm.weight", f32, False, None), (head, dt, True, None)]
    if not c.tie_embeddings:
        jobs.append(("tok_embeddings.weight", dt, False, None))
    for name, _, transpose, _ in jobs:
        if int8 and transpose:  # the projections and the head become Q8_0 blocks along their inputs
            quantize.check_inputs(shards.files[0], name, expected[name][0][1])
    # numpy releases the GIL while it converts, so tensors load in parallel on all cores.
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        arrays = list(pool.map(lambda job: read(*job), jobs))
    n = len(_LAYER_TENSORS)
    layers = tuple(LayerParams(*arrays[i * n : (i + 1) * n]) for i in range(c.n_layers))
    rest = arrays[c.n_layers * n :]
    return Params(embed=None if c.tie_embeddings else rest[2], layers=layers, final_norm=rest[0], head=rest[1])


def tokenizer_file(folder: Path) -> TokenizerFile:
    """tokenizer.model with Meta's names for the special tokens after its ranks (BOS <|begin_of_text|>, added once)."""
    path = folder / TOKENIZER_FILE
    if not path.is_file():
        raise ModelFileError(path, "missing")
    return TokenizerFile(str(path), tiktoken_specials=tuple(llama3_special_tokens()))


def load_meta(resolved: ResolvedModel, dtype: str) -> Model:
    """Read, validate and convert one Meta checkpoint folder into a Model."""
    folder = Path(resolved.path)
    spec = tokenizer_file(folder)
    shards, config, params = _open(folder, dtype, compare_head=True)
    try:
        tokenizer = build_tokenizer(spec)
    except ValueError as e:  # lljx.tokenizer.TokenizerError: not a tiktoken file
        raise ModelFileError(spec.path, str(e)) from None
    if tokenizer.vocab_size != config.vocab_size:
        raise ModelFileError(
            folder / PARAMS_FILE,
            f"vocab_size is {config.vocab_size}, but {TOKENIZER_FILE} with Llama 3's 256 special tokens "
            f"has {tokenizer.vocab_size}",
        )
    specials = {t: i for t in END_OF_TURN_TOKENS if (i := tokenizer.token_to_id(t)) is not None}
    model = Model(
        name=resolved.name,
        source=resolved.source,
        format="meta",
        path=resolved.path,
        config=config,
        params=params_from_meta(shards, config),
        tokenizer_spec=spec,
        chat_template=None,  # Meta's Llama 3 chat format, built in
        bos_token=tokenizer.id_to_token(tokenizer.bos_id),
        eos_token=tokenizer.id_to_token(tokenizer.eos_id),
        stop_token_ids=stop_token_ids([tokenizer.eos_id], specials),
        quantization=shards.stored_dtype(),
        file_size=resolved.file_size,
        metadata=params,
        origin=resolved.origin,
    )
    vars(model)["tokenizer"] = tokenizer  # Model.tokenizer is a cached property: keep the one built here
    return model


def describe_meta(folder: Path) -> tuple[ModelConfig, int, str, int]:
    """(config, parameter count, stored dtype, bytes on disk) from params.json and the pickles; no weight is read.

    An output weight counts as tied only when it shares the embeddings' storage: comparing
    values would read both, which a listing should not.
    """
    shards, config, _ = _open(folder, "f32", compare_head=False)
    return config, config.n_params, shards.stored_dtype(), sum(f.stat().st_size for f in shards.files)
