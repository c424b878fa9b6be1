"""Where previews live: next to the canonical copy, `<SOPInstanceUID>[.frame<N>].<kind>.jpg`."""

from __future__ import annotations

from libs.storage import instance_key


def preview_key(study_uid: str, series_uid: str, sop_uid: str, kind: str, frame: int = 0) -> str:
    """UIDs are validated by `instance_key`; frame 0 (the first) carries no frame suffix."""
    if kind not in {"preview", "thumbnail"} or frame < 0:
        raise ValueError(f"no preview key for kind={kind!r} frame={frame}")
    base = instance_key(study_uid, series_uid, sop_uid).removesuffix(".dcm")
    return f"{base}{f'.frame{frame}' if frame else ''}.{kind}.jpg"
