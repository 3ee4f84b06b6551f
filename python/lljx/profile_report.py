"""Profile files and summaries: time grouped by what a reader cares about, HTML, speedscope, collapsed stacks.

A pyinstrument session is a list of (stack, seconds) samples, each stack a list of
"function NUL path NUL line" strings. Everything here reads those samples directly, so a
session loaded from disk summarises exactly like a fresh one.
"""

from __future__ import annotations

import json
import sys
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pyinstrument.session import Session

# Library paths are written relative to this marker, so files name no machine's directories.
LIBRARY = "<python>"

CATEGORIES = {
    "device": "waiting for the device",
    "dispatch": "jit dispatch and tracing",
    "sampling": "sampling (host side)",
    "tokenize": "tokenization and detokenization",
    "python": "Python overhead",
}

# Frames that read results back: the wait and the copy. The Rust loop's own calls are
# native and invisible; lljx.profile.DeviceTokens gives them these names.
READBACK_FUNCTIONS = {"block_until_ready", "__array__", "_value", "device_get"}
TOKENIZER_FILES = {"lljx/tokenizer.py", "lljx/chat.py"}
TOKENIZER_FUNCTIONS = {"chat_prompt_ids"}
# The frame iterating the Rust TokenLoop: its own time is the loop's native work.
TOKEN_LOOP_FUNCTIONS = {"stream_tokens"}
# Calls into jitted functions dispatch in C++ with no frame of their own, so their time is
# the own time of the strategy or core frame that made the call.
DISPATCHING_DIRS = ("lljx/strategies/", "lljx/core/")
SUFFIXES = {"html": ".html", "speedscope": ".speedscope.json", "session": ".pyisession", "collapsed": ".collapsed.txt"}


@dataclass(frozen=True)
class FrameName:
    """One stack entry, parsed: function, class (may be empty) and portable file path."""

    function: str
    path: str
    cls: str = ""

    @property
    def label(self) -> str:
        return f"{self.cls}.{self.function}" if self.cls else self.function

    @property
    def module_path(self) -> str:
        """The path without the library marker: 'jax/_src/stages.py', 'lljx/sampling.py'."""
        return self.path.removeprefix(LIBRARY + "/")

    @property
    def native(self) -> bool:
        return self.path == "<built-in>"


@lru_cache(maxsize=65536)
def parse_frame(info: str) -> FrameName:
    identifier, _, attributes = info.partition("\x01")
    parts = identifier.split("\x00")
    cls = next((a[1:] for a in attributes.split("\x01") if a.startswith("c")), "") if attributes else ""
    return FrameName(parts[0], parts[1] if len(parts) > 1 else "", cls)


def is_readback(frame: FrameName) -> bool:
    if frame.function in READBACK_FUNCTIONS:
        return True
    return frame.function == "asarray" and (frame.native or frame.module_path.startswith("numpy/"))


def is_jax(frame: FrameName) -> bool:
    return frame.module_path.startswith(("jax/", "jaxlib/"))


def classify(stack: Sequence[str]) -> str:
    """The category of one sample, from the whole stack: the first rule that matches wins."""
    frames = [parse_frame(info) for info in stack]
    if any(is_readback(f) for f in frames):
        return "device"
    if any(f.module_path == "lljx/sampling.py" for f in frames):
        return "sampling"
    if any(f.module_path in TOKENIZER_FILES or f.function in TOKENIZER_FUNCTIONS for f in frames):
        return "tokenize"
    if any(is_jax(f) for f in frames):
        return "dispatch"
    python_frames = [f for f in frames if not f.native]
    leaf = python_frames[-1] if python_frames else None
    if leaf is not None and leaf.function in TOKEN_LOOP_FUNCTIONS:
        return "tokenize"
    if leaf is not None and leaf.module_path.startswith(DISPATCHING_DIRS):
        return "dispatch"
    return "python"


def category_seconds(session: Session) -> dict[str, float]:
    totals = dict.fromkeys(CATEGORIES, 0.0)
    for stack, seconds in session.frame_records:
        totals[classify(stack)] += seconds
    return totals


