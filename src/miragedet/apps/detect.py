"""`miragedet detect`: score files, folders, globs or a list on stdin, streaming rows to an output.

Rows are written (and flushed) as each batch is scored, so an interrupted run keeps what it did;
``resume`` drops a half-written last row, skips inputs already in the output and appends.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

from ..data.formats import Found, walk
from ..inference.detector import Detector, Prediction
from ..inference.rows import columns_for, row_of

FORMATS = ("table", "json", "jsonl", "csv")


def discover(args: Iterable[str], stdin: IO[str] | None = None) -> Found:
    """The inputs named by ``args``: files as given (whatever they are: a file that is not an
    image becomes an error row); folders walked recursively for images by content (the rest of
    their files listed in ``skipped`` with the reason); globs expanded; ``-`` reads one path per
    line from ``stdin``, where a folder is walked like one on the command line."""
    found = Found()
    for arg in args:
        if arg == "-":
            for line in stdin or ():
                if line.strip():
                    found.extend(_expand(line.strip(), globs=False))
        else:
            found.extend(_expand(arg, globs=True))
    return found


def _expand(arg: str, globs: bool) -> Found:
    path = Path(arg).expanduser()
    if path.is_dir():
        return walk(path)
    if globs and not path.exists() and any(ch in arg for ch in "*?["):
        found = Found()
        for match in sorted(glob.glob(arg, recursive=True)):
            found.extend(walk(match) if os.path.isdir(match) else Found([match]))
        return found
    return Found([str(path)])


def completed_rows(path: Path, fmt: str) -> list[dict[str, Any]]:
    """The complete rows of an existing output (a half-written last line is left out)."""
    if not path.is_file():
        return []
    text = path.read_text()
    if fmt == "jsonl":
        rows = []
        for line in text.splitlines(keepends=True):
            if not line.endswith("\n"):
                break
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break
        return rows
    if fmt == "csv":
        lines = text.splitlines(keepends=True)
        if lines and not lines[-1].endswith("\n"):
            lines = lines[:-1]
        return list(csv.DictReader(io.StringIO("".join(lines))))
    raise ValueError(
        f"--resume needs --format jsonl or csv (an output that grows row by row), not {fmt}"
    )


class RowWriter:
    """Streams rows as JSONL or CSV (flushed per row), collects JSON, or prints a table."""

    def __init__(
        self,
        handle: IO[str],
        fmt: str,
        columns: list[str],
        console: Any = None,
        write_header: bool = True,
    ) -> None:
        self.handle, self.fmt, self.columns, self.console = handle, fmt, columns, console
        self.rows: list[dict[str, Any]] = []
        self.csv = (
            csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
            if fmt == "csv"
            else None
        )
        if self.csv is not None and write_header:
            self.csv.writeheader()
        if fmt == "table" and console is not None:
            console.print(f"{'p(fake)':>8}  {'verdict':<9} path", style="bold")

    def write(self, row: dict[str, Any]) -> None:
        if self.fmt == "jsonl":
            self.handle.write(json.dumps(row) + "\n")
        elif self.fmt == "csv":
            self.csv.writerow({k: ("" if v is None else v) for k, v in row.items()})
        elif self.fmt == "json":
            self.rows.append(row)
            return
        else:
            self._table_row(row)
            return
        self.handle.flush()

    def _table_row(self, row: dict[str, Any]) -> None:
        from rich.markup import escape

        if row["error"]:
            line = (
                f"{'-':>8}  [red]{'error':<9}[/red] {escape(row['path'])}: {escape(row['error'])}"
            )
        else:
            shown = row.get("verdict") or row["label"]
            color = {"fake": "red", "real": "green"}.get(shown, "yellow")
            line = f"{row['fake_prob']:>8.4f}  [{color}]{shown:<9}[/{color}] {escape(row['path'])}"
            if row.get("basis") not in (None, "pixels"):
                line += f"  [bold]{escape(row['basis'])}[/bold] (pixels: {row['label']})"
            if any(c.startswith("p_") for c in self.columns):  # attribution: name the class
                line += f"  ({escape(str(row['top_class']))})"
        if row.get("frames"):
            top = max(row.get("regions") or [{"t": 0.0, "p": 0.0}], key=lambda r: r["p"])
            span = f" over {row['duration']:.1f} s" if row.get("duration") else ""
            line += f"  ({row['frames']} frames{span}, most suspicious "
            line += f"{top['p']:.4f} at {top['t']:g} s)"
        if row.get("tiles"):
            line += f"  ({row['tiles']} tiles, most suspicious {row['tile_max_fake_prob']:.4f})"
        if row.get("stability_reason"):
            line += f"\n{'':>18}[yellow]{escape(row['stability_reason'])}[/yellow]"
        if row.get("provenance") and not row["provenance"].startswith("no provenance metadata"):
            line += f"\n{'':>18}[dim]{escape(row['provenance'])}[/dim]"
        self.console.print(line, soft_wrap=True)

    def close(self) -> None:
        if self.fmt == "json":
            json.dump(self.rows, self.handle, indent=2)
            self.handle.write("\n")
            self.handle.flush()


def run_detect(
    detector: Detector,
    inputs: list[str],
    output: Path | None = None,
    fmt: str = "table",
    resume: bool = False,
    provenance: bool = False,
    console: Any = None,
    progress_console: Any = None,
    stability: Any = None,
    where: Path | None = None,
    timeline: Path | None = None,
) -> dict[str, int]:
    """Score ``inputs`` and write rows; returns counts of scored, failed and skipped inputs.
    With ``where`` (and the tiles or crop view), each image is also drawn with its where-map;
    with ``timeline``, each clip with its p(fake) over time."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if resume and output is None:
        raise ValueError("--resume needs --output (the file to continue)")
    if fmt == "table" and output is not None:
        fmt = "csv" if output.suffix == ".csv" else "jsonl"
    done: set[str] = set()
    existing: list[dict[str, Any]] = []
    if resume:
        existing = completed_rows(output, fmt)
        done = {r["path"] for r in existing}
    todo = [p for p in dict.fromkeys(inputs) if p not in done]
    names = columns_for(detector, provenance, stability is not None)
    columns = [c for c in names if c != "regions"]  # a list of objects: JSON/JSONL only
    counts = {"scored": 0, "failed": 0, "skipped": len(inputs) - len(todo)}
    handle: IO[str]
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        if resume and existing:
            _rewrite_complete(output, fmt, existing, columns)
            handle = output.open("a", newline="")
        else:
            handle = output.open("w", newline="")
    else:
        import sys

        handle = sys.stdout
    writer = RowWriter(handle, fmt, columns, console, write_header=not (resume and existing))
    try:
        with Progress(
            TextColumn("scoring"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=progress_console,
            transient=True,
            disable=progress_console is None or len(todo) < 2,
        ) as progress:
            task = progress.add_task("score", total=len(todo))
            for prediction in detector.iter_score(todo, provenance=provenance, stability=stability):
                writer.write(row_of(prediction, names))
                if where is not None and prediction.tiles is not None:
                    _draw_where(detector, prediction, where)
                if timeline is not None and prediction.video is not None:
                    _draw_timeline(detector, prediction, timeline)
                counts["failed" if prediction.error else "scored"] += 1
                progress.update(task, advance=1)
    finally:
        writer.close()
        if output is not None:
            handle.close()
    return counts


def where_path(folder: Path, source: str) -> Path:
    """The where-map PNG of ``source``: its name plus a short hash of the full path (two folders'
    IMG_0001.JPG do not collide)."""
    import hashlib

    digest = hashlib.sha256(source.encode()).hexdigest()[:8]
    return folder / f"{Path(source).stem}-{digest}.png"


def _draw_where(detector: Detector, prediction: Prediction, folder: Path) -> None:
    from ..data.views import at_least_one_tile
    from ..inference.detector import to_image
    from .where_plot import plot_where

    folder.mkdir(parents=True, exist_ok=True)
    image = at_least_one_tile(to_image(prediction.source), detector.preprocess)
    title = (
        f"{Path(prediction.source).name}: p(fake) {prediction.fake_prob:.3f} ({prediction.label})"
    )
    where = {**prediction.tiles, "regions": prediction.regions or []}
    plot_where(image, where, where_path(folder, prediction.source), title)


def _draw_timeline(detector: Detector, prediction: Prediction, folder: Path) -> None:
    from ..data.video import read_video
    from .timeline_plot import plot_timeline

    folder.mkdir(parents=True, exist_ok=True)
    try:
        clip = read_video(prediction.source, detector.video_sampling)
    except ValueError:  # scored a moment ago; a file changed since is not drawn
        return
    title = (
        f"{Path(prediction.source).name}: p(fake) {prediction.fake_prob:.3f} ({prediction.label})"
    )
    plot_timeline(clip, prediction.regions or [], detector.threshold,
                  where_path(folder, prediction.source), title)  # fmt: skip


def _rewrite_complete(path: Path, fmt: str, rows: list[dict[str, Any]], columns: list[str]) -> None:
    """Rewrite ``path`` with only its complete rows (atomic), so appending creates no garbage."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("w", newline="") as handle:
        if fmt == "jsonl":
            handle.writelines(json.dumps(r) + "\n" for r in rows)
        else:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]) if rows else columns)
            writer.writeheader()
            writer.writerows(rows)
    os.replace(tmp, path)
