"""llama.cpp's cold start for `lljx bench --cold`: a fresh process loads a GGUF with llama-cpp-python and prints its first greedy token.

Run by path, `python llamacpp_child.py MODEL THREADS N_CTX IDS_JSON [no-repack]`, so the
lljx package (and JAX) is never imported: the parent times from the spawn to the first byte
on stdout, which covers only Python, llama-cpp-python and llama.cpp's own load and prefill.
`no-repack` loads the weights as the file stores them (see `llamacpp_load`); the same run
is the probe that tells whether llama.cpp's repacking crashes on this CPU.
"""

import contextlib
import json
import sys


@contextlib.contextmanager
def without_repacking():
    """llama-cpp-python's `Llama` built inside loads with no extra buffer types (llama.cpp's --no-repack)."""
    import llama_cpp.llama_cpp as bindings

    defaults = bindings.llama_model_default_params

    def no_extra_buffers():
        params = defaults()
        params.use_extra_bufts = False
        return params

    bindings.llama_model_default_params = no_extra_buffers
    try:
        yield
    finally:
        bindings.llama_model_default_params = defaults


def main() -> None:
    path, threads, n_ctx, ids = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), json.loads(sys.argv[4])
    repack = sys.argv[5:] != ["no-repack"]
    from llama_cpp import Llama

    with contextlib.nullcontext() if repack else without_repacking():
        llm = Llama(model_path=path, n_ctx=n_ctx, n_batch=min(n_ctx, 512), n_threads=threads,
                    n_threads_batch=threads, verbose=False)
    for token in llm.generate(ids, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0):
        sys.stdout.write(f"{token}\n")
        sys.stdout.flush()
        break


if __name__ == "__main__":
    main()
