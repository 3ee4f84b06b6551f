"""The `lljx` command line: parse, call the library, print. Errors are one line on stderr."""

from __future__ import annotations

import gc
import importlib
import json
import os
import sys
from collections.abc import Callable, Iterator
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import click

from lljx.parallel.options import mesh_options

F = TypeVar("F", bound=Callable[..., Any])

DTYPE_CHOICES = ["auto", "f32", "bf16", "f16", "int8"]
DTYPE_HELP = (
    "Weights' dtype; auto (on CPU) keeps the file's own formats (Q4_K, Q8_0, F16...) read in place, "
    "int8 makes the projections llama.cpp's Q8_0 blocks; activations are f32 on CPU."
)


def one_line_errors(command: F) -> F:
    """Turn any failure into `lljx: error: ...` and exit 1; LLJX_DEBUG=1 shows the traceback."""

    @wraps(command)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except (click.exceptions.Exit, click.ClickException, click.Abort, KeyboardInterrupt, BrokenPipeError):
            raise
        except Exception as error:  # noqa: BLE001 - the boundary where every error becomes one line
            if os.environ.get("LLJX_DEBUG"):
                raise
            fail(" ".join(str(error).split()) or type(error).__name__, 1)

    return run  # type: ignore[return-value]


def fail(message: str, code: int) -> None:
    click.echo(f"lljx: error: {message}", err=True)
    sys.exit(code)


def entry_point() -> None:
    """The console script: click's own errors (bad options, usage) also become one line."""
    # What is imported by now (click) lives as long as the process: no collection needs to walk it again.
    gc.freeze()
    if sys.argv[1:2] == ["serve"]:
        from lljx.server.malloc_tunables import reexec_with_tunables

        reexec_with_tunables()  # a long-running server's cache copies reuse memory, not fault it in
    try:
        run_main()
    finally:
        # The process ends next, and the interpreter's final collections would walk every object
        # JAX built while tracing: about 0.4 s after `lljx generate` has printed its reply.
        gc.freeze()


def run_main() -> None:
    try:
        code = main.main(prog_name="lljx", standalone_mode=False)
    except click.UsageError as error:
        hint = f" (see '{error.ctx.command_path} --help')" if error.ctx is not None else ""
        fail(error.format_message() + hint, error.exit_code)
    except click.ClickException as error:
        fail(error.format_message(), error.exit_code)
    except (click.Abort, KeyboardInterrupt):
        fail("interrupted", 130)
    except BrokenPipeError:
        # The reader went away (e.g. `| head`); stop quietly like other Unix tools.
        sys.stderr.close()
        sys.exit(0)
    sys.exit(code if isinstance(code, int) else 0)


def default_dtype() -> str:
    """auto on CPU (the file's formats, read in place by lljx's kernels); bf16 on accelerators."""
    import jax

    return "auto" if jax.default_backend() == "cpu" else "bf16"