def inclusive_seconds(session: Session, files: Iterable[str]) -> dict[FrameName, float]:
    """Time under each function defined in `files` (counted once per sample, however deep it recurses)."""
    wanted = set(files)
    totals: dict[FrameName, float] = defaultdict(float)
    for stack, seconds in session.frame_records:
        for frame in {parse_frame(info) for info in stack}:
            if frame.module_path in wanted:
                totals[frame] += seconds
    return totals


def self_seconds(session: Session) -> dict[FrameName, float]:
    """Time with each function at the top of the stack."""
    totals: dict[FrameName, float] = defaultdict(float)
    for stack, seconds in session.frame_records:
        totals[parse_frame(stack[-1])] += seconds
    return totals


def summary(session: Session, meta: dict[str, Any], files: dict[str, Path] | None = None, top: int = 5) -> str:
    """A short text report: tokens per second, time per category, the strategy's own and the hottest functions."""
    total = sum(seconds for _, seconds in session.frame_records) or 1e-12
    name = meta.get("strategy", "?")
    header = (
        f"{name}: {meta.get('tokens_per_second', 0.0):.1f} tok/s during the profile "
        f"({meta.get('gen_tokens', 0)} tokens from {meta.get('prompts', '?')} prompts in {session.duration:.2f} s; "
        f"decode {meta.get('decode_tps', 0.0):.1f} tok/s; compiled {meta.get('compile_s', 0.0):.2f} s before it)"
    )
    lines = [header]
    mesh = meta.get("mesh")
    if mesh:
        lines.append(f"  mesh: {mesh['axis']}={mesh['tensor_parallel']} over {mesh['platform']} devices in "
                     f"{mesh['processes']} process(es)" + (f"; {mesh['padding']}" if mesh.get("padding") else ""))
    if meta.get("compiled_inside_s", 0.0) > 0:
        lines.append(f"  warning: {meta['compiled_inside_s']:.2f} s of compilation happened inside the profile")
    for key, seconds in category_seconds(session).items():
        label = CATEGORIES[key]
        lines.append(f"  {label:<34}{seconds:8.3f} s {100 * seconds / total:5.1f}%")
    own = largest(inclusive_seconds(session, meta.get("own_files", [])), top)
    if own:
        listed = ", ".join(f"{f.label} ({f.module_path}) {100 * s / total:.0f}%" for f, s in own)
        lines.append(f"  the strategy's own functions (total time): {listed}")
    hottest = largest(self_seconds(session), top)
    listed = ", ".join(f"{f.label} ({f.module_path}) {100 * s / total:.0f}%" for f, s in hottest)
    lines.append(f"  hottest (own time): {listed}")
    if files:
        lines.append("  files: " + "  ".join(str(path) for path in files.values()))
    return "\n".join(lines)


def largest(seconds: dict[FrameName, float], n: int) -> list[tuple[FrameName, float]]:
    return sorted(seconds.items(), key=lambda item: item[1], reverse=True)[:n]


def collapsed_stacks(session: Session) -> str:
    """`frame;frame;frame weight` lines for FlameGraph or inferno; weights are microseconds.

    Frames above the one that started the profiler (the thread, the CLI, a test runner) are dropped.
    """
    start = [info.partition("\x01")[0] for info in session.start_call_stack]
    weights: Counter[str] = Counter()
    for stack, seconds in session.frame_records:
        keep = 0
        while keep < len(start) - 1 and keep < len(stack) - 1 and stack[keep].partition("\x01")[0] == start[keep]:
            keep += 1
        names = (parse_frame(info) for info in stack[keep:])
        line = ";".join(f"{f.label} ({f.module_path})".replace(";", ",") for f in names)
        weights[line] += round(seconds * 1e6)
    return "".join(f"{line} {weight}\n" for line, weight in sorted(weights.items()) if weight > 0)


