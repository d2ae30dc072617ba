"""A clip's timeline drawn: p(fake) per scored frame over time, over a strip of its frames
(``detect --timeline``)."""

from __future__ import annotations

from typing import Any

import numpy as np


def plot_timeline(
    clip: Any, regions: list[dict[str, Any]], threshold: float, path: Any, title: str = ""
) -> None:
    """Save a PNG at ``path``: above, each scored frame's p(fake) at its time (the threshold
    dashed); below, a strip of the frames scored, at most 12 evenly chosen."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    times = [r["t"] for r in regions]
    probs = [r["p"] for r in regions]
    figure, (axis, strip) = plt.subplots(
        2, 1, figsize=(9, 4.2), gridspec_kw={"height_ratios": [2.2, 1]}
    )
    axis.plot(times, probs, marker="o", ms=3, lw=1.2, color="#b22222")
    axis.axhline(threshold, ls="--", lw=0.8, color="grey", label=f"threshold {threshold:.2f}")
    end = clip.duration if clip.duration else (max(times) if times else 1.0)
    axis.set_xlim(0, max(end, 1e-3))
    axis.set_ylim(0, 1)
    axis.set_ylabel("p(fake)")
    axis.set_xlabel("seconds")
    axis.grid(alpha=0.3)
    axis.legend(loc="upper right", fontsize=8)
    axis.set_title(title, fontsize=9)
    picks = np.linspace(0, len(clip.frames) - 1, min(12, len(clip.frames))).round().astype(int)
    thumbs = [clip.frames[i].convert("RGB").resize((96, 96 * clip.frames[i].height
                                                    // max(clip.frames[i].width, 1) or 1))
              for i in sorted(set(picks.tolist()))]  # fmt: skip
    height = max(t.height for t in thumbs)
    canvas = np.full((height, 96 * len(thumbs) + 4 * (len(thumbs) - 1), 3), 255, np.uint8)
    for k, thumb in enumerate(thumbs):
        canvas[: thumb.height, k * 100 : k * 100 + 96] = np.asarray(thumb)
    strip.imshow(canvas)
    strip.set_axis_off()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