def enable_compile_cache() -> None:
    """Keep compiled executables across runs (JAX's persistent cache), so a second run starts fast."""
    import jax

    if os.environ.get("LLJX_COMPILE_CACHE", "1") == "0":
        return
    cache_home = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    jax.config.update("jax_compilation_cache_dir", str(cache_home / "lljx" / "jax"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def read_prompt(
    prompt: str | None, *, strip_final_newline: bool = False, allow_empty: bool = True, what: str = "prompt"
) -> str:
    """The PROMPT argument, else all of stdin (exactly, unless strip_final_newline); never waits on a terminal."""
    if prompt is None:
        if sys.stdin is None or sys.stdin.isatty():
            command = click.get_current_context().command_path
            raise click.UsageError(
                f'no {what}: give it as an argument ({command} "Why is the sky blue?") '
                f"or on stdin (echo 'Why is the sky blue?' | {command})"
            )
        prompt = sys.stdin.read()
        # `echo question | lljx generate` should ask what `lljx generate question` asks.
        if strip_final_newline:
            prompt = prompt.removesuffix("\n").removesuffix("\r")
    if not allow_empty and not prompt.strip():
        raise click.UsageError(f"the {what} is empty: give it as an argument or pipe some text on stdin")
    return valid_utf8(prompt, what)


def valid_utf8(text: str, what: str) -> str:
    """`text` as given, or a usage error naming the first byte that is not UTF-8 (Python hands such
    bytes of argv and stdin over as lone surrogates, which no tokenizer takes)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        char = ord(text[error.start])
        what_byte = f"byte 0x{char - 0xDC00:02x}" if 0xDC80 <= char <= 0xDCFF else f"code point U+{char:04X}"
        raise click.UsageError(f"the {what} is not valid UTF-8: {what_byte} at character {error.start}") from None
    return text


class LazyGroup(click.Group):
    """A group whose bigger commands live in their own modules, imported only when they run.

    This keeps `lljx generate` from importing the server or the benchmark, and lets those
    modules import helpers from this one without an import cycle.
    """

    lazy_commands = {
        "bench": "lljx.bench.cli:bench",
        "profile": "lljx.profile_cli:profile",
        "serve": "lljx.server.cli:serve",
    }

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *self.lazy_commands])

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.lazy_commands:
            module, attr = self.lazy_commands[name].split(":")
            command: click.Command = getattr(importlib.import_module(module), attr)
            return command
        return super().get_command(ctx, name)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="lljx")
def main() -> None:
    """Llama-family inference in JAX, with a Rust tokenizer and token loop."""


@main.command()
@click.argument("prompt", required=False)
@click.option("--model", "-m", "model_spec", default=None,
              help="GGUF file, HF folder, Ollama name, embedded model name or synthetic:<shape>[:<format>].")
@click.option("--max-tokens", "-n", type=int, default=256, show_default=True, help="Most tokens to generate.")
@click.option("--temperature", "-t", type=float, default=0.8, show_default=True, help="0 means greedy.")
@click.option("--top-k", type=int, default=40, show_default=True, help="0 disables the top-k cut.")
@click.option("--top-p", type=float, default=0.9, show_default=True)
@click.option("--min-p", type=float, default=0.0, show_default=True)
@click.option("--seed", type=int, default=None, help="Seed for sampling (random when not given).")
@click.option("--dtype", type=click.Choice(DTYPE_CHOICES), default="auto", show_default=True, help=DTYPE_HELP)
@click.option("--system", default=None, help="A system message for the chat template.")
@click.option("--raw", is_flag=True, help="Send the prompt as is, without the chat template.")
@click.option("--strategy", "-s", "strategy_name", default=None, help="Where jax.jit goes (see `lljx strategies`); default native-token on CPU, jit-token elsewhere and with --tensor-parallel.")
@click.option("--stop", "stop_strings", multiple=True, help="Stop when this text appears (repeatable); it is not printed.")
@click.option("--format", "reply_format", default=None, metavar="json|FILE.json|'{...}'",
              help="Constrain the reply to JSON: 'json' (any object), a JSON schema file, or a schema written inline.")
@click.option("--stats", "show_stats", is_flag=True, help="Print timings to stderr.")
@click.option("--jsonl", "jsonl_path", default=None, metavar="FILE|-",
              help="Run every prompt of a JSONL file (or stdin) at once: a JSON string or {id, prompt, system} "
                   "per line in, one {id, text, stats} line per prompt out.")
@click.option("--parallel", type=click.IntRange(min=1, max=64), default=None,
              help="With --jsonl: prompts run at once [default: 8, or 4 on a small machine].")
@one_line_errors
@mesh_options
def generate(
    prompt: str | None,
    model_spec: str | None,
    max_tokens: int,
    temperature: float,
    top_k: int,
    top_p: float,
    min_p: float,
    seed: int | None,
    dtype: str,
    system: str | None,
    raw: bool,
    strategy_name: str | None,
    stop_strings: tuple[str, ...],
    reply_format: str | None,
    show_stats: bool,
    jsonl_path: str | None,
    parallel: int | None,
) -> None:
    """Generate a reply to PROMPT (or stdin), streaming only the generated text to stdout."""
    from lljx.models import prefetch

    prefetch.start(model_spec)  # before JAX imports (the next lines): the two overlap
    import secrets

    from lljx.generation import Generation, chat_prompt_ids, start_quickly
    from lljx.models import load_model
    from lljx.sampling import SamplerSettings
    from lljx.strategies import registry
    from lljx.structured import compile_schema, read_format

    if jsonl_path is not None and prompt is not None:
        raise click.UsageError("give a PROMPT or --jsonl, not both")
    if parallel is not None and jsonl_path is None:
        raise click.UsageError("--parallel goes with --jsonl")
    text = "" if jsonl_path is not None else read_prompt(prompt, strip_final_newline=True, allow_empty=False)
    if system is not None:
        valid_utf8(system, "system message")
    strategy = registry.load(strategy_name or registry.default_strategy())
    schema = None if reply_format is None else read_format(reply_format)
    settings = SamplerSettings(
        temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
        seed=secrets.randbelow(2**63) if seed is None else seed,
    )
    if max_tokens <= 0:
        raise click.BadParameter(f"must be at least 1, got {max_tokens}", param_hint="--max-tokens")
    enable_compile_cache()
    if jsonl_path is not None:
        from lljx import offline

        items = offline.read_items(jsonl_path)
        model = load_model(model_spec, dtype=default_dtype() if dtype == "auto" else dtype)
        failed = offline.run_jsonl(
            items, model=model, strategy=strategy, slots=parallel, max_tokens=max_tokens, settings=settings,
            stop_strings=stop_strings, grammar=None if schema is None else compile_schema(model, schema), raw=raw,
            seeded=seed is not None, system=system, out=sys.stdout,
        )
        if failed:
            fail(f"{failed} of {len(items)} prompts failed (see their error lines)", 1)
        return
    model, decoder, ids = start_quickly(
        strategy, model_spec, dtype=default_dtype() if dtype == "auto" else dtype, settings=settings,
        prompt_ids=lambda m: chat_prompt_ids(m, text, system=system, raw=raw), max_tokens=max_tokens,
        masked=schema is not None,
    )
    grammar = None if schema is None else compile_schema(model, schema)
    generation = Generation(
        model, decoder, ids, max_tokens=max_tokens,
        stop_token_ids=model.stop_token_ids, stop_strings=stop_strings, fast_start=True, grammar=grammar,
    )
    if model.origin == "synthetic":
        from lljx.models.synthetic import NOISE_NOTE

        click.echo(f"lljx: {model.name} has {NOISE_NOTE}", err=True)
    # JAX, the model and its programs live as long as the process: no collection walks them per token.
    gc.freeze()
    for chunk in generation:
        sys.stdout.write(chunk)
        sys.stdout.flush()
    sys.stdout.write("\n")
    if show_stats:
        click.echo(generation.stats.summary(), err=True)


def jsonl_inputs(path: str) -> Iterator[str]:
    try:
        stream = sys.stdin if path == "-" else open(path, encoding="utf-8")
    except OSError as error:
        raise click.ClickException(f"{path}: {error.strerror}") from None
    with stream:
        for number, line in enumerate(stream, 1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as error:
                raise click.ClickException(f"{path}:{number}: not valid JSON ({error.msg})") from None
            if not isinstance(value, str):
                raise click.ClickException(f"{path}:{number}: expected a JSON string, got {type(value).__name__}")
            yield value


@main.command()
@click.argument("text", required=False)
@click.option("--model", "-m", "model_spec", default=None, help="Model whose tokenizer to use (default: embedded).")
@click.option("--tokenizer", "tokenizer_path", type=click.Path(dir_okay=False), default=None,
              help="A tokenizer.json or tiktoken tokenizer.model file.")
@click.option("--jsonl", "jsonl_path", default=None, help="File of JSON strings, one per line ('-' for stdin).")
@one_line_errors
def tokenize(text: str | None, model_spec: str | None, tokenizer_path: str | None, jsonl_path: str | None) -> None:
    """Print the token ids of TEXT (or stdin) as a JSON list, adding no special tokens."""
    from lljx.models import load_tokenizer
    from lljx.tokenizer import Tokenizer

    if tokenizer_path and model_spec:
        raise click.UsageError("give --model or --tokenizer, not both")
    if jsonl_path is not None and text is not None:
        raise click.UsageError("give TEXT or --jsonl, not both")
    tokenizer = Tokenizer.from_file(tokenizer_path) if tokenizer_path else load_tokenizer(model_spec)
    if jsonl_path is not None:
        # Read and check every line before printing, so a bad line leaves no partial output.
        items = list(jsonl_inputs(jsonl_path))
        click.echo("".join(json.dumps(tokenizer.encode(item)) + "\n" for item in items), nl=False)
        return
    click.echo(json.dumps(tokenizer.encode(read_prompt(text, what="text"))))


@main.command()
@click.argument("paths", nargs=-1, type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list instead of a table.")
@one_line_errors
def models(paths: tuple[str, ...], as_json: bool) -> None:
    """List the models lljx can load: embedded, the local Ollama store, and PATHS."""
    from lljx.models import list_models

    rows = [row.as_dict() for row in list_models(list(paths))]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    columns = ["name", "format", "size", "params", "quantization", "context", "stored", "source"]
    # A path that does not load is listed with the reason, not dropped and not fatal.
    click.echo(format_table(rows, columns + (["error"] if any(row.get("error") for row in rows) else [])))
    for row in rows:
        if row.get("provenance"):
            click.echo(f"{row['name']}: {row['provenance']}")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of {name, package, description[, error]}.")
@one_line_errors
def strategies(as_json: bool) -> None:
    """List the installed JIT strategies (entry points in the group `lljx.strategies`)."""
    from lljx.strategies.registry import available

    rows = [info.as_dict() for info in available()]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        row["description"] = row["description"] or f"failed to load: {row.get('error', '')}"
    click.echo(format_table(rows, ["name", "package", "weights", "description"]))


def format_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    cells = [[str(row.get(c, "") if row.get(c) is not None else "") for c in columns] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in cells]
    return "\n".join(lines)



if __name__ == "__main__":
    entry_point()
