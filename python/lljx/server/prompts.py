"""Prompt token ids for /api/generate (prompt, system, raw, context) and /api/chat (messages, tools)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from lljx.generation import chat_prompt_ids, messages_prompt_ids
from lljx.server.schemas import ChatRequest, GenerateRequest, RequestError

if TYPE_CHECKING:
    from lljx.models import Model


def generate_ids(request: GenerateRequest, model: Model) -> list[int]:
    """The templated (or raw) prompt, after the `context` a previous reply returned."""
    ids = chat_prompt_ids(model, request.prompt, system=request.system, raw=request.raw)
    if not request.context:
        return ids
    vocab = model.tokenizer.vocab_size
    if any(t >= vocab for t in request.context):
        raise RequestError(400, f"context holds token ids outside this model's vocabulary (size {vocab})")
    bos = model.tokenizer.bos_id
    if ids and ids[0] == bos and request.context[0] == bos:
        ids = ids[1:]  # the context already starts with BOS
    return list(request.context) + ids


def chat_ids(request: ChatRequest, model: Model) -> list[int]:
    if request.tools:
        return messages_prompt_ids(model, request.messages, tools=list(request.tools))
    return messages_prompt_ids(model, request.messages)
