"""Text deltas derived from token ids continue identically across a migration splice."""

from __future__ import annotations

import random

import pytest

from agent.engines.vllm.text import IncrementalText


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_model_dir))


def _deltas(tokenizer, context, outputs, *, chunk=1, is_finished=True, replay=()):
    text = IncrementalText(tokenizer, context, replay_ids=replay)
    parts = []
    for i in range(0, len(outputs), chunk):
        piece = outputs[i : i + chunk]
        is_last = i + chunk >= len(outputs)
        parts.append(text.add(piece, is_final=is_finished and is_last))
    return "".join(parts)


def test_text_equals_decoding_of_the_output(tokenizer):
    rng = random.Random(1)
    prompt = [rng.randrange(16, 500) for _ in range(20)]
    outputs = [rng.randrange(16, 500) for _ in range(60)]
    whole = tokenizer.decode(prompt[-6:] + outputs, skip_special_tokens=True)
    text = _deltas(tokenizer, prompt[-6:], outputs)
    assert text and whole.endswith(text)
    # The prompt never leaks into the output text.
    assert not text.startswith(tokenizer.decode(prompt[-6:], skip_special_tokens=True))


@pytest.mark.parametrize("split", [1, 7, 30, 59])
def test_text_is_the_same_when_split_at_any_token(tokenizer, split):
    rng = random.Random(split)
    prompt = [rng.randrange(16, 500) for _ in range(12)]
    outputs = [rng.randrange(16, 500) for _ in range(60)]
    unmigrated = _deltas(tokenizer, prompt[-6:], outputs)
    # The source is stopped mid-stream: its last delta is not a final one.
    source = _deltas(tokenizer, prompt[-6:], outputs[:split], is_finished=False)
    destination = _deltas(tokenizer, prompt[-6:], outputs[split:], chunk=3, replay=outputs[:split])
    assert source + destination == unmigrated
