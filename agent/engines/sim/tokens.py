"""Deterministic tokens for the simulated engine.

The sim has no model: a prompt is split into words (one token each, id from a stable
hash) and output token k of a request is a pure function of its prompt ids and k, so a
request produces the same text whether or not it migrated mid-stream, on any instance.
Every token's text is a word with a leading space, so detokenising is concatenation.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

WORDS = (
    "sim alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike "
    "november oscar papa quebec romeo sierra tango uniform victor whiskey xray yankee zulu "
    "red orange yellow green blue indigo violet black white grey silver gold copper iron "
    "north south east west up down left right one two three four five six seven eight nine"
).split()
VOCAB_SIZE = 32000


def _stable_hash(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


def tokenize(text: str) -> tuple[int, ...]:
    """One token per whitespace-separated word."""
    return tuple(_stable_hash(w.encode()) % VOCAB_SIZE for w in text.split())


def chat_text(messages: Sequence[dict[str, Any]]) -> str:
    """The sim's chat template: one `role: content` line per message, then the reply cue."""
    lines = [f"{m.get('role', 'user')}: {m.get('content', '')}" for m in messages]
    return "\n".join(lines) + "\nassistant:"


def output_token(prompt_ids: Sequence[int], index: int) -> int:
    """Output token `index` of the request with this prompt."""
    seed = _stable_hash(b"".join(i.to_bytes(4, "little") for i in prompt_ids))
    return _stable_hash(seed.to_bytes(8, "little") + index.to_bytes(4, "little")) % VOCAB_SIZE


def token_text(token_id: int) -> str:
    return " " + WORDS[token_id % len(WORDS)]
