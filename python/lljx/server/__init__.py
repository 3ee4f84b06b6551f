"""The Ollama-compatible HTTP API (`lljx serve`): routes, request checks, model pool, JSON-constrained output."""
