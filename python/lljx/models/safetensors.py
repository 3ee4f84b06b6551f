"""Load a Hugging Face Llama folder: (sharded) *.safetensors weights, plus its config and tokenizer files."""

from __future__ import annotations

import contextlib
from collections import Counter
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np
from safetensors import SafetensorError, safe_open

from lljx.config import ModelConfig
from lljx.models import quantize
from lljx.models.dequant import NP_DTYPES, STORED_DTYPES
from lljx.models.errors import ModelFileError
from lljx.models.hf_config import config_from_hf, read_json
from lljx.models.hf_tokenizer import hf_tokenizer
from lljx.models.model import Model, ResolvedModel
from lljx.params import LayerParams, Params

FLOAT_DTYPES = ("F32", "F16", "BF16", "F64")
ITEM_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}
INDEX_FILE = "model.safetensors.index.json"

# LayerParams field -> (tensor name under model.layers.{i}., stored [out, in] and so transposed?)
_LAYER_TENSORS: dict[str, tuple[str, bool]] = {
    "attn_norm": ("input_layernorm.weight", False),
    "wq": ("self_attn.q_proj.weight", True),
    "wk": ("self_attn.k_proj.weight", True),
    "wv": ("self_attn.v_proj.weight", True),
    "wo": ("self_attn.o_proj.weight", True),
    "ffn_norm": ("post_attention_layernorm.weight", False),
    "w_gate": ("mlp.gate_proj.weight", True),
    "w_up": ("mlp.up_proj.weight", True),
    "w_down": ("mlp.down_proj.weight", True),
}
NORMS = ("attn_norm", "ffn_norm")


