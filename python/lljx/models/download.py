"""Fetch one file out of a zip archive at a URL, once: progress on stderr, a verified sha256, an atomic rename.

Written on the standard library (urllib, zipfile, hashlib) because it fetches one pinned file;
a download library would add dependencies to every install and still leave the extraction and
the rename to us. Every failure is a DownloadError with a one-line message.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import socket
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from lljx.models.errors import ModelError

CHUNK = 1 << 20
TIMEOUT_S = 60  # per socket operation, not for the whole download


class DownloadError(ModelError):
    """A file could not be fetched: offline, refused, truncated, not a zip, or not the expected bytes."""


@dataclass(frozen=True)
class ZipMember:
    """A file inside the zip archive at `url`, known by its sha256 and size."""

    url: str
    member: str
    sha256: str
    size: int


def fetch_member(source: ZipMember, target: Path, *, label: str, progress: bool = True) -> Path:
    """Download `source.url`, check `source.member`'s sha256 and move it to `target` in one rename.

    A reader of `target` sees the whole verified file or nothing: the archive and the member
    are written to temporary files beside it, removed on any failure.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    with _temporary(target.parent, ".zip") as archive_path:
        with open(archive_path, "wb") as archive:
            _download(source.url, archive, label=label, progress=progress)
        with _temporary(target.parent, ".part") as part:
            _extract(source, archive_path, part)
            os.chmod(part, 0o644)  # a cache file, readable like any other (mkstemp made it private)
            os.replace(part, target)
    return target


@contextmanager
def _temporary(folder: Path, suffix: str) -> Iterator[Path]:
    handle, name = tempfile.mkstemp(dir=folder, prefix=".download-", suffix=suffix)
    os.close(handle)
    path = Path(name)
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)


def _download(url: str, out: IO[bytes], *, label: str, progress: bool) -> None:
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
            length = response.headers.get("Content-Length")
            expected = int(length) if length and length.isdigit() else None
            with _bar(expected, label, progress) as advance:
                received = 0
                while chunk := response.read(CHUNK):
                    out.write(chunk)
                    received += len(chunk)
                    advance(len(chunk))
    except urllib.error.HTTPError as e:
        e.close()  # it holds the response, and with it the connection
        raise DownloadError(f"{url}: HTTP {e.code} {e.reason}") from None
    except urllib.error.URLError as e:
        raise DownloadError(f"{url} cannot be reached ({_reason(e.reason)})") from None
    except http.client.IncompleteRead as e:
        raise DownloadError(f"{url}: the connection closed before the end ({e})") from None
    except (OSError, http.client.HTTPException) as e:
        raise DownloadError(f"{url}: download failed ({_reason(e)})") from None
    if expected is not None and received != expected:
        raise DownloadError(f"{url}: the connection closed after {received} of {expected} bytes")


def _reason(error: object) -> str:
    if isinstance(error, socket.timeout | TimeoutError):
        return f"no answer in {TIMEOUT_S} s"
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return str(error) or type(error).__name__


@contextmanager
def _bar(length: int | None, label: str, shown: bool) -> Iterator[Callable[[int], None]]:
    """A click progress bar over bytes on stderr (a single line there when stderr is not a terminal)."""
    if not shown:
        yield lambda n: None
        return
    import click

    if length is None:  # no size to measure against: say what is happening, once
        click.echo(f"{label} ...", err=True)
        yield lambda n: None
        return
    with click.progressbar(length=length, label=label, file=sys.stderr, width=30) as bar:
        yield bar.update


def _extract(source: ZipMember, archive_path: Path, part: Path) -> None:
    digest = hashlib.sha256()
    try:
        with zipfile.ZipFile(archive_path) as archive:
            try:
                member = archive.open(source.member)
            except KeyError:
                raise DownloadError(f"{source.url}: the archive has no {source.member}") from None
            with member, open(part, "wb") as out:
                while block := member.read(CHUNK):
                    digest.update(block)
                    out.write(block)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as e:
        raise DownloadError(f"{source.url}: not a readable zip archive ({e})") from None
    if digest.hexdigest() != source.sha256:
        raise DownloadError(
            f"{source.url}: {source.member} has sha256 {digest.hexdigest()}, expected {source.sha256}"
        )
