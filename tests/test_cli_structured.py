"""`--format` on `lljx generate` and `--schema` on `lljx bench`: constrained replies, mask statistics, and
one-line errors for formats that are no schema or that the engine cannot honour."""

from __future__ import annotations

import json

import jsonschema
import pytest

from test_cli import assert_one_line_error, lljx

pytestmark = pytest.mark.slow

CITY = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 20}, "country": {"type": "string", "maxLength": 20}},
    "required": ["city", "country"],
    "additionalProperties": False,
}


def test_generate_follows_a_schema_file_and_reports_mask_times(tmp_path):
    schema = tmp_path / "city.json"
    schema.write_text(json.dumps(CITY))
    run = lljx("generate", "Name a city and its country.", "--format", str(schema), "--temperature", "0",
               "-n", "40", "--stats")
    assert run.returncode == 0, run.stderr
    assert "stop: stop" in run.stderr, run.stdout
    jsonschema.validate(json.loads(run.stdout), CITY)
    assert "grammar:" in run.stderr and "mask per token: p50" in run.stderr and "p99" in run.stderr


def test_generate_format_json_and_an_inline_schema_give_objects():
    inline = lljx("generate", "Name a city and its country.", "--format", json.dumps(CITY), "--temperature", "0",
                  "-n", "40")
    assert inline.returncode == 0, inline.stderr
    jsonschema.validate(json.loads(inline.stdout), CITY)
    any_object = lljx("generate", "Describe a cat.", "--format", "json", "--temperature", "0", "-n", "6")
    assert any_object.returncode == 0 and any_object.stdout.startswith("{"), any_object.stderr


@pytest.mark.parametrize("fmt, fragment", [
    ("yaml", "yaml: No such file"),
    ('{"type": ', "inline schema is not valid JSON"),
    ('{"type": "strng"}', "strng"),
    ('{"type": "array", "uniqueItems": true}', "uniqueItems"),
    ('{"$ref": "https://example.com/s.json"}', "example.com"),
])
def test_bad_formats_fail_in_one_line(fmt, fragment):
    assert_one_line_error(lljx("generate", "hi", "--format", fmt), fragment)


def test_bench_measures_a_strategy_with_and_without_the_schema(tmp_path):
    out = tmp_path / "out"
    run = lljx("bench", "-s", "jit-token", "--schema", json.dumps(CITY), "--prompts", "2", "--max-tokens", "24",
               "--out", str(out), "--format", "json")
    assert run.returncode == 0, run.stderr
    printed = json.loads(run.stdout)
    systems = {s["system"]: s for s in printed["systems"]}
    assert list(systems) == ["jit-token", "jit-token+schema"] and printed["baseline"] == "jit-token"
    assert systems["jit-token+schema"]["mask_p99_us"] >= systems["jit-token+schema"]["mask_p50_us"] > 0
    assert systems["jit-token"]["mask_p50_us"] is None and systems["jit-token+schema"]["vs_baseline"] > 0
    rows = json.loads((out / "runs.json").read_text())["rows"]
    constrained = [r for r in rows if r["system"] == "jit-token+schema"]
    assert len(constrained) == 2 and all(r["grammar_ms"] > 0 and r["mask_p50_us"] > 0 for r in constrained)
    assert "mask µs p50 / p99" in (out / "summary.md").read_text()
    assert_one_line_error(lljx("bench", "-s", "jit-token", "--schema", '{"type": "strng"}'), "strng")