def is_hf_folder(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file() and any(path.glob("*.safetensors"))


def shard_files(folder: Path) -> list[Path]:
    """The safetensors files holding the weights: those named by the index if there is one, else all of them."""
    index = folder / INDEX_FILE
    if index.is_file():
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ModelFileError(index, "no weight_map")
        names = sorted({str(v) for v in weight_map.values()})
        for n in names:
            # Shard names are plain file names; anything with a path in it could point outside the folder.
            if "/" in n or "\\" in n or n in (".", "..") or not (folder / n).is_file():
                raise ModelFileError(index, f"shard {n!r} is missing")
        return [folder / n for n in names]
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ModelFileError(folder, "no *.safetensors files")
    return files


class _Shards(contextlib.ExitStack):
    """All shards open at once, with a tensor-name -> shard map; every read error is a ModelFileError."""

    def __init__(self, folder: Path, files: list[Path]) -> None:
        super().__init__()
        self.folder = folder
        self.where: dict[str, tuple[Path, Any]] = {}
        for path in files:
            try:
                handle = self.enter_context(safe_open(str(path), framework="numpy"))
            except (SafetensorError, OSError) as e:
                self.close()
                raise ModelFileError(path, f"not a readable safetensors file: {e}") from None
            for key in handle.keys():
                self.where[key] = (path, handle)

    def info(self, name: str) -> tuple[tuple[int, ...], str]:
        if name not in self.where:
            raise ModelFileError(self.folder, f"missing tensor {name!r}")
        _, handle = self.where[name]
        s = handle.get_slice(name)
        return tuple(s.get_shape()), s.get_dtype()

    def check(self, name: str, shape: tuple[int, ...]) -> None:
        got, dtype = self.info(name)
        path = self.where[name][0]
        if got != shape:
            raise ModelFileError(path, f"tensor {name!r} has shape {list(got)}, expected {list(shape)}")
        if dtype not in FLOAT_DTYPES:
            raise ModelFileError(
                path, f"tensor {name!r} has unsupported dtype {dtype} (supported: {', '.join(FLOAT_DTYPES)})"
            )

    def read(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        self.check(name, shape)
        path, handle = self.where[name]
        try:
            return handle.get_tensor(name)
        except (SafetensorError, OSError) as e:
            raise ModelFileError(path, f"cannot read tensor {name!r}: {e}") from None

    def commonest_dtype(self) -> tuple[int, str]:
        """(total elements, the dtype holding most of them)."""
        total, dtypes = 0, Counter[str]()
        for name in self.where:
            shape, dtype = self.info(name)
            n = int(np.prod(shape, dtype=np.int64))
            total += n
            dtypes[dtype] += n
        return total, dtypes.most_common(1)[0][0] if dtypes else "unknown"

    def dtype_bytes(self) -> dict[str, int]:
        """Bytes stored per dtype, largest first."""
        sizes = Counter[str]()
        for name in self.where:
            shape, dtype = self.info(name)
            sizes[dtype] += int(np.prod(shape, dtype=np.int64)) * ITEM_BYTES.get(dtype, 1)
        return dict(sizes.most_common())


def params_from_hf(folder: Path, config: ModelConfig) -> tuple[Params, str]:
    """Weights at the compute dtype (norms f32), plus the commonest dtype in the files (the "quantization").

    At dtype int8 the projections and the head are Int8Weight (Q8_0 blocks) and the rest is f32.
    """
    c = config
    q, kv = c.n_heads * c.d_head, c.n_kv_heads * c.d_head
    stored = {  # as saved: [out, in]
        "attn_norm": (c.d_model,), "wq": (q, c.d_model), "wk": (kv, c.d_model), "wv": (kv, c.d_model),
        "wo": (c.d_model, q), "ffn_norm": (c.d_model,), "w_gate": (c.d_ffn, c.d_model),
        "w_up": (c.d_ffn, c.d_model), "w_down": (c.d_model, c.d_ffn),
    }  # fmt: skip
    dt, f32 = NP_DTYPES[c.dtype], NP_DTYPES["f32"]
    with _Shards(folder, shard_files(folder)) as shards:
        _, stored_dtype = shards.commonest_dtype()
        # Check every name, shape and dtype before the first big read, so a broken folder fails fast.
        for leaf, (suffix, _) in _LAYER_TENSORS.items():
            for i in range(c.n_layers):
                shards.check(f"model.layers.{i}.{suffix}", stored[leaf])
        shards.check("model.embed_tokens.weight", (c.vocab_size, c.d_model))
        shards.check("model.norm.weight", (c.d_model,))
        if not c.tie_embeddings:
            shards.check("lm_head.weight", (c.vocab_size, c.d_model))
        int8 = c.dtype == "int8"
        if int8:  # the projections (the transposed tensors) and the head, with their input counts
            quantized = [
                (f"model.layers.{i}.{suffix}", stored[leaf][1])
                for leaf, (suffix, transpose) in _LAYER_TENSORS.items() if transpose
                for i in range(c.n_layers)
            ]  # fmt: skip
            quantized.append(("model.embed_tokens.weight" if c.tie_embeddings else "lm_head.weight", c.d_model))
            for name, n_in in quantized:
                quantize.check_inputs(shards.where[name][0], name, n_in)

        def read(name: str, shape: tuple[int, ...], dtype: np.dtype, transpose: bool = False) -> Any:
            w = shards.read(name, shape)
            if int8 and transpose:  # [out, in] as stored, which is how Q8_0 blocks run
                return quantize.from_rows(w)
            return jnp.asarray(np.ascontiguousarray(w.T if transpose else w, dtype=dtype))

        layers = tuple(
            LayerParams(
                **{
                    leaf: read(f"model.layers.{i}.{suffix}", stored[leaf], f32 if leaf in NORMS else dt, transpose)
                    for leaf, (suffix, transpose) in _LAYER_TENSORS.items()
                }
            )  # fmt: skip
            for i in range(c.n_layers)
        )
        final_norm = read("model.norm.weight", (c.d_model,), f32)
        # The head is kept [d_model, vocab]; a tied model keeps only that (the transposed embeddings).
        if c.tie_embeddings:
            embed, head = None, read("model.embed_tokens.weight", (c.vocab_size, c.d_model), dt, transpose=True)
        else:
            embed = read("model.embed_tokens.weight", (c.vocab_size, c.d_model), dt)
            head = read("lm_head.weight", (c.vocab_size, c.d_model), dt, transpose=True)
    return Params(embed=embed, layers=layers, final_norm=final_norm, head=head), stored_dtype


def load_hf(resolved: ResolvedModel, dtype: str) -> Model:
    """Read, validate and convert one HF folder into a Model."""
    folder = Path(resolved.path)
    cfg = read_json(folder / "config.json")
    if dtype == "auto":
        dtype = stored_dtype_of(folder, cfg)
    config = config_from_hf(folder / "config.json", cfg, dtype)
    tok = hf_tokenizer(folder, cfg)
    params, stored_dtype = params_from_hf(folder, config)
    return Model(
        name=resolved.name,
        source=resolved.source,
        format="hf",
        path=resolved.path,
        config=config,
        params=params,
        tokenizer_spec=tok.spec,
        chat_template=tok.chat_template,
        bos_token=tok.bos_token,
        eos_token=tok.eos_token,
        stop_token_ids=tok.stop_token_ids,
        quantization=stored_dtype,
        file_size=resolved.file_size,
        metadata=cfg,
        origin=resolved.origin,
    )


def stored_dtype_of(folder: Path, cfg: dict[str, Any]) -> str:
    """The dtype `--dtype auto` keeps for an HF folder: config.json's torch_dtype, else the shards' commonest."""
    declared = cfg.get("torch_dtype", cfg.get("dtype"))
    if isinstance(declared, str) and declared in STORED_DTYPES:
        return STORED_DTYPES[declared]
    with _Shards(folder, shard_files(folder)) as shards:
        return STORED_DTYPES.get(shards.commonest_dtype()[1], "f32")


def describe_hf(folder: Path) -> tuple[ModelConfig, int, str, int, dict[str, int]]:
    """(config, parameter count, stored dtype, bytes on disk, bytes per dtype) from headers only, for listings."""
    config = config_from_hf(folder / "config.json", read_json(folder / "config.json"))
    files = shard_files(folder)
    with _Shards(folder, files) as shards:
        n_params, dtype = shards.commonest_dtype()
        formats = shards.dtype_bytes()
    return config, n_params, dtype, sum(f.stat().st_size for f in files), formats
