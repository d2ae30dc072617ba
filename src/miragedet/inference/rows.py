"""The row: one flat record per scored input, the same names and columns in every surface
(detect's table/JSON/JSONL/CSV, score-dataset's Parquet, ``Prediction.to_dict()``, and the
server's results as the client turns them into predictions). docs/rows.md lists the columns;
:data:`COLUMNS` is its source."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Column:
    name: str
    #: string, float, int, bool, or json (a list of objects: JSON in JSON rows, JSON text in
    #: Parquet, left out of CSV and the table)
    kind: str
    #: always, classes (attribution models: one per class), provenance, open-set, stability,
    #: tiles (the tiles and crop views) or video
    when: str
    meaning: str


COLUMNS: tuple[Column, ...] = (
    Column("path", "string", "always", "The input: its path, or its kind and position "
           "(`<bytes #3>`, `<image #0>`) for inputs that are not files."),
    Column("fake_prob", "float", "always", "p(fake): 1 - p(the real class). Null on an error."),
    Column("label", "string", "always", "`fake` when fake_prob reaches the threshold, else "
           "`real`; `uncertain` with --stability when the re-deliveries disagree."),
    Column("threshold", "float", "always", "The threshold the label was decided at."),
    Column("top_class", "string", "always", "The most likely class (`unknown generator` when "
           "an open-set model finds none of its classes near)."),
    Column("verdict", "string", "always", "The label weighed with the metadata (equal to label "
           "without provenance)."),
    Column("basis", "string", "always", "What decided the verdict: `pixels`, or `declared "
           "(SOURCE)` with SOURCE c2pa, watermark, xmp, parameters or exif."),
    Column("p_{class}", "float", "classes", "Attribution models (more than two classes): each "
           "class's probability, one column per class."),
    Column("error", "string", "always", "Why the input could not be scored; null when it was."),
    Column("provenance", "string", "provenance", "What the metadata says, in one line."),
    Column("declares_ai", "bool", "provenance", "Whether the metadata declares generative AI."),
    Column("unknown_generator", "bool", "open-set", "An adapted model's open-set test: the "
           "image is near none of the known classes (docs/adapt.md)."),
    Column("generator_distance", "float", "open-set", "The distance to the nearest known class."),
    Column("stability_spread", "float", "stability", "How far apart the re-deliveries' p(fake) "
           "are (max - min)."),
    Column("stability_reason", "string", "stability", "Why the label is `uncertain` (null when "
           "it is not)."),
    Column("tiles", "int", "tiles", "Tiles scored (the tiles and crop views)."),
    Column("tile_max_fake_prob", "float", "tiles", "The most suspicious tile's p(fake)."),
    Column("frames", "int", "video", "A video or animated image: frames scored (null for a "
           "still image)."),
    Column("duration", "float", "video", "The clip's duration in seconds."),
    Column("frame_max_fake_prob", "float", "video", "The most suspicious frame's p(fake)."),
    Column("temporal_fake_prob", "float", "video", "The temporal head's p(fake) (checkpoints "
           "that have one)."),
    Column("regions", "json", "always", "Where and when: tiles as `{box, p}`, a clip's frames "
           "as `{t, p}` (null when neither)."),
)  # fmt: skip

KINDS = {c.name: c.kind for c in COLUMNS}


def columns(
    classes: list[str],
    provenance: bool = False,
    open_set: bool = False,
    stability: bool = False,
    tiles: bool = False,
) -> list[str]:
    """The row's columns in order, for a model with ``classes`` and these options on (video
    columns are always there: clips may be among any inputs)."""
    flags = {"provenance": provenance, "open-set": open_set, "stability": stability,
             "tiles": tiles, "classes": len(classes) > 2}  # fmt: skip
    on = {"always", "video"} | {name for name, flag in flags.items() if flag}
    out: list[str] = []
    for column in COLUMNS:
        if column.when not in on:
            continue
        if column.when == "classes":
            out.extend(f"p_{c}" for c in classes)
        else:
            out.append(column.name)
    return out


def columns_of(prediction: Any) -> list[str]:
    """The columns of one prediction's row, from what it holds (``Prediction.to_dict()``)."""
    return columns(
        list(prediction.probs),
        provenance=prediction.provenance is not None,
        open_set=prediction.open_set is not None,
        stability=prediction.stability is not None,
        tiles=prediction.tiles is not None,
    )


def row_of(prediction: Any, names: list[str] | None = None) -> dict[str, Any]:
    """The row of a :class:`~miragedet.inference.prediction.Prediction`: every column of
    ``names`` (default: :func:`columns_of` the prediction), null where it does not apply."""
    p = prediction
    values: dict[str, Any] = {
        "path": p.source,
        "fake_prob": p.fake_prob,
        "label": p.label,
        "threshold": p.threshold,
        "top_class": p.top_class,
        "verdict": p.verdict,
        "basis": p.basis,
        "error": p.error,
        "regions": p.regions,
        **{f"p_{c}": v for c, v in p.probs.items()},
    }
    if p.provenance is not None:
        values["provenance"] = p.provenance["summary"]
        values["declares_ai"] = p.provenance["declares_ai"]
    if p.open_set is not None:
        values["unknown_generator"] = p.open_set["unknown"]
        values["generator_distance"] = p.open_set["distance"]
    if p.stability is not None:
        values["stability_spread"] = p.stability["spread"]
        values["stability_reason"] = p.stability["reason"]
    scores = [r["p"] for r in p.regions or []]
    if p.tiles is not None and scores:
        values["tiles"], values["tile_max_fake_prob"] = len(scores), max(scores)
    if p.video is not None:
        values["frames"] = p.video["frames_scored"]
        values["duration"] = p.video["duration"]
        values["frame_max_fake_prob"] = max(scores, default=None)
        values["temporal_fake_prob"] = p.video.get("temporal_fake_prob")
    return {name: values.get(name) for name in (names or columns_of(p))}


def kind_of(name: str) -> str:
    """A column's kind (``p_<class>`` columns are floats)."""
    return "float" if name.startswith("p_") and name not in KINDS else KINDS[name]


def columns_for(detector: Any, provenance: bool, stability: bool) -> list[str]:
    """The columns of every row a detector gives with these options (the open-set test runs on
    still images under the resize view, without re-deliveries)."""
    return columns(
        detector.classes,
        provenance=provenance,
        open_set=detector.has_open_set and detector.view.kind == "resize" and not stability,
        stability=stability,
        tiles=detector.view.kind != "resize",
    )


def with_columns(predictions: Iterator[Any], names: list[str]) -> Iterator[Any]:
    """``predictions``, each told the columns of its row (``Prediction.to_dict()`` gives them
    all, an error row too)."""
    for prediction in predictions:
        prediction.columns = names
        yield prediction


def markdown_table() -> str:
    """:data:`COLUMNS` as the Markdown table of docs/rows.md (a test keeps the two equal)."""
    lines = ["| column | kind | present | meaning |", "| --- | --- | --- | --- |"]
    lines += [f"| `{c.name}` | {c.kind} | {c.when} | {c.meaning} |" for c in COLUMNS]
    return "\n".join(lines)
