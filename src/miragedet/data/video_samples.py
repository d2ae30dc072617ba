"""Video clips in a training or validation set: each clip becomes its sampled frames, labelled as
the clip (``train --frames-per-clip``)."""

from __future__ import annotations

import dataclasses
from typing import Any

from .layouts import Sample
from .video import frame_times, is_video_file

#: Frames each training clip contributes. Our choice: 8 (frames of one clip are near-duplicates;
#: more mostly repeats the same scene, fewer loses its time span).
FRAMES_PER_VIDEO = 8


def expand_videos(image_set: Any, frames_per_video: int = FRAMES_PER_VIDEO) -> Any:
    """``image_set`` with each video clip replaced by ``frames_per_video`` frame samples spread
    evenly over it (:func:`miragedet.data.video.plan`). A clip whose duration cannot be read
    stays one sample, so that its decode error is reported like any unreadable file's."""
    samples: list[Sample] = []
    clips = 0
    for sample in image_set.samples:
        times = frame_times(sample.path, frames_per_video) if is_video_file(sample.path) else None
        if times is None:
            samples.append(sample)
            continue
        clips += 1
        samples += [dataclasses.replace(sample, frame=round(t, 6)) for t in times]
    if not clips:
        return image_set
    return dataclasses.replace(image_set, samples=samples)
