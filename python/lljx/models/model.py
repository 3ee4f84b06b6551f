"""The two records the loaders hand out: ResolvedModel (where a model is) and Model (a model ready to run)."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal

from lljx.config import ModelConfig
from lljx.models.vocab import TokenizerSpec, build_tokenizer
from lljx.params import Params

Format = Literal["gguf", "hf", "meta"]
# "checkpoints": found by name in Meta's checkpoint store (~/.llama/checkpoints)
Origin = Literal["embedded", "file", "folder", "ollama", "checkpoints", "synthetic"]


@dataclass(frozen=True)
class ResolvedModel:
    """Where a spec points, found without reading weights."""

    name: str  # display name: "smollm2-135m-instruct", "llama3.2:3b", a file stem, a folder name
    source: str  # the spec as the user gave it (the embedded name when none was given)
    format: Format
    path: str  # the GGUF file, or the HF or Meta checkpoint folder
    origin: Origin
    file_size: int  # bytes on disk: the GGUF, or all safetensors or .pth shards
    # From an Ollama manifest: the Go template and the JSON parameters layers, when present.
    ollama_template: str | None = None
    ollama_params: dict[str, Any] = field(default_factory=dict, hash=False)


@dataclass(eq=False)
class Model:
    """Everything needed to run a model: architecture, weights, tokenizer recipe, chat format, stop tokens."""

    name: str
    source: str
    format: Format
    path: str
    config: ModelConfig  # config.dtype is the compute dtype
    # jax arrays at config.dtype, except the RMSNorm weights, kept in f32 (the core norms in f32);
    # at int8 the projections and head are Int8Weight and the rest f32
    params: Params
    tokenizer_spec: TokenizerSpec
    chat_template: str | None  # Jinja source (GGUF tokenizer.chat_template, tokenizer_config.json)
    bos_token: str | None
    eos_token: str | None
    stop_token_ids: tuple[int, ...]  # eos first, then end-of-turn specials (<|eot_id|>, <|im_end|>, ...)
    quantization: str  # "Q4_1", "Q4_K_M", "BF16", "F32"...
    file_size: int
    metadata: dict[str, Any]  # GGUF key/values without the token arrays, config.json (HF) or params.json (Meta)
    origin: Origin = "file"
    ollama_template: str | None = None
    ollama_params: dict[str, Any] = field(default_factory=dict)

    @cached_property
    def tokenizer(self) -> Any:
        """lljx.tokenizer.Tokenizer, built on first use (the vocabulary is large and not every caller needs it)."""
        return build_tokenizer(self.tokenizer_spec)

    @cached_property
    def chat(self) -> Any:
        """lljx.chat.ChatTemplate for `chat_template` (None: the built-in Llama 3 format), compiled on first use."""
        from lljx.chat import ChatTemplate

        return ChatTemplate(self.chat_template, bos_token=self.bos_token or "", eos_token=self.eos_token or "")

    @property
    def n_params(self) -> int:
        return self.config.n_params

    def __repr__(self) -> str:
        # The default repr would print every weight array.
        return (
            f"Model(name={self.name!r}, format={self.format!r}, quantization={self.quantization!r}, "
            f"dtype={self.config.dtype!r}, path={self.path!r})"
        )
