"""llama.cpp on the synthetic files: it loads them, templates and tokenizes them as lljx does, and greedy tokens agree at F16."""

from __future__ import annotations

from pathlib import Path

import pytest

import llamacpp_oracle as oracle
from lljx.bench.prompts import BUILTIN
from lljx.generation import Generation, chat_prompt_ids
from lljx.models import load_model, synthetic
from lljx.models.gguf_file import read_gguf_header
from lljx.models.synthetic import SyntheticSpec
from lljx.sampling import SamplerSettings
from lljx.strategies import registry

pytestmark = pytest.mark.slow
GREEDY_TOKENS = 8


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthetic.ensure(SyntheticSpec("llama-tiny", "f16"), cache=tmp_path_factory.mktemp("xdg") / "lljx")


def has_file_format_kernels() -> bool:
    from lljx import _native

    return hasattr(_native, "block_kernel_types")


def greedy_pairs(path: Path, dtype: str, prompts: list[str]) -> list[tuple[list[int], list[int]]]:
    """(lljx's, llama.cpp's) greedy tokens on each prompt, both engines on the file at `path`."""
    if dtype == "auto" and not has_file_format_kernels():
        pytest.skip("this build of lljx has no kernels for weights in their file's format (dtype auto)")
    model = load_model(str(path), dtype=dtype)
    llm = oracle.load(path, n_ctx=256)
    decoder = registry.build(registry.load("native-token"), model, SamplerSettings(temperature=0))
    pairs = []
    for prompt in prompts:
        ids = chat_prompt_ids(model, prompt)
        generation = Generation(model, decoder, ids, max_tokens=GREEDY_TOKENS, stop_token_ids=model.stop_token_ids)
        for _ in generation:
            pass
        pairs.append((generation.token_ids, oracle.greedy_tokens(llm, ids, GREEDY_TOKENS)))
    llm.close()
    return pairs


def test_llamacpp_loads_the_file_and_templates_and_tokenizes_it_as_lljx(tiny_file):
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    model = load_model(str(tiny_file), dtype="f32")
    llm = oracle.load(tiny_file, n_ctx=256)
    assert llm.n_vocab() == 128256 and llm.n_ctx() == 256
    formatter = Jinja2ChatFormatter(template=model.chat_template or "", eos_token=model.eos_token or "",
                                    bos_token=model.bos_token or "")
    for prompt in BUILTIN[:5]:
        rendered = formatter(messages=[{"role": "user", "content": prompt}]).prompt
        assert rendered.startswith("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge")
        assert chat_prompt_ids(model, prompt) == llm.tokenize(rendered.encode(), add_bos=False, special=True)
    llm.close()


@pytest.mark.parametrize("dtype", ["f16", "auto"])
def test_greedy_tokens_equal_llamacpps_on_the_tiny_shape(tiny_file, dtype):
    pairs = greedy_pairs(tiny_file, dtype, list(BUILTIN[:5]))
    for ours, theirs in pairs:
        assert len(theirs) == GREEDY_TOKENS  # random weights never end a turn
        assert ours == theirs
    assert len({tuple(theirs) for _, theirs in pairs}) > 1  # the prompt steers the text


def test_greedy_tokens_equal_llamacpps_on_the_1b_shape():
    path = synthetic.ensure(SyntheticSpec("llama-3.2-1b", "f16"))  # the user's cache: made once across runs
    # At the default dtype, as users run it: the file's F16 rows in lljx's kernels, activations rounded to f16 as
    # llama.cpp rounds them. Two prompts at this scale (each a 1B-shaped prefill for both engines on CI's 2 cores).
    for ours, theirs in greedy_pairs(path, "auto", list(BUILTIN[:2])):
        assert ours == theirs and len(theirs) == GREEDY_TOKENS


def test_the_bf16_file_is_llamacpps_conversion_and_greedy_tokens_agree_at_auto(tmp_path_factory):
    """lljx's BF16 kernels against llama.cpp's on its own BF16 conversion. Both round activations
    to bf16 (8 bits), so a different order of a float sum can cross a rounding boundary, as on
    8-bit files: tokens agree, or first differ where llama.cpp's logits nearly tie."""
    if not has_file_format_kernels():
        pytest.skip("this build of lljx has no kernels for weights in their file's format (dtype auto)")
    path = synthetic.ensure(SyntheticSpec("llama-tiny", "bf16"), cache=tmp_path_factory.mktemp("xdg") / "lljx")
    # lljx's header reader (the gguf package's reader spent 20 s on the 128256 vocabulary strings here).
    matrices = {t.name: t.type_name for t in read_gguf_header(path).tensors.values() if len(t.shape) == 2}
    assert matrices and set(matrices.values()) == {"BF16"}, matrices
    model = load_model(str(path), dtype="auto")
    llm = oracle.load(path, n_ctx=256, logits_all=True)
    decoder = registry.build(registry.load("native-token"), model, SamplerSettings(temperature=0))
    for prompt in BUILTIN[:5]:
        ids = chat_prompt_ids(model, prompt)
        generation = Generation(model, decoder, ids, max_tokens=GREEDY_TOKENS, stop_token_ids=model.stop_token_ids)
        for _ in generation:
            pass
        oracle.assert_greedy_agrees(llm, ids, generation.token_ids, GREEDY_TOKENS, near_tie=0.25)
    llm.close()
