"""Rendering in isolated worker processes (libs/runtime/sandbox.py): decoding a hostile
file costs one worker and an error, never the calling service."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from libs.imaging.jobs import RenderRequest, RenderResult, render_file
from libs.runtime.sandbox import IsolatedExecutor


class Renderer(Protocol):
    async def render(self, path: Path, request: RenderRequest) -> RenderResult: ...


class IsolatedRenderer:
    def __init__(self, workers: int, memory_limit_mb: int, timeout_s: float) -> None:
        self.executor = IsolatedExecutor(
            workers, memory_limit_mb, timeout_s, preload=(render_file.__module__,)
        )

    async def render(self, path: Path, request: RenderRequest) -> RenderResult:
        """`Unrenderable`, `WorkerTimeout`, `WorkerCrashed` or the memory limit's
        PermanentError say why there is no image."""
        return await self.executor.run(render_file, str(path), request)

    async def warm_up(self) -> None:
        await self.executor.warm_up()

    def close(self) -> None:
        self.executor.close()
