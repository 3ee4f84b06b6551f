"""Pure JAX math of a Llama decoder: one component per module, each `forward(config, params, ...)`."""
