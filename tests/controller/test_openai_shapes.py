"""Streamed chunk shapes: the relay's pre-rendered token chunks equal the general ones."""

from __future__ import annotations

import json

import pytest

from llumctl.controller import openai_shapes as shapes
from llumctl.controller.openai_api import parse_request

TEXTS = ["", "plain", ' "quoted" \\ back', "new\nline\ttab", "ünïcödé ✓ 😀", "\x00ctl\x1f"]


@pytest.mark.parametrize("kind", ["completion", "chat"])
def test_token_sse_is_the_general_chunk_for_every_text(kind, monkeypatch):
    monkeypatch.setattr(shapes.time, "time", lambda: 1_700_000_000.5)
    body = {"model": "m", "stream": True, "max_tokens": 4}
    if kind == "chat":
        body["messages"] = [{"role": "user", "content": "hi"}]
    else:
        body["prompt"] = "hi"
    parsed = parse_request(kind, body, None, 16)
    token = shapes.token_sse(parsed, "cmpl-1")
    for text in TEXTS:
        assert token(text) == shapes.sse(shapes.chunk(parsed, "cmpl-1", text, None))
        assert json.loads(token(text)[len("data: ") :])["model"] == "m"
