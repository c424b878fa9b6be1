"""What runs inside an isolated worker (libs/runtime/sandbox.py): a file path in, JPEG bytes
out. Arguments and results are small picklable values; the pixels never cross the boundary."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from libs.imaging.decode import decode_frame, default_frames, frame_count, read_header
from libs.imaging.jpeg import encode_jpeg
from libs.imaging.render import Unrenderable, render
from libs.imaging.window import Window

Kind = Literal["preview", "thumbnail"]


@dataclass(frozen=True)
class RenderRequest:
    frames: tuple[int, ...] | None = None  # None: the first, and the middle of a multi-frame
    kinds: tuple[Kind, ...] = ("preview", "thumbnail")
    window: Window | None = None  # None: the file's own (or automatic)
    thumbnail_size: int = 256
    quality: int = 90


@dataclass(frozen=True)
class RenderedImage:
    frame: int
    kind: Kind
    jpeg: bytes
    width: int
    height: int
    voi: str
    window: Window | None


@dataclass(frozen=True)
class RenderResult:
    frames: int
    images: tuple[RenderedImage, ...]


def render_file(path: str, request: RenderRequest) -> RenderResult:
    """Decode and render the requested frames of one file; `Unrenderable` says why not.

    Any other failure while reading or rendering (a malformed LUT, a value of the wrong
    type) comes from the file too, and fails the same way on every attempt: it becomes
    `Unrenderable` with the exception named. MemoryError is left to the isolation layer.
    """
    try:
        return _render(Path(path), request)
    except (Unrenderable, MemoryError):
        raise
    except Exception as exc:
        raise Unrenderable(f"cannot render: {type(exc).__name__}: {exc}") from None


def _render(path: Path, request: RenderRequest) -> RenderResult:
    ds = read_header(path)
    frames = request.frames if request.frames is not None else tuple(default_frames(ds))
    images: list[RenderedImage] = []
    for index in frames:
        shown = render(decode_frame(path, ds, index), ds, request.window)
        for kind in request.kinds:
            max_side = request.thumbnail_size if kind == "thumbnail" else None
            data, width, height = encode_jpeg(
                shown.pixels, quality=request.quality, max_side=max_side
            )
            images.append(RenderedImage(index, kind, data, width, height, shown.voi, shown.window))
    return RenderResult(frame_count(ds), tuple(images))
