"""Reading a GGUF header and building its tokenizer while JAX imports: no JAX needed, and only the very file is handed over."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lljx.models import prefetch
from lljx.models.embedded import embedded_gguf_path


def test_the_prefetch_path_and_the_cli_module_never_import_jax():
    code = (
        "import sys, lljx.cli, lljx.models.prefetch, lljx.models.vocab, lljx.tokenizer, lljx.models.gguf_file\n"
        "print(sorted(m for m in ('jax', 'jaxlib') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_what_was_read_is_handed_over_once_for_that_file():
    path = embedded_gguf_path()
    assert path is not None
    prefetch.start(None)  # the embedded model
    early = prefetch.result(path)
    assert early is not None and early.header.path == path
    assert early.tokenizer.encode("Hello, world!") == [19556, 28, 905, 17]
    assert prefetch.result(path) is None  # handed over once


def test_a_file_that_changed_or_another_spec_is_not_handed_over(tmp_path: Path):
    copy = tmp_path / "model.gguf"
    copy.write_bytes(Path(embedded_gguf_path()).read_bytes())
    prefetch.start(str(copy))
    stat = copy.stat()
    os.utime(copy, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert prefetch.result(str(copy)) is None
    before = dict(prefetch._STARTED)
    prefetch.start("smollm2")  # a name: resolving it is the loader's job
    prefetch.start(str(tmp_path / "absent.gguf"))
    assert prefetch._STARTED == before


def test_a_broken_file_falls_back_to_the_loaders_own_error(tmp_path: Path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + bytes(10))
    prefetch.start(str(bad))
    assert prefetch.result(str(bad)) is None
    from lljx.models import ModelFileError, load_model

    with pytest.raises(ModelFileError, match="bad.gguf"):
        load_model(str(bad), dtype="auto")
