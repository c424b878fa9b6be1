"""Generate `schemas/<topic>.json` from the event models (`make schemas`).

A test compares these files with the models and fails when they drift, so the
published contract for downstream consumers always matches the code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from libs.contracts.events import PIPELINE_EVENTS, DeadLetter

SCHEMAS_DIR = Path(__file__).resolve().parents[2] / "schemas"


def rendered() -> dict[str, str]:
    out: dict[str, str] = {}
    for event in PIPELINE_EVENTS:
        schema: dict[str, Any] = event.model_json_schema(mode="serialization")
        schema["$id"] = f"urn:dicomflow:topic:{event.TOPIC}"
        schema["x-topic"] = event.TOPIC
        out[f"{event.TOPIC}.json"] = json.dumps(schema, indent=2, ensure_ascii=False) + "\n"
    dlq: dict[str, Any] = DeadLetter.model_json_schema(mode="serialization")
    dlq["$id"] = "urn:dicomflow:topic:*.dlq"
    dlq["x-topic"] = "<topic>.dlq"
    out["dead-letter.json"] = json.dumps(dlq, indent=2, ensure_ascii=False) + "\n"
    return out


def main() -> None:
    SCHEMAS_DIR.mkdir(exist_ok=True)
    for name, text in rendered().items():
        (SCHEMAS_DIR / name).write_text(text, encoding="utf-8")
        print(f"wrote schemas/{name}")


if __name__ == "__main__":
    main()
