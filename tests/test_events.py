"""sdlora.events: the one events.jsonl reader (EventTail, read_events on it) skips torn lines and follows a file."""

from __future__ import annotations

import json

from sdlora.events import EventBus, EventTail, JsonlWriter, read_events


def test_torn_lines_are_skipped_and_a_half_written_last_line_waits(tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_bytes(b'{"event": "start", "time": 1}\n{"event": "st\n\xff\xfe\n{"event": "step", "time": 2, "step": 1}\n'
                     b'{"event": "step", "ti')
    assert [e["event"] for e in read_events(path)] == ["start", "step"]
    tail = EventTail(path)
    assert len(tail.read()) == 2
    with open(path, "ab") as fh:
        fh.write(b'me": 3, "step": 2}\n')
    assert [e.get("step") for e in tail.read()] == [None, 1, 2]
    assert list(read_events(tmp_path / "missing.jsonl")) == []


def test_a_tail_reads_what_a_writer_appends_and_starts_again_on_a_replaced_file(tmp_path):
    path = tmp_path / "events.jsonl"
    bus = EventBus([JsonlWriter(path)])
    tail = EventTail(path)
    for step in (1, 2, 3):
        bus.emit("step", step=step, loss=0.5)
        assert [e["step"] for e in tail.read()] == list(range(1, step + 1))
    bus.close()
    path.write_text(json.dumps({"event": "start", "time": 9}) + "\n", encoding="utf-8")  # a new run, same folder
    assert [e["event"] for e in tail.read()] == ["start"]
