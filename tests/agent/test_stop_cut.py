"""Where a migration cuts a stopped request: at its stream, whatever the engine says."""

from __future__ import annotations

from agent.engines.base import StoppedRequest
from agent.llumlet import cut_at_stream
from agent.streams import RequestStream

BLOCK = 4
PROMPT = tuple(range(100, 106))  # 6 prompt tokens


def _stream(token_ids, first_index=0) -> RequestStream:
    stream = RequestStream("r", first_index=first_index, num_prompt_tokens=len(PROMPT))
    for t in token_ids:
        stream.append(t, "")
    return stream


def _stopped(outputs) -> StoppedRequest:
    # What an engine reports: KV for every token but the last.
    return StoppedRequest("r", PROMPT, tuple(outputs), len(PROMPT) + len(outputs) - 1)


def test_an_engine_that_agrees_with_its_stream_is_left_alone():
    stopped = _stopped([1, 2, 3, 4, 5])
    assert cut_at_stream(stopped, _stream([1, 2, 3, 4, 5])) is stopped


def test_tokens_the_reader_never_took_are_cut_with_their_blocks():
    stopped = _stopped(range(1, 12))  # 6 + 11 tokens: 4 full blocks
    cut = cut_at_stream(stopped, _stream([1, 2, 3]))
    assert cut.output_token_ids == (1, 2, 3)
    assert cut.num_kv_tokens == 8  # 9 tokens; the 9th's KV is not computed yet
    assert cut.num_kv_blocks(BLOCK) == 2


def test_a_stream_ahead_of_the_engine_keeps_its_tokens_and_only_computed_blocks():
    stopped = _stopped([1, 2])  # 8 tokens: KV for 7 (the last token's is pending)
    cut = cut_at_stream(stopped, _stream([1, 2, 3, 4, 5, 6]))
    assert cut.output_token_ids == (1, 2, 3, 4, 5, 6)
    assert cut.num_kv_tokens == 7  # what the engine computed, not what the stream holds
    assert cut.num_kv_blocks(BLOCK) == 2  # the second one partial


def test_a_migrated_in_stream_keeps_the_outputs_from_before_it():
    stopped = _stopped([1, 2, 3, 4, 5, 6, 7])
    cut = cut_at_stream(stopped, _stream([4, 5], first_index=3))
    assert cut.output_token_ids == (1, 2, 3, 4, 5)
    assert cut.num_kv_tokens == 10  # 11 tokens at the cut


def test_blocks_past_the_first_differing_token_are_not_copied():
    stopped = _stopped([1, 2, 3, 4, 5, 6, 7, 8, 9, 10])  # 16 tokens: 3 full blocks
    cut = cut_at_stream(stopped, _stream([1, 9, 9, 9, 9, 9, 9, 9, 9, 9]))
    assert cut.output_token_ids == (1, 9, 9, 9, 9, 9, 9, 9, 9, 9)
    assert cut.num_kv_tokens == 7  # positions 0-6 (prompt and the first output) agree
    assert cut.num_kv_blocks(BLOCK) == 2
