"""JIT strategies: where jax.jit goes in the decode pipeline, each a plugin building a Decoder."""
