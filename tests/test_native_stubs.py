"""The hand-written stubs python/lljx/_native.pyi must describe the compiled extension exactly."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

import lljx

# Where lljx is imported from (site-packages, or python/ in an editable checkout), and the
# checkout's python/ folder: mypy rejects files inside site-packages, so the typed wrappers
# are checked as written in the checkout.
PACKAGE_ROOT = Path(lljx.__file__).resolve().parent.parent
SOURCE_ROOT = Path(__file__).resolve().parent.parent / "python"
# Importing lljx pulls in jax; analysing jax is slow and says nothing about the extension.
MYPY_INI = "[mypy]\n[mypy-jax.*,jaxlib.*,numpy.*,ml_dtypes.*]\nfollow_imports = skip\n"


def run_mypy(args: list[str], cwd: Path, root: Path) -> subprocess.CompletedProcess[str]:
    if importlib.util.find_spec("mypy") is None:
        pytest.skip("mypy is not installed, so the stubs cannot be checked (pip install '.[test]')")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    # A scratch directory keeps mypy's cache out of the checkout.
    (cwd / "mypy.ini").write_text(MYPY_INI)
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600, check=False
    )


def test_stubs_match_the_extension(tmp_path: Path) -> None:
    proc = run_mypy(["mypy.stubtest", "lljx._native", "--mypy-config-file", "mypy.ini"], tmp_path, PACKAGE_ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_wrappers_type_check_against_the_stubs(tmp_path: Path) -> None:
    files = [str(SOURCE_ROOT / "lljx" / name) for name in ("tokenizer.py", "chat.py")]
    proc = run_mypy(["mypy", "--strict", "--config-file", "mypy.ini", *files], tmp_path, SOURCE_ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