def portable_path(path: str) -> str:
    """'lljx/...' for this package, '<python>/...' for the standard library and installed packages, else the name."""
    if not path or path.startswith("<"):
        return path
    import lljx

    file = Path(path)
    package = Path(lljx.__file__).resolve().parent
    for root, prefix in [(package, "lljx"), *((r, LIBRARY) for r in library_roots())]:
        try:
            return f"{prefix}/{file.resolve().relative_to(root).as_posix()}"
        except ValueError:
            continue
    return file.name


@lru_cache(maxsize=1)
def library_roots() -> tuple[Path, ...]:
    """Import roots inside the Python installation, deepest first so site-packages wins over the prefix."""
    prefixes = {Path(p).resolve() for p in (sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix)}
    roots = {Path(p).resolve() for p in sys.path if p} | prefixes
    inside = [r for r in roots if any(r == p or p in r.parents for p in prefixes)]
    return tuple(sorted(inside, key=lambda r: len(r.parts), reverse=True))


@lru_cache(maxsize=65536)
def portable_frame(info: str) -> str:
    identifier, sep, attributes = info.partition("\x01")
    parts = identifier.split("\x00")
    if len(parts) == 3:
        if parts[1] == "<thread>":
            parts[2] = "0"  # a thread id differs on every run and says nothing
        elif parts[:2] == ["<lambda>", "<string>"]:
            # collections.namedtuple builds __new__ by eval'ing a lambda: this is DecodeState(...) being made.
            parts[0] = "namedtuple.__new__"
        else:
            parts[1] = portable_path(parts[1])
    return "\x00".join(parts) + sep + attributes


def portable_session(session: Session) -> Session:
    """The same session with file paths rewritten by `portable_path`; pyinstrument still shortens and groups them."""
    from pyinstrument.session import Session

    records = [([portable_frame(info) for info in stack], seconds) for stack, seconds in session.frame_records]
    return Session(
        frame_records=records,
        start_time=session.start_time,
        duration=session.duration,
        min_interval=session.min_interval,
        max_interval=session.max_interval,
        sample_count=session.sample_count,
        start_call_stack=[portable_frame(info) for info in session.start_call_stack],
        target_description=session.target_description,
        cpu_time=session.cpu_time,
        sys_path=[LIBRARY],
        sys_prefixes=[LIBRARY],
    )


def write_profile(
    session: Session, meta: dict[str, Any], out_dir: Path, stem: str, *, keep: Path | None = None
) -> dict[str, Path]:
    """Write the HTML, speedscope JSON, session (with `meta` beside pyinstrument's keys) and collapsed stacks.

    A session file at `keep` (the one being re-rendered) is left as it is.
    """
    from pyinstrument.renderers import HTMLRenderer, SpeedscopeRenderer

    out_dir.mkdir(parents=True, exist_ok=True)
    files = {kind: out_dir / f"{stem}{suffix}" for kind, suffix in SUFFIXES.items()}
    files["html"].write_text(HTMLRenderer().render(session), encoding="utf-8")
    files["speedscope"].write_text(SpeedscopeRenderer().render(session), encoding="utf-8")
    if keep is None or files["session"].resolve() != keep.resolve():
        # pyinstrument's loader ignores keys it does not know, so `pyinstrument --load` still reads this file.
        files["session"].write_text(json.dumps({**session.to_json(), "lljx": meta}), encoding="utf-8")
    files["collapsed"].write_text(collapsed_stacks(session), encoding="utf-8")
    return files


def load_profile(path: Path) -> tuple[Session, dict[str, Any]]:
    """A saved session and the lljx metadata written with it (empty for a plain pyinstrument session)."""
    from pyinstrument.session import Session

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise ValueError(f"{path}: {error.strerror}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not a pyinstrument session ({error})") from None
    try:
        session = Session.from_json(data)
    except (KeyError, TypeError) as error:
        raise ValueError(f"{path}: not a pyinstrument session (missing {error})") from None
    meta = data.get("lljx") or {}
    return session, {"strategy": path.name.removesuffix(SUFFIXES["session"]), **meta}
