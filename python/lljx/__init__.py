"""lljx: Llama-family inference in JAX with a Rust tokenizer, built to measure where jax.jit should go."""

from lljx.config import Llama3RopeScaling, ModelConfig
from lljx.params import LayerParams, Params

__version__ = "0.1.0"

__all__ = ["LayerParams", "Llama3RopeScaling", "ModelConfig", "Params", "__version__"]
