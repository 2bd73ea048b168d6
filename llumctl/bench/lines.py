"""Lines of a streamed HTTP body (server-sent events, JSON lines), split at LF or CRLF only.

httpx's `aiter_lines` splits like `str.splitlines`: also at U+0085, U+2028, U+2029 and a few
control characters. JSON escapes the control characters but leaves those three as they are
inside strings, and a completion chunk carries generated text: a token that decodes to one
of them cut a `data:` line in two, and the load generator recorded a JSON error for a request
that had succeeded (once in a suite run, through vllm-router, whose vLLM servers write such
characters raw; llumctl's controller escapes them).
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator


async def iter_lines(chunks: AsyncIterable[bytes]) -> AsyncIterator[str]:
    """Each line of the body, without its line ending (UTF-8; a bad byte is replaced)."""
    rest = b""
    async for chunk in chunks:
        # b"\n" never occurs inside a multi-byte UTF-8 character: splitting bytes is safe.
        *lines, rest = (rest + chunk).split(b"\n")
        for line in lines:
            yield line.removesuffix(b"\r").decode(errors="replace")
    if rest:
        yield rest.removesuffix(b"\r").decode(errors="replace")
