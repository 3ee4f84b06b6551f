"""The peers lljx is measured against, the same way: llama.cpp in process and any Ollama-API server.

Both run the prompts lljx runs, greedy, with the same token budget, and are timed with
`time.perf_counter_ns` (the monotonic clock the Rust loop uses) around the same streamed
tokens, so their rows mean what lljx's rows mean.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lljx.bench.requantize import GGUF_TYPE, requantized
from lljx.bench.runner import WARMUP_TOKENS, Measurement, Prompt, Readiness
from lljx.generation import Stats, rate

if TYPE_CHECKING:
    from lljx.models import Model

PEERS = ("llama.cpp", "ollama")
DEFAULT_OLLAMA_HOST = "http://127.0.0.1:11434"
# What the embedded model is called in the Ollama library.
EMBEDDED_OLLAMA_NAME = "smollm2:135m"


class Skipped(Exception):
    """A peer that cannot run here; the bench says why and goes on without it."""


def timed_stream(tokens: Any, prompt_tokens: int, budget: int, is_stop: Any) -> Stats:
    """Read streamed token ids the way lljx's loop does: ttft from the call, decode from the first token to the last.

    `tokens` must be a lazy iterator whose work starts on the first `next`, so the clock
    covers prefill. A stop token counts as read (it was computed) but not generated.
    """
    stats = Stats(prompt_tokens=prompt_tokens, stop_reason="length")
    previous = 0
    start = time.perf_counter_ns()
    for token in tokens:
        now = time.perf_counter_ns() - start
        if stats.tokens_read == 0:
            stats.ttft_ns = stats.prefill_ns = now
        stats.token_ns.append(now - previous)
        previous = now
        stats.tokens_read += 1
        stats.decode_ns = now - stats.prefill_ns
        if is_stop(token):
            stats.stop_reason = "stop"
            break
        stats.gen_tokens += 1
        if stats.gen_tokens >= budget:
            break
    stats.total_ns = time.perf_counter_ns() - start
    return stats


class LlamaCppSystem:
    """llama-cpp-python in this process on the model's GGUF: the file as it is at dtype auto (lljx reads its
    formats in place too), else rewritten at the compute precision by llama.cpp's quantizer."""

    name = kind = "llama.cpp"

    def __init__(
        self, model: Model, *, prompts: Sequence[Prompt], warmup: Prompt, max_tokens: int, seed: int, threads: int
    ) -> None:
        try:
            import llama_cpp  # noqa: F401 - only asking whether it is there
        except ImportError:
            raise Skipped("llama-cpp-python not installed") from None
        if model.format != "gguf":
            raise Skipped("the model is not a GGUF file, so llama.cpp cannot read the same weights")
        self.ftype = peer_ftype(model.config.dtype, model.quantization)
        self.source = Path(model.path)
        self.dtype = (self.ftype or model.quantization).lower()
        self.file: Path | None = None  # what llama.cpp loads, known once converted (warm_up)
        self.model = model.name
        self.threads = threads
        self.seed = seed
        self.max_tokens = max_tokens
        self.warmup = warmup
        longest = max(len(p.ids) for p in [*prompts, warmup])
        self.n_ctx = min(math.ceil((longest + max_tokens) / 256) * 256, model.config.context_length)
        self.llm: Any = None

    def warm_up(self) -> Readiness:
        from .llamacpp_load import Llama

        path = self.file = peer_file(self.source, self.ftype)
        start = time.perf_counter()
        self.llm = Llama(
            path, n_ctx=self.n_ctx, n_batch=min(self.n_ctx, 512), n_threads=self.threads,
            n_threads_batch=self.threads, seed=self.seed, verbose=False,
        )
        load_s = time.perf_counter() - start
        self.generate(self.warmup, min(self.max_tokens, WARMUP_TOKENS))
        warmup_s = time.perf_counter() - start
        return Readiness(load_s=load_s, compile_s=warmup_s, warmup_s=warmup_s)

    def generate(self, prompt: Prompt, budget: int) -> Stats:
        import llama_cpp

        vocab = llama_cpp.llama_model_get_vocab(self.llm.model)
        # reset() empties the KV cache: without it llama-cpp-python reuses a shared prompt prefix,
        # which lljx does not, and prefill would not be measured like for like.
        self.llm.reset()
        tokens = self.llm.generate(
            list(prompt.ids), temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0, reset=True
        )
        return timed_stream(tokens, len(prompt.ids), budget, lambda t: llama_cpp.llama_vocab_is_eog(vocab, t))

    def run(self, prompt: Prompt) -> Measurement:
        return Measurement(self.generate(prompt, self.max_tokens))

    def close(self) -> None:
        if self.llm is not None:
            self.llm.close()
            self.llm = None


