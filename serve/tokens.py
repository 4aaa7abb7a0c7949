"""Prompt tokens counted here, with the served base model's tokenizer, before the engine sees a request.

The count is of the exact prompt vLLM builds: `schemas.prompt.build_messages` rendered by the model's
chat template with the generation prompt, tokenized without extra special tokens (vLLM's chat path).
A prompt that cannot fit beside its max_tokens is refused here with both numbers (RELIABILITY B3),
never sent to be refused or truncated by the engine.
"""

from __future__ import annotations

import threading
from typing import Any

from serve.errors import ApiError, ErrorDetail

_tokenizers: dict[str, Any] = {}
# One lock for loading and encoding: a Rust tokenizer used from two threads at once can raise
# "Already borrowed", and an encode takes about a millisecond.
_lock = threading.Lock()


def _tokenizer(path: str) -> Any:
    if path not in _tokenizers:
        from transformers import AutoTokenizer

        _tokenizers[path] = AutoTokenizer.from_pretrained(path, local_files_only=True)
    return _tokenizers[path]


def count_prompt_tokens(tokenizer_path: str, messages: list[dict[str, str]]) -> int:
    """Tokens of the prompt the engine will build from `messages`. Blocking: call it off the event loop."""
    with _lock:
        tokenizer = _tokenizer(tokenizer_path)
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def context_error(prompt_tokens: int, max_tokens: int, max_model_len: int) -> ApiError | None:
    """The 413 for a prompt that leaves no room for `max_tokens` in the context, or None if it fits."""
    total = prompt_tokens + max_tokens
    if total <= max_model_len:
        return None
    return ApiError(
        413,
        "too_large",
        f"the prompt is {prompt_tokens} tokens and max_tokens is {max_tokens}: {total} tokens, over the "
        f"engine's context of {max_model_len}; shorten the text by at least {total - max_model_len} tokens "
        "or ask for fewer max_tokens",
        [ErrorDetail(pointer="/text", message=f"{prompt_tokens} prompt tokens + {max_tokens} max_tokens")],
    )
