"""Strategy discovery: built-ins through entry points, broken and duplicate plugins, LLJX_PLUGINS, the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from lljx.strategies import registry
from plugin_fakes import BROKEN, WORKING, write_distribution

BUILT_INS = {"no-jit", "jit-token", "jit-split", "jit-layer", "scan", "fused-loop", "native-token", "native-loop"}


@pytest.fixture
def plugin_dir(tmp_path, monkeypatch):
    """A sys.path entry for fake distributions; monkeypatch removes it (and LLJX_PLUGINS) afterwards."""
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv(registry.PLUGINS_ENV, raising=False)
    return tmp_path


def names(infos):
    return {info.name for info in infos}


def test_built_ins_register_through_entry_points():
    infos = {info.name: info for info in registry.available()}
    assert BUILT_INS <= set(infos)
    for name in BUILT_INS:
        assert infos[name].package == "lljx" and infos[name].error is None and infos[name].description


def test_loading_one_strategy_imports_only_that_one():
    code = (
        "import sys; from lljx.strategies import registry; registry.load('scan'); "
        "print(sorted(m for m in sys.modules if m.startswith('lljx.strategies.')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    loaded = set(json.loads(out.replace("'", '"')))
    assert "lljx.strategies.scan" in loaded
    assert not loaded & {"lljx.strategies.fused_loop", "lljx.strategies.jit_layer", "lljx.strategies.no_jit"}


def test_broken_plugin_is_listed_with_its_error_and_breaks_nothing(plugin_dir):
    write_distribution(plugin_dir, "lljx-broken", {"broken": "strategy"}, BROKEN)
    infos = {info.name: info for info in registry.available()}
    assert "needs a package that is not installed" in infos["broken"].error
    assert infos["broken"].package == "lljx-broken"
    assert BUILT_INS <= {name for name, info in infos.items() if info.error is None}
    with pytest.raises(registry.StrategyError, match="'broken' from 'lljx-broken' failed to load"):
        registry.load("broken")
    assert registry.load("jit-token").name == "jit-token"


def test_working_plugin_loads(plugin_dir):
    write_distribution(plugin_dir, "lljx-echo", {"echo": "strategy"}, WORKING.format(name="echo"))
    assert registry.load("echo").description == "a test double of jit-token"


def test_duplicate_name_names_both_packages(plugin_dir):
    write_distribution(plugin_dir, "lljx-one", {"twin": "strategy"}, WORKING.format(name="twin"))
    write_distribution(plugin_dir, "lljx-two", {"twin": "strategy"}, WORKING.format(name="twin"))
    with pytest.raises(registry.StrategyError, match="'lljx-one' and 'lljx-two'"):
        registry.load("twin")
    errors = [info.error for info in registry.available() if info.name == "twin"]
    assert len(errors) == 2 and all("more than one package" in e for e in errors)


def test_unknown_name_lists_the_available_ones():
    with pytest.raises(registry.StrategyError) as error:
        registry.load("warp-drive")
    message = str(error.value)
    assert "unknown strategy 'warp-drive'" in message and "jit-token" in message and "\n" not in message


def test_lljx_plugins_limits_what_loads(plugin_dir, monkeypatch):
    write_distribution(plugin_dir, "lljx-echo", {"echo": "strategy"}, WORKING.format(name="echo"))
    monkeypatch.setenv(registry.PLUGINS_ENV, "lljx")
    assert "echo" not in names(registry.available())
    monkeypatch.setenv(registry.PLUGINS_ENV, "lljx_echo")  # spelled with _ still matches
    assert names(registry.available()) == {"echo"}
    with pytest.raises(registry.StrategyError, match="available: echo"):
        registry.load("jit-token")


def test_misnamed_strategy_is_an_error(plugin_dir):
    write_distribution(plugin_dir, "lljx-liar", {"honest": "strategy"}, WORKING.format(name="liar"))
    with pytest.raises(registry.StrategyError, match="calls itself 'liar'"):
        registry.load("honest")


def lljx(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "lljx.cli", *args], capture_output=True, text=True, timeout=120,
        env={**os.environ, **(env or {})},
    )


def test_cli_lists_strategies_and_plugin_errors(plugin_dir):
    write_distribution(plugin_dir, "lljx-broken", {"broken": "strategy"}, BROKEN)
    env = {"PYTHONPATH": os.pathsep.join([str(plugin_dir), os.environ.get("PYTHONPATH", "")])}
    rows = json.loads(lljx("strategies", "--json", env=env).stdout)
    by_name = {row["name"]: row for row in rows}
    assert BUILT_INS <= set(by_name)
    assert set(by_name["jit-token"]) == {"name", "package", "weights", "description"}
    assert by_name["jit-token"]["weights"] == "dequantized to f32"
    assert by_name["native-token"]["weights"] == "file formats in place"
    assert "error" in by_name["broken"] and by_name["broken"]["package"] == "lljx-broken"
    table = lljx("strategies", env=env).stdout
    assert "failed to load" in table and "fused-loop" in table


def test_cli_unknown_strategy_is_one_line():
    run = lljx("generate", "--strategy", "warp-drive", "hi")
    assert run.returncode != 0 and run.stdout == ""
    assert run.stderr.count("\n") == 1 and "unknown strategy 'warp-drive'; available:" in run.stderr