def peer_ftype(dtype: str, quantization: str) -> str | None:
    """The GGUF type llama.cpp should run for lljx's `dtype` on a file of `quantization`, or None for the file as it is.

    At dtype auto both engines read the file's own formats; a file already of the type a dtype
    asks for would only be rewritten into the same weights.
    """
    wanted = None if dtype == "auto" else GGUF_TYPE[dtype]
    return None if wanted == quantization else wanted


def peer_file(source: Path, ftype: str | None) -> Path:
    """The GGUF llama.cpp runs: `source` itself, or its one-time conversion to `ftype` in the cache (not timed)."""
    return source if ftype is None else requantized(source, ftype)


def ollama_host() -> str:
    return os.environ.get("OLLAMA_HOST") or DEFAULT_OLLAMA_HOST


def ollama_name(model: Model) -> str:
    """The name an Ollama server most likely knows this model by."""
    if model.origin == "ollama":
        return model.source
    if model.origin == "embedded":
        return EMBEDDED_OLLAMA_NAME
    return model.name


class OllamaSystem:
    """An Ollama-API server through the official client: chat, streamed, greedy, timed client-side.

    Ollama's own eval_count / eval_duration (and the prompt ones) are recorded beside the
    client clock. A server may reuse a cached prompt prefix between requests; its
    prompt_eval_count then shows how much it actually evaluated.
    """

    name = kind = "ollama"
    threads = None  # the server's own choice
    file = None  # the server's, unknown here

    def __init__(self, model_name: str, *, warmup: Prompt, max_tokens: int, seed: int, host: str | None = None) -> None:
        import httpx
        import ollama

        self.host = host or ollama_host()
        self.model = model_name
        self.dtype = ""
        self.warmup = warmup
        self.max_tokens = max_tokens
        self.seed = seed
        probe = ollama.Client(host=self.host, timeout=5)
        try:
            details = probe.show(model_name).details
            self.dtype = (details.quantization_level or "") if details is not None else ""
        except (ConnectionError, httpx.TransportError):
            raise Skipped(f"no server at {self.host}") from None
        except ollama.ResponseError as error:
            if error.status_code == 404 and "not found" in str(error).lower():
                raise Skipped(f"model '{model_name}' not found at {self.host}") from None
            # A server without /api/show can still serve chat; the run will tell.
        except ValueError:
            pass  # a /api/show reply the client cannot parse: the dtype stays unknown
        self.client = ollama.Client(host=self.host)

    def chat(self, prompt: Prompt, budget: int) -> Measurement:
        options = {"temperature": 0, "num_predict": budget, "seed": self.seed}
        final: Any = None
        first_ns = last_ns = 0
        start = time.perf_counter_ns()
        for chunk in self.client.chat(
            model=self.model, messages=[{"role": "user", "content": prompt.text}], options=options, stream=True
        ):
            now = time.perf_counter_ns() - start
            if chunk.message is not None and chunk.message.content:
                first_ns = first_ns or now
                last_ns = now
            if chunk.done:
                final = chunk
        total_ns = time.perf_counter_ns() - start
        if final is None:
            raise RuntimeError(f"ollama at {self.host} ended the stream without a final message")
        evals = final.eval_count or 0
        eval_ns = final.eval_duration or 0
        prompt_evals = final.prompt_eval_count or 0
        prompt_ns = final.prompt_eval_duration or 0
        stats = Stats(
            prompt_tokens=prompt_evals, gen_tokens=evals, tokens_read=evals, ttft_ns=first_ns, prefill_ns=first_ns,
            decode_ns=last_ns - first_ns, total_ns=total_ns,
            stop_reason={"length": "length"}.get(final.done_reason or "", "stop"),
        )
        extra = {
            "eval_count": evals, "eval_duration_s": eval_ns / 1e9, "prompt_eval_count": prompt_evals,
            "prompt_eval_duration_s": prompt_ns / 1e9, "server_decode_tps": rate(evals, eval_ns),
            "server_prefill_tps": rate(prompt_evals, prompt_ns),
            "load_duration_s": (final.load_duration or 0) / 1e9,
        }
        return Measurement(stats, extra)

    def warm_up(self) -> Readiness:
        start = time.perf_counter()
        measured = self.chat(self.warmup, min(self.max_tokens, WARMUP_TOKENS))
        warmup_s = time.perf_counter() - start
        return Readiness(load_s=measured.extra["load_duration_s"], compile_s=warmup_s, warmup_s=warmup_s)

    def run(self, prompt: Prompt) -> Measurement:
        measured = self.chat(prompt, self.max_tokens)
        measured.extra.pop("load_duration_s")
        return measured

    def close(self) -> None:
        self.client.close()
