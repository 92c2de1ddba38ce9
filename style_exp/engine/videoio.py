"""Reading clips (a video file or a directory of frames) and writing videos and previews.

Video goes through imageio-ffmpeg, which ships its own ffmpeg binary, so nothing
needs installing system-wide. Clips are read lazily, one frame at a time, after
everything that can be checked cheaply (readable, not empty, one frame size) has
been checked, so a bad input fails before any stylisation starts.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import imageio_ffmpeg
import numpy as np
from PIL import Image

from style_exp.engine.images import ImageError, load_image, resize, to_uint8
from style_exp.spec.errors import UserError

VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".gif")
FRAME_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
DIRECTORY_FPS = 25.0  # a directory of frames carries no frame rate
PREVIEW_SIDE = 256
PREVIEW_MAX_FRAMES = 120
ItemT = TypeVar("ItemT")


class VideoError(UserError):
    """A clip is missing, unreadable, empty or inconsistent; ``where`` names it."""


def is_clip(path: str | os.PathLike) -> bool:
    """Whether ``content`` names a video (by extension) or a directory of frames."""
    path = Path(path)
    return path.is_dir() or path.suffix.lower() in VIDEO_SUFFIXES


@dataclass(frozen=True)
class Clip:
    """A clip's frames at the working size, chosen by stride and a frame limit."""

    source: Path
    count: int  # frames that will be read (after stride and max_frames)
    fps: float  # of the stylised video: the source's divided by the stride
    size: tuple[int, int]  # (width, height) of the working frames, both even
    has_audio: bool
    stride: int = 1
    frame_files: tuple[Path, ...] = ()  # for a directory of frames
    available: int = 0  # frames in the source, before stride and max_frames

    def frames(self) -> Iterator[np.ndarray]:
        """The frames as RGB float32 0..255 at ``size``, read one at a time."""
        raw = (self._directory_frames() if self.frame_files else self._video_frames())
        for frame in self.chosen(raw):
            yield resize(frame, self.size)

    def chosen(self, items: Iterable[ItemT]) -> Iterator[ItemT]:
        """Of one item per source frame, those of the frames read (stride, max_frames):
        how the frames are picked, and a per-frame label image with them."""
        for index, item in enumerate(items):
            if index >= self.count * self.stride:
                return
            if index % self.stride == 0:
                yield item

    def _directory_frames(self) -> Iterator[np.ndarray]:
        for path in self.frame_files:
            yield load_image(path)

    def _video_frames(self) -> Iterator[np.ndarray]:
        reader = imageio_ffmpeg.read_frames(str(self.source))
        try:  # the checks read it, but it may have changed since: fail naming the file
            width, height = next(reader)["size"]
        except (OSError, RuntimeError, StopIteration) as error:
            raise _unreadable(self.source, error) from error
        try:
            for buffer in reader:
                yield np.frombuffer(buffer, np.uint8).reshape(height, width, 3).astype(np.float32)
        finally:
            reader.close()


def open_clip(path: str | os.PathLike, longest_side: int, stride: int = 1,
              max_frames: int = 0, fps: float | None = None) -> Clip:
    """Check a clip and describe what will be read; ``max_frames=0`` means all."""
    path = Path(path)
    if path.is_dir():
        files = frame_files(path)
        source_size, source_fps, available, audio = _image_size(files), DIRECTORY_FPS, \
            len(files), False
    elif path.is_file():
        files = ()
        source_size, source_fps, available, audio = _probe_video(path)
    else:
        raise VideoError("video not found", str(path))
    count = -(-available // stride)  # frames 0, stride, 2*stride, ...
    if max_frames:
        count = min(count, max_frames)
    return Clip(path, count, fps or source_fps / stride, even_size(source_size, longest_side),
                audio, stride, tuple(files), available)


def even_size(size: tuple[int, int], longest_side: int) -> tuple[int, int]:
    """(width, height) scaled so the longer side is about ``longest_side``, both even.

    H.264 in the widely playable yuv420p format needs even dimensions.
    """
    width, height = size
    scale = longest_side / max(width, height)
    return (max(2, 2 * round(width * scale / 2)), max(2, 2 * round(height * scale / 2)))


def frame_files(directory: Path, key: str = "") -> list[Path]:
    """The directory's images in natural order (frame2 before frame10): a clip's frames,
    and a per-frame label folder's images (``key`` names its config key in errors)."""
    files = [p for p in directory.iterdir() if p.suffix.lower() in FRAME_SUFFIXES]
    if not files:
        what = f"folder {directory} has no images" if key else "frames directory has no images"
        raise VideoError(f"{what} (looked for {', '.join(FRAME_SUFFIXES)})",
                         key or str(directory))

    def natural(path: Path) -> list[object]:
        return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]

    return sorted(files, key=natural)


