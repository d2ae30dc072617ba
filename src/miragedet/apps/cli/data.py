"""miragedet audit-data and make-synthetic: looking at data and making stand-in sets."""

from __future__ import annotations

from pathlib import Path

import typer

from .common import (
    console,
    csv_list,
    fail,
)


def audit_data(
    data: str = typer.Argument(..., help="Data root (any layout) or manifest."),
    output: Path = typer.Option(Path("audit"), "--output", "-o"),
    layout: str = typer.Option("auto"),
    split: str = typer.Option(None, help="GenImage split (default val)."),
    warn_above: float = typer.Option(
        0.2, help="Warn when the metadata baseline beats chance by more than this."
    ),
) -> None:
    """Can the classes be told apart from file metadata alone? Formats, JPEG quality, sizes,
    and a cross-validated metadata-only baseline."""
    from ...evaluation.audit import audit_data as run_audit

    try:
        result = run_audit(data, output, layout=layout, split=split, warn_above=warn_above)
    except (ValueError, OSError) as exc:
        raise fail(exc) from exc
    console.print((output / "audit.md").read_text(), markup=False, soft_wrap=True)
    if result["shortcut"]:
        raise typer.Exit(3)


def make_synthetic(
    root: Path = typer.Argument(..., help="Where to write the images."),
    layout: str = typer.Option("genimage", help="genimage|ufd|chameleon|generic"),
    generators: str = typer.Option(
        "grid-2,grid-2-faint",
        help="Comma-separated stand-in generators: grid-2, grid-2-faint, grid-2-strong, grid-4, "
        "stripes-3 (horizontal stripes, period 3 px), chroma-2 (a period-2 pattern in the "
        "colour-difference channels, luminance unchanged). See docs/adapt.md.",
    ),
    n_per_class: int = typer.Option(64),
    size: int = typer.Option(32),
    seed: int = typer.Option(0),
    shortcut: str = typer.Option(
        None,
        help="biased: reals JPEG q90 of one size, fakes PNG of "
        "another; aligned: both alike (0_real/1_fake layout).",
    ),
    video: str = typer.Option(
        None,
        help="Write clips instead (0_real/1_fake): fake (the fingerprint in every frame), span "
        "(only in frames 40-60 of 100) or temporal (a flicker no single frame shows). See "
        "docs/video.md.",
    ),
    video_format: str = typer.Option(
        "mkv", help="With --video: mkv (FFV1), mp4 (H.264 qp 0), avi, mov, webm, webp or gif."
    ),
    frames: int = typer.Option(None, "--frames", help="With --video: frames per clip (16)."),
) -> None:
    """Write a small synthetic real/fake data set (images, or clips with --video) in one of the
    field's layouts."""
    from ...data.synthetic import write_layout, write_shortcut_set

    try:
        if video is not None:
            from ...data.synthetic_video import write_video_set

            if video not in ("fake", "span", "temporal"):
                raise ValueError("--video is fake, span or temporal")
            n_frames = frames or (100 if video == "span" else 16)
            span = (round(0.4 * n_frames), round(0.6 * n_frames)) if video == "span" else None
            suffix = "." + video_format.lstrip(".")
            write_video_set(
                root, n_per_class, video, frames=n_frames, size=size, suffix=suffix, seed=seed,
                span=span,
            )  # fmt: skip
            console.print(f"wrote {2 * n_per_class} synthetic clips ({video}) to {root}")
            return
        if shortcut is not None:
            if shortcut not in ("biased", "aligned"):
                raise ValueError("--shortcut is 'biased' or 'aligned'")
            write_shortcut_set(root, n_per_class, aligned=shortcut == "aligned", seed=seed)
            layout = f"{shortcut} 0_real/1_fake"
        else:
            write_layout(root, layout, tuple(csv_list(generators) or []), n_per_class, size, seed)
    except (ValueError, KeyError) as exc:
        raise fail(exc) from exc
    console.print(f"wrote a synthetic {layout} set to {root}")
