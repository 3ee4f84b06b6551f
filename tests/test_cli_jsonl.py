"""`lljx generate --jsonl`: many prompts at once, one JSON line out per prompt, in input order."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


def lljx(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lljx.cli", *args], input=stdin, capture_output=True, text=True, timeout=300,
        env={**os.environ, "LLJX_COMPILE_CACHE": "0"},
    )


def assert_one_line_error(run: subprocess.CompletedProcess[str], fragment: str) -> None:
    assert run.returncode != 0 and run.stdout == ""
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("lljx: error: ") and fragment in lines[0], run.stderr


@pytest.mark.parametrize(("stdin", "fragment"), [
    ('"ok"\n[1]\n', "-:2: expected a JSON string or object, got list"),
    ('{"prompt": "hi"}\n{"prompt": 3}\n', "-:2: 'prompt' must be a string"),
    ('{"prompt": "hi", "temperature": 1}\n', "-:1: unknown field 'temperature'"),
    ('"ok"\n{"prompt": \n', "-:2: not valid JSON"),
    ("\n\n", "no prompts"),
])
def test_bad_input_is_one_line_and_no_output(stdin, fragment):
    assert_one_line_error(lljx("generate", "--jsonl", "-", stdin=stdin), fragment)


def test_a_line_that_is_not_utf8_stops_the_batch_before_any_output():
    raw = subprocess.run(
        [sys.executable, "-m", "lljx.cli", "generate", "--jsonl", "-", "-n", "2"],
        input=b'"fine"\n"caf\xe9"\n', capture_output=True, timeout=300,
        env={**os.environ, "LLJX_COMPILE_CACHE": "0"},
    )
    run = subprocess.CompletedProcess(raw.args, raw.returncode, raw.stdout.decode(), raw.stderr.decode())
    assert_one_line_error(run, "-:2: not UTF-8 text")


def test_jsonl_needs_no_prompt_and_parallel_needs_jsonl(tmp_path):
    assert_one_line_error(lljx("generate", "hi", "--jsonl", "-", stdin='"x"\n'), "not both")
    assert_one_line_error(lljx("generate", "hi", "--parallel", "2"), "--parallel goes with --jsonl")
    assert_one_line_error(lljx("generate", "--jsonl", str(tmp_path / "missing.jsonl")), "missing.jsonl")


@pytest.mark.slow
def test_prompts_run_together_and_each_reply_is_its_lone_one():
    prompts = ["Why is the sky blue?", "What is the capital of France?", "Name two planets.", "Write a haiku."]
    lines = [json.dumps(prompts[0]), json.dumps({"id": "france", "prompt": prompts[1]}), "",
             json.dumps({"prompt": prompts[2], "system": "You are terse."}), json.dumps(prompts[3])]
    args = ("generate", "--jsonl", "-", "-t", "0", "-n", "10")
    together = lljx(*args, stdin="\n".join(lines) + "\n")
    assert together.returncode == 0, together.stderr
    records = [json.loads(line) for line in together.stdout.splitlines()]
    assert [r["id"] for r in records] == [1, "france", 4, 5]  # input order, ids default to line numbers
    assert all(r["text"] and r["stats"]["gen_tokens"] <= 10 and r["stats"]["prompt_tokens"] > 20 for r in records)
    one_at_a_time = lljx(*args, "--parallel", "1", stdin="\n".join(lines) + "\n")
    assert [json.loads(line)["text"] for line in one_at_a_time.stdout.splitlines()] == [r["text"] for r in records]
    # A prompt past the context fails alone: its line says why, the others are answered.
    huge = json.dumps("word " * 9000)
    mixed = lljx(*args, "--parallel", "2", stdin=f"{lines[0]}\n{huge}\n")
    out = [json.loads(line) for line in mixed.stdout.splitlines()]
    assert mixed.returncode == 1 and "1 of 2 prompts failed" in mixed.stderr
    assert out[0]["text"] == records[0]["text"] and out[1]["id"] == 2 and "context" in out[1]["error"]
