"""The where-map drawn over its image, each tile coloured by p(fake) (``detect --where``)."""

from __future__ import annotations

from typing import Any

from PIL import Image


def plot_where(image: Image.Image, where: dict[str, Any], path: str | Any, title: str = "") -> None:
    """``image`` (as it was tiled: :func:`at_least_one_tile`), in grey, with each tile coloured
    by its p(fake), the tile grid outlined and a colour bar, saved as a PNG at ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    w, h = where["size"]
    figure, axis = plt.subplots(figsize=(7, 7 * h / max(w, 1) + 0.6))
    # in grey, so that every colour on the figure is the map's, not the picture's
    axis.imshow(image.convert("L"), cmap="gray", vmin=0, vmax=255)
    cmap = plt.get_cmap("RdYlGn_r")
    for region in where["regions"]:
        (left, top, right, bottom), p = region["box"], region["p"]
        axis.add_patch(
            Rectangle((left, top), right - left, bottom - top, facecolor=cmap(p), alpha=0.45)
        )
        axis.add_patch(
            Rectangle(
                (left, top), right - left, bottom - top, fill=False, edgecolor="white", lw=0.6
            )
        )
    axis.set_xlim(0, w)
    axis.set_ylim(h, 0)
    axis.set_axis_off()
    mappable = matplotlib.cm.ScalarMappable(cmap=cmap, norm=matplotlib.colors.Normalize(0, 1))
    figure.colorbar(mappable, ax=axis, fraction=0.04, pad=0.02, label="p(fake) per tile")
    axis.set_title(title, fontsize=9)
    figure.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(figure)