def _image_size(files: list[Path]) -> tuple[int, int]:
    """The frames' common (width, height), read from the headers only."""
    sizes = {}
    for path in files:
        try:
            with Image.open(path) as image:
                sizes[path] = image.size
        except OSError as error:
            raise ImageError(f"cannot read frame: {error}", str(path)) from error
    first = files[0]
    for path, size in sizes.items():
        if size != sizes[first]:
            raise VideoError(
                f"frames in {first.parent} differ in size: {first.name} is "
                f"{sizes[first][0]}x{sizes[first][1]} but {path.name} is {size[0]}x{size[1]}")
    return sizes[first]


def _probe_video(path: Path) -> tuple[tuple[int, int], float, int, bool]:
    """Size, frame rate, frame count and whether there is sound, or a clear error."""
    try:
        reader = imageio_ffmpeg.read_frames(str(path))
        meta = next(reader)
        reader.close()
        frames, _ = imageio_ffmpeg.count_frames_and_secs(str(path))
    except (OSError, RuntimeError, StopIteration) as error:
        raise _unreadable(path, error) from error
    if frames == 0 or not meta.get("size"):
        raise VideoError("video has no frames", str(path))
    fps = float(meta.get("fps") or 0.0)
    if not fps > 0:
        raise VideoError("video reports no frame rate", str(path), "set video.fps")
    return tuple(meta["size"]), fps, frames, bool(meta.get("audio_codec"))


def _unreadable(path: Path, error: Exception) -> VideoError:
    """A video ffmpeg cannot read, with ffmpeg's reason."""
    return VideoError(f"cannot read video: {_ffmpeg_reason(error)}", str(path))


def _ffmpeg_reason(error: Exception) -> str:
    """The last informative line of ffmpeg's report, not its whole banner."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    errors = [line for line in lines if "rror" in line or "nvalid" in line]
    return (errors or lines or [type(error).__name__])[-1]


def write_video(frames: Sequence[np.ndarray], path: Path, fps: float,
                audio_from: Path | None = None) -> Path:
    """H.264 (yuv420p) at ``fps``, with the audio of ``audio_from`` if given.

    Written to a temporary file and renamed, so a failure leaves no broken video.
    The audio is cut to the video's length when frames were dropped (ffmpeg's
    ``-shortest`` would drop the last frames instead).
    """
    duration = ["-t", f"{len(frames) / fps:.6f}"]
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, suffix=path.suffix)
    os.close(handle)
    writer = None
    try:
        for frame in frames:
            if writer is None:
                writer = imageio_ffmpeg.write_frames(
                    temporary, (frame.shape[1], frame.shape[0]), fps=fps, codec="libx264",
                    quality=8, macro_block_size=2,
                    audio_path=str(audio_from) if audio_from else None,
                    audio_codec="aac" if audio_from else None,
                    output_params=duration if audio_from else None)
                writer.send(None)
            writer.send(np.ascontiguousarray(to_uint8(frame)))
        if writer is None:
            raise VideoError(f"no frames to write to {path}")
        writer.close()
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    return path


def write_preview(frames: Iterable[np.ndarray], path: Path, fps: float) -> Path:
    """An animated GIF at a small size, for a glance in the MLflow UI or a browser."""
    images = []
    for index, frame in enumerate(frames):
        if index >= PREVIEW_MAX_FRAMES:
            break
        scale = min(1.0, PREVIEW_SIDE / max(frame.shape[:2]))
        small = resize(frame, (max(1, round(frame.shape[1] * scale)),
                               max(1, round(frame.shape[0] * scale))))
        images.append(Image.fromarray(to_uint8(small)))
    if not images:
        raise VideoError(f"no frames for the preview {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    images[0].save(path, save_all=True, append_images=images[1:], loop=0,
                   duration=round(1000 / fps))
    return path
