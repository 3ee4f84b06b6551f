"""The tokenizer side of an HF folder: tokenizer.json's specials, tokenizer_config.json, generation_config.json."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lljx.models.hf_config import read_json
from lljx.models.vocab import TokenizerFile, stop_token_ids


@dataclass(frozen=True)
class HFTokenizer:
    spec: TokenizerFile
    bos_token: str | None
    eos_token: str | None
    chat_template: str | None
    stop_token_ids: tuple[int, ...]


def _token_content(value: Any) -> str | None:
    """tokenizer_config.json writes special tokens as a string or as {"content": ...}."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _first_id(value: Any) -> int | None:
    if isinstance(value, list):
        value = value[0] if value else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _ids(value: Any) -> list[int]:
    values = value if isinstance(value, list) else [value]
    return [v for v in values if isinstance(v, int) and not isinstance(v, bool)]


def chat_template(folder: Path, tok_cfg: dict[str, Any]) -> str | None:
    """chat_template.jinja if present (newer exports), else tokenizer_config.json's (a string or named list)."""
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    template = tok_cfg.get("chat_template")
    if isinstance(template, list):
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default", next(iter(named.values()), None))
    return template if isinstance(template, str) else None


def tokenizer_vocab(folder: Path) -> tuple[Path, dict[str, int], dict[str, int]]:
    """tokenizer.json's path, its special added tokens and its full text -> id map (for bos/eos lookups)."""
    path = folder / "tokenizer.json"
    doc = read_json(path)
    specials: dict[str, int] = {}
    for t in doc.get("added_tokens") or []:
        if (
            isinstance(t, dict)
            and isinstance(t.get("content"), str)
            and isinstance(t.get("id"), int)
            and t.get("special", False)
        ):
            specials[t["content"]] = t["id"]
    model = doc.get("model")
    vocab = model.get("vocab") if isinstance(model, dict) else None
    return path, specials, vocab if isinstance(vocab, dict) else {}


def hf_tokenizer(folder: Path, cfg: dict[str, Any]) -> HFTokenizer:
    """Tokenizer recipe, bos/eos text, chat template and stop ids; `cfg` is config.json (a fallback for ids)."""
    tok_cfg = read_json(folder / "tokenizer_config.json", required=False)
    gen_cfg = read_json(folder / "generation_config.json", required=False)
    tok_path, specials, vocab = tokenizer_vocab(folder)

    def lookup(text: str) -> int | None:
        found = specials.get(text, vocab.get(text))
        return found if isinstance(found, int) else None

    bos_token, eos_token = _token_content(tok_cfg.get("bos_token")), _token_content(tok_cfg.get("eos_token"))
    bos_id = lookup(bos_token) if bos_token else _first_id(cfg.get("bos_token_id"))
    eos_id = lookup(eos_token) if eos_token else _first_id(cfg.get("eos_token_id"))
    id_to_text = {i: t for t, i in {**vocab, **specials}.items() if isinstance(i, int)}
    if bos_token is None and bos_id is not None:
        bos_token = id_to_text.get(bos_id)
    if eos_token is None and eos_id is not None:
        eos_token = id_to_text.get(eos_id)
    add_bos = tok_cfg.get("add_bos_token")
    eos_ids = [eos_id, *_ids(gen_cfg.get("eos_token_id")), *_ids(cfg.get("eos_token_id"))]
    return HFTokenizer(
        spec=TokenizerFile(str(tok_path), bos_token, eos_token, add_bos if isinstance(add_bos, bool) else None),
        bos_token=bos_token,
        eos_token=eos_token,
        chat_template=chat_template(folder, tok_cfg),
        stop_token_ids=stop_token_ids(eos_ids, specials),
    )
