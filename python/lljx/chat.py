"""Chat templates: render a conversation into the prompt text a model was trained on.

Templates are the Jinja sources models ship (GGUF ``tokenizer.chat_template``,
``tokenizer_config.json``), rendered in Rust the way HF transformers renders them:
``trim_blocks``/``lstrip_blocks``, Python string and dict methods (``.strip()``,
``.items()``), ``raise_exception``, ``strftime_now`` and a ``tojson`` without HTML
escaping. Without a source, the built-in Llama 3 format is used.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

from lljx import _native
from lljx._native import TemplateError

__all__ = ["ChatTemplate", "TemplateError"]


class ChatTemplate:
    """A compiled chat template.

    Args:
        source: Jinja template source, or ``None`` for the built-in Llama 3 format
            (``<|begin_of_text|><|start_header_id|>role<|end_header_id|>\\n\\ncontent<|eot_id|>``
            per message, content stripped, then the assistant header when a reply is wanted).
        bos_token: value of ``bos_token`` inside the template.
        eos_token: value of ``eos_token`` inside the template.

    Raises:
        TemplateError: the source does not compile.
    """

    __slots__ = ("_native", "_source")

    def __init__(self, source: str | None, *, bos_token: str = "", eos_token: str = "") -> None:
        if source is not None and not isinstance(source, str):
            raise TypeError(f"source must be a str or None, not {type(source).__name__}")
        for name, value in (("bos_token", bos_token), ("eos_token", eos_token)):
            if not isinstance(value, str):
                raise TypeError(f"{name} must be a str, not {type(value).__name__}")
        self._source = source
        self._native = _native.ChatTemplate(source, bos_token=bos_token, eos_token=eos_token)

    @property
    def source(self) -> str | None:
        """The template source, ``None`` for the built-in Llama 3 format."""
        return self._source

    def render(
        self,
        messages: Sequence[Mapping[str, object]],
        *,
        add_generation_prompt: bool = True,
        **extra: object,
    ) -> str:
        """Renders ``messages`` (``[{"role": ..., "content": ...}, ...]``) to prompt text.

        ``add_generation_prompt`` ends the prompt with the header of an assistant reply.
        ``extra`` adds template variables (``tools``, ``documents``, ``date_string``, ...);
        ``tools`` and ``documents`` are ``None`` unless given, as in transformers. Values
        may be None, bool, int, float, str, lists/tuples and str-keyed mappings.

        Raises:
            TemplateError: rendering failed, or the template called ``raise_exception``.
        """
        if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
            raise TypeError(f"messages must be a sequence of mappings, not {type(messages).__name__}")
        for i, message in enumerate(messages):
            if not isinstance(message, Mapping):
                raise TypeError(f"messages[{i}] must be a mapping, not {type(message).__name__}")
        if not isinstance(add_generation_prompt, bool):
            raise TypeError("add_generation_prompt must be a bool")
        # strftime_now reports local time, and only Python knows the local offset portably.
        return self._native.render(
            list(messages),
            add_generation_prompt=add_generation_prompt,
            extra=extra,
            utc_offset=time.localtime().tm_gmtoff,
        )

    def __repr__(self) -> str:
        kind = "llama3 built-in" if self._source is None else f"{len(self._source)} chars"
        return f"ChatTemplate({kind})"
