"""The load-test summary reads Locust's stats CSV as Locust writes it."""

from __future__ import annotations

from pathlib import Path

from load_test.run import markdown, summary

HEADER = (
    "Type,Name,Request Count,Failure Count,Median Response Time,Average Response Time,"
    "Min Response Time,Max Response Time,Average Content Size,Requests/s,Failures/s,"
    "50%,66%,75%,80%,90%,95%,98%,99%,99.9%,99.99%,100%"
)


def test_summary_and_markdown(tmp_path: Path) -> None:
    stats = tmp_path / "x_stats.csv"
    stats.write_text(
        HEADER
        + "\nGET,/v1/studies,120,3,14,17.2,3,130,900,10.5,0.2,14,20,24,28,35,43,53,78,130,130,130"
        + "\n,Aggregated,120,3,14,17.2,3,130,900,10.5,0.2,14,20,24,28,35,43,53,78,130,130,130"
        + "\nGET,/never,0,0,0,0,0,0,0,0,0,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A\n",
        encoding="utf-8",
    )
    rows = summary(stats)
    assert rows[0] == {
        "type": "GET",
        "name": "/v1/studies",
        "requests": 120.0,
        "failures": 3.0,
        "rps": 10.5,
        "p50_ms": 14.0,
        "p95_ms": 43.0,
        "p99_ms": 78.0,
    }
    assert rows[2]["p99_ms"] is None
    meta = {"started": "t", "users": 2, "spawn_rate": 1, "seconds": 5, "cpus": 2, "seeded": 48}
    text = markdown(rows, meta)
    assert "| GET | /v1/studies | 120 | 3 | 10.5 | 14 | 43 | 78 |" in text
    assert "| GET | /never | 0 | 0 | 0.0 |  |  |  |" in text
