"""The timeline bench's reading of a `dicomflow up` log: each stage's batches, its span and
how much of it was spent inside batches."""

from load_test.bench.timeline import batches, spans


def test_batches_and_spans_from_the_stack_log() -> None:
    log = [
        'extractor      | {"messages": 200, "ms": 500.0, "service": "extractor", '
        '"timestamp": "2026-12-07T06:00:00.500000Z", "msg": "batch handled"}',
        'storage-writer | {"messages": 200, "ms": 800.0, "service": "storage-writer", '
        '"timestamp": "2026-12-07T06:00:01.400000Z", "msg": "batch handled"}',
        'extractor      | {"messages": 100, "ms": 250.0, "service": "extractor", '
        '"timestamp": "2026-12-07T06:00:00.750000Z", "msg": "batch handled"}',
        'api            | {"service": "api", "msg": "request", "timestamp": "x"}',
        "broker         | not json | batch handled",
    ]
    found = batches(log)
    assert [(b.service, b.messages) for b in found] == [
        ("extractor", 200),
        ("storage-writer", 200),
        ("extractor", 100),
    ]
    by_name = {s.service: s for s in spans(found)}
    ex, sw = by_name["extractor"], by_name["storage-writer"]
    assert (ex.batches, ex.messages) == (2, 300)
    assert (round(ex.first, 3), round(ex.last, 3), round(ex.busy, 3)) == (0.0, 0.75, 0.75)
    assert (round(sw.first, 3), round(sw.last, 3), round(sw.busy, 3)) == (0.6, 1.4, 0.8)
    assert spans([]) == []
