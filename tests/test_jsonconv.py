"""JSON conversion of the wire dataclasses: round trips, compact events, errors by field."""

from __future__ import annotations

import json
import math

import pytest

from llumctl.policy.views import InstanceLoad, Priority, RequestLoad
from llumctl.protocol import (
    EventType,
    GenerateRequest,
    InstanceInfo,
    LoadReport,
    SamplingParams,
    StreamEvent,
    from_json_dict,
    to_compact_json_dict,
    to_json_dict,
)


def _report() -> LoadReport:
    reqs = tuple(RequestLoad(f"r{i}", 2 + i, Priority(i % 2), bool(i % 2), i) for i in range(4))
    load = InstanceLoad("i0", 40, 12, reqs[:3], reqs[3:], 1, False, 5.5, "tiny", 32, 1, 0)
    return LoadReport(InstanceInfo("i0", "http://h/i0", "vllm", "tiny"), load, 12.5, 7)


def test_a_load_report_survives_a_json_round_trip_unchanged():
    report = _report()
    assert from_json_dict(LoadReport, json.loads(json.dumps(to_json_dict(report)))) == report


def test_generate_request_round_trip_keeps_tuples_enums_and_optionals():
    req = GenerateRequest(
        "r1",
        prompt_token_ids=(1, 2, 3),
        sampling=SamplingParams(max_tokens=5, stop=("\n",), seed=None),
        priority=Priority.HIGH,
    )
    back = from_json_dict(GenerateRequest, json.loads(json.dumps(to_json_dict(req))))
    assert back == req and isinstance(back.prompt_token_ids, tuple)
    assert back.priority is Priority.HIGH and back.prompt is None


def test_infinite_floats_travel_as_strings_and_come_back():
    data = to_json_dict(SamplingParams(temperature=math.inf))
    assert data["temperature"] == "inf"
    assert from_json_dict(SamplingParams, data).temperature == math.inf


def test_compact_token_events_drop_defaults_and_decode_to_the_same_event():
    event = StreamEvent(EventType.TOKEN, index=7, token_id=42, text="hi")
    compact = to_compact_json_dict(event)
    assert compact == {"type": "token", "index": 7, "token_id": 42, "text": "hi"}
    assert from_json_dict(StreamEvent, compact) == event
    end = StreamEvent(EventType.MIGRATED, to_instance="b", to_url="http://b", at=9)
    assert from_json_dict(StreamEvent, to_compact_json_dict(end)) == end


def test_unknown_keys_are_ignored():
    data = {"type": "token", "index": 1, "from_a_newer_version": [1, 2]}
    assert from_json_dict(StreamEvent, data).index == 1


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"type": "token", "index": "7"}, "StreamEvent.index: expected an integer"),
        ({"type": "token", "index": True}, "StreamEvent.index: expected an integer"),
        ({"type": "nonsense"}, "StreamEvent.type"),
        ({"index": 1}, "StreamEvent: "),  # `type` is required
        ([1, 2], "StreamEvent: expected an object"),
    ],
)
def test_bad_values_name_the_class_and_field(data: object, message: str):
    with pytest.raises(ValueError, match=message):
        from_json_dict(StreamEvent, data)


def test_nested_errors_name_the_inner_class():
    data = to_json_dict(_report())
    data["load"]["running"][0]["num_blocks"] = "many"
    with pytest.raises(ValueError, match=r"LoadReport.load: InstanceLoad.running: .*num_blocks"):
        from_json_dict(LoadReport, data)
