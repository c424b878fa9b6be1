import os
import pstats
from pathlib import Path

from libs.runtime.profiling import profiled


def busy_stage_work() -> int:
    return sum(i * i for i in range(10_000))


def test_a_profiled_service_writes_where_its_cpu_went(tmp_path: Path) -> None:
    with profiled("dedup", tmp_path / "prof"):
        busy_stage_work()
    written = tmp_path / "prof" / f"dedup-{os.getpid()}.prof"
    functions = {name for _, _, name in pstats.Stats(str(written)).stats}  # type: ignore[attr-defined]
    assert "busy_stage_work" in functions


def test_without_a_folder_nothing_is_profiled(tmp_path: Path) -> None:
    with profiled("dedup", None):
        busy_stage_work()
    assert list(tmp_path.iterdir()) == []
