"""Load a Llama GGUF file: config from metadata; weights dequantized (or int8), transposed, Q/K re-ordered for rotate-half."""

from __future__ import annotations

import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import jax
import numpy as np
from gguf import LlamaFileType

from lljx.config import ModelConfig
from lljx.models import dequant, gguf_mapped, quantize
from lljx.models.arrays import aligned_empty, to_device
from lljx.models.gguf_file import GGUFFile, GGUFStrings, TensorInfo, read_gguf_header
from lljx.models.model import Model, ResolvedModel
from lljx.models.vocab import gguf_vocab, stop_token_ids
from lljx.params import Q8_BLOCK, Int8Weight, LayerParams, Params

SUPPORTED_ARCHITECTURES = ("llama",)
# Arrays too big to be useful in `show`; everything else in the header is kept as metadata.
TOKEN_ARRAYS = ("tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.merges", "tokenizer.ggml.scores")

# LayerParams field -> (GGUF tensor suffix, stored as [in, out]?, heads to re-order for RoPE)
_LAYER_TENSORS: dict[str, tuple[str, bool, str | None]] = {
    "attn_norm": ("attn_norm.weight", False, None),
    "wq": ("attn_q.weight", True, "n_heads"),
    "wk": ("attn_k.weight", True, "n_kv_heads"),
    "wv": ("attn_v.weight", True, None),
    "wo": ("attn_output.weight", True, None),
    "ffn_norm": ("ffn_norm.weight", False, None),
    "w_gate": ("ffn_gate.weight", True, None),
    "w_up": ("ffn_up.weight", True, None),
    "w_down": ("ffn_down.weight", True, None),
}
NORMS = ("attn_norm", "ffn_norm")


def interleaved_to_half(n_heads: int, d_head: int) -> np.ndarray:
    """Row order that turns llama.cpp's interleaved RoPE pairs (2i, 2i+1) into rotate-half pairs (i, i + d/2).

    Within each head, new row j < d/2 is old row 2j and new row j >= d/2 is old row 2(j - d/2) + 1.
    """
    within = np.concatenate([np.arange(0, d_head, 2), np.arange(1, d_head, 2)])
    return (np.arange(n_heads)[:, None] * d_head + within[None, :]).reshape(-1)


def architecture(gf: GGUFFile) -> str:
    arch = gf.value("general.architecture", str)
    if arch not in SUPPORTED_ARCHITECTURES:
        raise gf.error(f"architecture {arch!r} is not supported (supported: {', '.join(SUPPORTED_ARCHITECTURES)})")
    return arch


