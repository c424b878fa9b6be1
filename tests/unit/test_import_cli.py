"""The event-stream parser of `dicomflow imports watch`, and its summary line."""

from __future__ import annotations

from libs.tools.import_cli import SseEvent, SseParser, summary


def feed(parser: SseParser, text: str) -> list[SseEvent]:
    out = []
    for line in text.split("\n"):
        event = parser.feed(line)
        if event is not None:
            out.append(event)
    return out


def test_parser_follows_the_event_stream_rules() -> None:
    parser = SseParser()
    events = feed(
        parser,
        'retry: 500\n\n: heartbeat\n\nid: a1\nevent: progress\ndata: {"x":\ndata: 1}\n\n'
        "data:no space\n\nid: b2\nevent: end\ndata: {}\n\n",
    )
    assert parser.retry_ms == 500
    assert [(e.event, e.data, e.id) for e in events] == [
        ("progress", '{"x":\n1}', "a1"),
        ("message", "no space", "a1"),  # the last id stays until another is given
        ("end", "{}", "b2"),
    ]
    assert parser.last_id == "b2"
    assert feed(parser, "event: lonely\n\n") == []  # no data: no event
    assert feed(parser, "retry: soon\nid: bad\x00id\n\n") == []
    assert (parser.retry_ms, parser.last_id) == (500, "b2")


def test_summary_names_what_happened() -> None:
    counters = {
        "files_scanned": 10,
        "pending": 2,
        "new_instances": 5,
        "duplicates": 1,
        "patients_found": 3,
        "patients_new": 2,
        "failed": 0,
        "conflicts": 0,
        "cancelled": 2,
    }
    assert summary({"status": "cancelling", "counters": counters}) == (
        "cancelling: 8/10 files done, 5 new images, 1 already stored, 3 patients (2 new), "
        "0 failed, 2 cancelled"
    )
