"""``prism features render``: PCA renders of image files (PNG) and videos (MP4, the input beside its render).

Frames go through the same predictor as any image (``Predictor.predict_prepared``), in order, with the
collection-wide colour scale of the bundle's basis, so a patch that looks the same in two frames gets the
same colour in both. Videos are decoded and encoded with PyAV (H.264, yuv420p: even sides).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from prism.inference.predictor import Predictor

__all__ = ["VIDEO_EXTENSIONS", "read_video_frames", "render_image_files", "render_video", "write_video"]

VIDEO_EXTENSIONS = {".mp4", ".avi", ".mov", ".mkv", ".webm"}


def read_video_frames(path: str | Path, stride: int = 1) -> Iterator[np.ndarray]:
    """uint8 (H, W, 3) frames of a video in order, every ``stride``-th."""
    import av

    with av.open(str(path)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i % stride == 0:
                yield frame.to_ndarray(format="rgb24")


def video_fps(path: str | Path) -> float:
    import av

    with av.open(str(path)) as container:
        rate = container.streams.video[0].average_rate
        return float(rate) if rate else 25.0


def write_video(frames: Iterator[np.ndarray], path: str | Path, fps: float = 25.0) -> int:
    """Encode uint8 (H, W, 3) frames as an H.264 MP4 (odd sides padded by one pixel); returns the count."""
    from fractions import Fraction

    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with av.open(str(path), mode="w") as container:
        stream = None
        for frame in frames:
            h, w = frame.shape[:2]
            if stream is None:
                stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000))
                stream.width, stream.height = w + w % 2, h + h % 2
                stream.pix_fmt = "yuv420p"
                stream.options = {"crf": "18"}
            if w % 2 or h % 2:
                frame = np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                container.mux(packet)
            n += 1
        if stream is not None:
            for packet in stream.encode():
                container.mux(packet)
    return n


def _render_batch(pred: Predictor, frames: list[np.ndarray], options: Any) -> list[np.ndarray]:
    """Frames (H, W, 3) → input | render, each at its frame's size, in one forward pass."""
    from prism.engine.inputs import unbatch

    prepared = [pred.prepare(f, f"frame {i}", options) for i, f in enumerate(frames)]
    rows = unbatch(pred.raw_predictions(prepared, tta=False), len(frames))
    return [pred.task.render_prediction(r, f.shape[:2], options, f) for r, f in zip(rows, frames, strict=True)]


def render_video(pred: Predictor, path: str | Path, out: str | Path, options: Any = None, stride: int = 1,
                 batch_size: int = 16, progress: bool = True) -> int:
    """Render every ``stride``-th frame of ``path`` (input | render side by side) into the MP4 ``out``."""
    from tqdm.auto import tqdm

    opts = pred.options({**(options or {}), "outputs": ["png"]}, tta=False)
    fps = video_fps(path) / stride

    def rendered() -> Iterator[np.ndarray]:
        batch: list[np.ndarray] = []
        with tqdm(desc=Path(path).name, unit="frame", disable=not progress) as bar:
            for frame in read_video_frames(path, stride):
                batch.append(frame)
                if len(batch) == batch_size:
                    yield from _render_batch(pred, batch, opts)
                    bar.update(len(batch))
                    batch = []
            if batch:
                yield from _render_batch(pred, batch, opts)
                bar.update(len(batch))

    return write_video(rendered(), out, fps)


def output_names(paths: list[Path]) -> list[Path]:
    """Each input's place under the output folder: its path relative to the inputs' common folder, without
    its suffix (``a/x.jpg``, ``b/x.jpg`` → ``a/x``, ``b/x``), so equal names in different folders never
    overwrite each other."""
    resolved = [Path(p).resolve() for p in paths]
    if not resolved:
        return []
    common = Path(os.path.commonpath([p.parent for p in resolved]))
    return [p.relative_to(common).with_suffix("") for p in resolved]


def render_image_files(pred: Predictor, paths: list[Path], out: Path, options: dict[str, Any] | None = None,
                       batch_size: int = 16, progress: bool = True) -> list[Path]:
    """One ``<name>.pca.png`` per image under ``out`` (and ``<name>.pca.npy`` when ``outputs`` asks), where
    ``<name>`` is the image's path below the inputs' common folder (:func:`output_names`)."""
    opts = pred.options(options or {}, tta=False)
    results = pred.predict([str(p) for p in paths], batch_size=batch_size, options=opts, progress=progress)
    written = []
    for name, r in zip(output_names(paths), results, strict=True):
        for key, ext in (("render", "png"), ("components", "npy")):
            if key in r:
                target = out / f"{name}.pca.{ext}"
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(r[key].data)
                written.append(target)
    return written