def config_from_gguf(gf: GGUFFile, dtype: str = "f32") -> ModelConfig:
    """ModelConfig from `llama.*` metadata plus the shapes of token_embd and rope_freqs."""
    a = architecture(gf) + "."
    if gf.value(a + "expert_count", int, 0) > 0:
        raise gf.error("mixture-of-experts models are not supported")
    d_model = gf.positive(a + "embedding_length")
    n_heads = gf.positive(a + "attention.head_count")
    n_kv_heads = gf.positive(a + "attention.head_count_kv", n_heads)
    d_head = gf.positive(a + "attention.key_length", d_model // n_heads or 1)
    if gf.value(a + "attention.value_length", int, d_head) != d_head:
        raise gf.error("attention.value_length differs from key_length, which is not supported")
    rope_dims = gf.value(a + "rope.dimension_count", int, d_head)
    if rope_dims != d_head:
        raise gf.error(
            f"partial rotary embeddings (rope.dimension_count {rope_dims} < d_head {d_head}) are not supported"
        )
    if n_heads % n_kv_heads or d_head % 2:
        raise gf.error(f"head counts {n_heads}/{n_kv_heads} with d_head {d_head} are not a valid attention shape")

    embd = _tensor(gf, "token_embd.weight")
    vocab = gf.value(a + "vocab_size", int, None)
    if vocab is None:
        tokens = gf.fields.get("tokenizer.ggml.tokens")
        vocab = len(tokens) if isinstance(tokens, (list, GGUFStrings)) and tokens else embd.shape[-1]
    fields = dict(
        vocab_size=vocab,
        d_model=d_model,
        n_layers=gf.positive(a + "block_count"),
        n_heads=n_heads,
        n_kv_heads=n_kv_heads,
        d_head=d_head,
        d_ffn=gf.positive(a + "feed_forward_length"),
        rope_theta=gf.positive(a + "rope.freq_base", 10000.0, kind=float),
        norm_eps=gf.positive(a + "attention.layer_norm_rms_epsilon", kind=float),
        context_length=gf.positive(a + "context_length"),
        tie_embeddings="output.weight" not in gf.tensors,
        rope_freq_factors=_rope_freq_factors(gf, a, d_head),
        dtype=dtype,
    )
    try:
        return ModelConfig(**fields)
    except ValueError as e:  # ModelConfig's own consistency checks
        raise gf.error(str(e)) from None


def _rope_freq_factors(gf: GGUFFile, a: str, d_head: int) -> tuple[float, ...] | None:
    """Per-frequency divisors: Llama 3's rope_freqs tensor, and linear scaling expressed the same way."""
    kind = gf.value(a + "rope.scaling.type", str, "none")
    if kind not in ("none", "linear"):
        raise gf.error(f"RoPE scaling type {kind!r} is not supported")
    factors = np.ones(d_head // 2, dtype=np.float64)
    if kind == "linear":
        # Dividing positions by the factor is the same as dividing every frequency by it.
        factors *= gf.value(a + "rope.scaling.factor", float, 1.0)
    if "rope_freqs.weight" in gf.tensors:
        info = gf.tensors["rope_freqs.weight"]
        if info.shape != (d_head // 2,):
            raise gf.error(f"rope_freqs.weight has shape {list(info.shape)}, expected [{d_head // 2}]")
        with open(gf.path, "rb") as f:
            raw = dequant.read_raw(f, gf.path, info)
        factors *= dequant.decode(raw, info, np.empty(d_head // 2, np.float32))
    if np.all(factors == 1.0):
        return None
    if not np.all(np.isfinite(factors)) or np.any(factors <= 0):
        raise gf.error("RoPE frequency factors must be finite and positive")
    return tuple(float(x) for x in factors)


def _tensor(gf: GGUFFile, name: str, shape: tuple[int, ...] | None = None) -> TensorInfo:
    info = gf.tensors.get(name)
    if info is None:
        raise gf.error(f"missing tensor {name!r}")
    if shape is not None and info.shape != shape:
        raise gf.error(f"tensor {name!r} has shape {list(info.shape)}, expected {list(shape)}")
    if not dequant.is_supported(info.ggml_type):
        raise gf.error(
            f"tensor {name!r} has unsupported type {info.type_name} (supported: {', '.join(dequant.supported_types())})"
        )
    return info


def expected_shapes(c: ModelConfig) -> dict[str, tuple[int, ...]]:
    """ggml-order shapes (contiguous axis first) of one layer's tensors, keyed by LayerParams field."""
    q, kv = c.n_heads * c.d_head, c.n_kv_heads * c.d_head
    return {
        "attn_norm": (c.d_model,),
        "wq": (c.d_model, q),
        "wk": (c.d_model, kv),
        "wv": (c.d_model, kv),
        "wo": (q, c.d_model),
        "ffn_norm": (c.d_model,),
        "w_gate": (c.d_model, c.d_ffn),
        "w_up": (c.d_model, c.d_ffn),
        "w_down": (c.d_ffn, c.d_model),
    }


def params_from_gguf(gf: GGUFFile, config: ModelConfig, *, abstract: bool = False) -> Params:
    """Every weight at the compute dtype (norms in f32), validated against the config before any is read.

    At dtype int8 the projections and the head are Int8Weight (Q8_0 blocks) and the rest is f32.
    `abstract` reads nothing and gives each leaf's jax.ShapeDtypeStruct instead: the same pytree,
    so programs can be compiled while the weights load.
    """
    shapes = expected_shapes(config)
    layer_infos = [
        {leaf: _tensor(gf, f"blk.{i}.{suffix}", shapes[leaf]) for leaf, (suffix, _, _) in _LAYER_TENSORS.items()}
        for i in range(config.n_layers)
    ]
    embd = _tensor(gf, "token_embd.weight", (config.d_model, config.vocab_size))
    norm = _tensor(gf, "output_norm.weight", (config.d_model,))
    head = None if config.tie_embeddings else _tensor(gf, "output.weight", (config.d_model, config.vocab_size))
    if config.dtype == "auto":
        return _mapped_params(gf, config, layer_infos, embd, norm, head, abstract=abstract)
    int8 = config.dtype == "int8"
    dt = dequant.NP_DTYPES[config.dtype]
    f32 = dequant.NP_DTYPES["f32"]
    orders = {
        "n_heads": interleaved_to_half(config.n_heads, config.d_head),
        "n_kv_heads": interleaved_to_half(config.n_kv_heads, config.d_head),
    }

    def read(info: TensorInfo, dtype: np.dtype, transpose: bool, row_order: np.ndarray | None, q8: bool) -> Any:
        shape = info.shape if transpose else tuple(reversed(info.shape))
        if abstract:
            if q8:
                return Int8Weight(
                    jax.ShapeDtypeStruct(shape, np.int8), jax.ShapeDtypeStruct((shape[0] // Q8_BLOCK, shape[1]), np.float32)
                )
            return jax.ShapeDtypeStruct(shape, dtype)
        with open(gf.path, "rb") as f:
            raw = dequant.read_raw(f, gf.path, info)
        if q8:
            return quantize.from_gguf(raw, info, row_order)
        return to_device(dequant.decode(raw, info, aligned_empty(shape, dtype), transpose=transpose, row_order=row_order))

    # (tensor, dtype, transpose to [in, out], row order, as int8): projections are the transposed layer tensors.
    jobs: list[tuple[Any, ...]] = [
        (infos[leaf], f32 if leaf in NORMS else dt, transpose, orders[heads] if heads else None, int8 and transpose)
        for infos in layer_infos
        for leaf, (_, transpose, heads) in _LAYER_TENSORS.items()
    ]
    # The head is kept [d_model, vocab]; a tied model keeps only that, read straight from token_embd.
    jobs += [(norm, f32, False, None, False), (embd if head is None else head, dt, True, None, int8)]
    if head is not None:
        jobs.append((embd, dt, False, None, False))
    for info, _, _, _, q8 in jobs:
        if q8:
            quantize.check_inputs(gf.path, info.name, info.shape[0])
    if abstract:
        arrays = [read(*job) for job in jobs]
        n = len(_LAYER_TENSORS)
        layers = tuple(LayerParams(*arrays[i * n : (i + 1) * n]) for i in range(config.n_layers))
        rest = arrays[config.n_layers * n :]
        return Params(embed=rest[2] if head is not None else None, layers=layers, final_norm=rest[0], head=rest[1])
    # numpy releases the GIL in the decode arithmetic, so tensors decode in parallel on all cores.
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        arrays = list(pool.map(lambda job: read(*job), jobs))
    n = len(_LAYER_TENSORS)
    layers = tuple(LayerParams(*arrays[i * n : (i + 1) * n]) for i in range(config.n_layers))
    rest = arrays[config.n_layers * n :]
    return Params(embed=rest[2] if head is not None else None, layers=layers, final_norm=rest[0], head=rest[1])


def _mapped_params(
    gf: GGUFFile, config: ModelConfig, layer_infos: list[dict[str, TensorInfo]], embd: TensorInfo,
    norm: TensorInfo, head: TensorInfo | None, *, abstract: bool,
) -> Params:
    """Params at dtype auto: every matrix a GGMLWeight in the file's format (see gguf_mapped), norms f32."""
    weight, done = gguf_mapped.weight_reader(gf, abstract=abstract)
    orders = {
        "n_heads": interleaved_to_half(config.n_heads, config.d_head),
        "n_kv_heads": interleaved_to_half(config.n_kv_heads, config.d_head),
    }

    def norm_f32(info: TensorInfo) -> Any:
        if abstract:
            return jax.ShapeDtypeStruct(info.shape, np.float32)
        with open(gf.path, "rb") as f:
            raw = dequant.read_raw(f, gf.path, info)
        return to_device(dequant.decode(raw, info, aligned_empty(info.shape, np.dtype(np.float32))))

    def layer(infos: dict[str, TensorInfo]) -> LayerParams:
        return LayerParams(**{
            leaf: norm_f32(infos[leaf]) if leaf in NORMS else weight(infos[leaf], orders[heads] if heads else None)
            for leaf, (_, _, heads) in _LAYER_TENSORS.items()
        })  # fmt: skip

    layers = tuple(layer(infos) for infos in layer_infos)
    table = weight(embd, None)
    head_weight = table if head is None else weight(head, None)
    done()
    # A tied model multiplies by the embedding table itself: [vocab, d_model] is the head's [out, in].
    return Params(
        embed=None if head is None else table,
        layers=layers,
        final_norm=norm_f32(norm),
        head=head_weight,
    )


def quantization(gf: GGUFFile) -> str:
    """The file type llama.cpp names (Q4_K_M...), else the commonest type among the 2-D weights."""
    ftype = gf.fields.get("general.file_type")
    if isinstance(ftype, int) and not isinstance(ftype, bool):
        try:
            name = LlamaFileType(ftype).name
            if name != "GUESSED":
                return name.removeprefix("MOSTLY_").removeprefix("ALL_")
        except ValueError:
            pass
    counts: Counter[str] = Counter()
    for info in gf.tensors.values():
        if len(info.shape) >= 2:
            counts[info.type_name] += info.n_elements
    return counts.most_common(1)[0][0] if counts else "unknown"


def format_bytes(gf: GGUFFile) -> dict[str, int]:
    """Bytes stored per tensor format, largest first: {"Q4_K": 560_000_000, "Q6_K": ..., "F32": ...}."""
    sizes: Counter[str] = Counter()
    for info in gf.tensors.values():
        sizes[info.type_name] += info.n_bytes
    return dict(sizes.most_common())


def parameter_count(gf: GGUFFile) -> int:
    return sum(t.n_elements for name, t in gf.tensors.items() if name != "rope_freqs.weight")


def metadata(gf: GGUFFile) -> dict[str, Any]:
    """Header key/values for an API `show`: numpy arrays as lists, the token arrays left out."""
    out: dict[str, Any] = {}
    for key, value in gf.fields.items():
        if key in TOKEN_ARRAYS:
            continue
        out[key] = value.tolist() if isinstance(value, np.ndarray) else value
    return out


def load_gguf(resolved: ResolvedModel, dtype: str, *, abstract: bool = False, header: GGUFFile | None = None) -> Model:
    """Read, validate and convert one GGUF file into a Model (`abstract`: weights as shapes only;
    `header`: the file's header already read, e.g. for the shapes-only twin)."""
    gf = header if header is not None else read_gguf_header(resolved.path)
    config = config_from_gguf(gf, dtype)
    vocab, specials = gguf_vocab(gf)
    if len(vocab.tokens) > config.vocab_size:
        raise gf.error(f"{len(vocab.tokens)} tokens for an embedding of {config.vocab_size} rows")
    params = params_from_gguf(gf, config, abstract=abstract)

    def token_text(i: int | None) -> str | None:
        return None if i is None else vocab.tokens[i]

    eot = [gf.fields.get(k) for k in ("tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id")]
    template = gf.fields.get("tokenizer.chat_template")
    return Model(
        name=resolved.name,
        source=resolved.source,
        format="gguf",
        path=resolved.path,
        config=config,
        params=params,
        tokenizer_spec=vocab,
        chat_template=template if isinstance(template, str) else None,
        bos_token=token_text(vocab.bos_id),
        eos_token=token_text(vocab.eos_id),
        stop_token_ids=stop_token_ids([vocab.eos_id, *(i if isinstance(i, int) else None for i in eot)], specials),
        quantization=quantization(gf),
        file_size=os.path.getsize(resolved.path),
        metadata=metadata(gf),
        origin=resolved.origin,
        ollama_template=resolved.ollama_template,
        ollama_params=dict(resolved.ollama_params),
    )
