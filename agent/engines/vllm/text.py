"""Incremental detokenisation that does not depend on where a request started.

vLLM's own text deltas are computed by a detokenizer seeded from the request's prompt; after
a migration the destination's "prompt" is the original prompt plus the output so far, and its
deltas need not match what the source would have produced (they have been seen to repeat
the whole prompt). So the instance derives the text itself, from token ids only: each delta
is decode(window + new) minus decode(window), where the window is a few tokens before the new
ones. Seeded with the same tokens, the source and the destination produce the same text.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

# Tokens of context kept before the unread ones: enough for sentencepiece's leading-space
# rule and for multi-byte characters split over several tokens.
_WINDOW = 6
_INCOMPLETE = "\ufffd"


class IncrementalText:
    """Turns a growing list of output token ids into text deltas."""

    def __init__(
        self, tokenizer: Any, context_ids: Sequence[int], replay_ids: Sequence[int] = ()
    ) -> None:
        """`context_ids` precede the output (the prompt's tail); `replay_ids` are output
        tokens already delivered elsewhere (before a migration): they are replayed one by
        one, as the source saw them, so text the source withheld (an incomplete character
        at the stop) is emitted here rather than lost."""
        self._tokenizer = tokenizer
        self._ids = list(context_ids)
        self._read = len(self._ids)
        self._prefix = max(0, self._read - _WINDOW)
        for token_id in replay_ids:
            self.add((token_id,))

    def add(self, token_ids: Sequence[int], *, is_final: bool = False) -> str:
        """Text added by `token_ids`; withheld while a character is incomplete."""
        self._ids.extend(token_ids)
        before = self._decode(self._prefix, self._read)
        after = self._decode(self._prefix, len(self._ids))
        if len(after) <= len(before) or (after.endswith(_INCOMPLETE) and not is_final):
            return ""
        self._prefix = max(self._prefix, len(self._ids) - _WINDOW)
        self._read = len(self._ids)
        return after[len(before) :]

    def _decode(self, start: int, end: int) -> str:
        if end <= start:
            return ""
        return str(self._tokenizer.decode(self._ids[start:end], skip_special_tokens=True))
