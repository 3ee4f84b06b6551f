"""Fake strategy plugins installed into a temporary sys.path entry: real distributions with real entry points."""

from __future__ import annotations

import textwrap
from pathlib import Path


def write_distribution(root: Path, package: str, strategies: dict[str, str], module_source: str) -> None:
    """A minimal installed distribution: `<package>.dist-info` with entry points, plus its module."""
    module = package.replace("-", "_")
    info = root / f"{module}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package}\nVersion: 1.0\n")
    lines = "\n".join(f"{name} = {module}:{attr}" for name, attr in strategies.items())
    (info / "entry_points.txt").write_text(f"[lljx.strategies]\n{lines}\n")
    (root / f"{module}.py").write_text(textwrap.dedent(module_source))


WORKING = """
    from lljx.strategies.jit_token import JitPerToken

    class Echo(JitPerToken):
        name = "{name}"
        description = "a test double of jit-token"

    strategy = Echo()
"""

BROKEN = """
    raise ImportError("this plugin needs a package that is not installed")
"""
