"""Find labelled images in the field's dataset layouts.

| layout | structure | labels |
| --- | --- | --- |
| genimage | `<root>/<subset>/{train,val}/{ai,nature}/*` | nature = real, ai = fake |
| ufd | `<root>/<subset>[/<category>]/{0_real,1_fake}/*` (UniversalFakeDetect) | by folder |
| chameleon | `<root>/{0_real,1_fake}/*` | 0_real, 1_fake |
| generic | `<root>/<class>/*` | one class per folder |
| manifest | a CSV or JSONL file with `path,label[,subset]` | label as name or index |

Files with an image extension are taken on their name; any other file is recognised by its content
(see :mod:`miragedet.data.formats`), so listing a million files stays quick and an image without
(or with a wrong) extension is still found. Unreadable images are found, skipped and reported when
they are decoded; everything else is listed in ``skipped`` with its reason.
"""

from __future__ import annotations

import csv
import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .formats import IMAGE_EXTENSIONS, classify, walk

__all__ = ["IMAGE_EXTENSIONS", "ImageSet", "LayoutError", "Sample", "detect_layout", "find_images"]

LAYOUTS = ("auto", "genimage", "ufd", "chameleon", "generic", "manifest")
LAYOUT_HELP = {
    "genimage": "<root>/<subset>/{train,val}/{ai,nature}/*",
    "ufd": "<root>/<subset>[/<category>]/{0_real,1_fake}/*",
    "chameleon": "<root>/{0_real,1_fake}/*",
    "generic": "<root>/<class>/* (one folder per class)",
    "manifest": "a .csv or .jsonl file with path,label[,subset]",
}
BINARY_CLASSES = ["real", "fake"]
_REAL_NAMES = ("real", "0_real", "nature", "natural", "authentic")


class LayoutError(ValueError):
    """The data does not have the expected (or any known) layout."""


@dataclass(frozen=True)
class Sample:
    path: str
    label: int
    subset: str
    #: A frame of a video clip: its time in seconds (:mod:`miragedet.data.video_samples`); None
    #: for an image.
    frame: float | None = None


@dataclass
class ImageSet:
    """Labelled image files found under a root, and the files passed over while listing."""

    root: Path
    layout: str
    classes: list[str]
    samples: list[Sample]
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def subsets(self) -> list[str]:
        return list(dict.fromkeys(s.subset for s in self.samples))

    def counts(self) -> dict[str, dict[str, int]]:
        """{subset: {class: n}}."""
        out: dict[str, dict[str, int]] = {}
        for (subset, label), n in sorted(
            Counter((s.subset, s.label) for s in self.samples).items()
        ):
            out.setdefault(subset, {})[self.classes[label]] = n
        return out

    def only(self, subsets: list[str]) -> ImageSet:
        """The same set restricted to some subsets (names as listed by ``subsets``)."""
        unknown = sorted(set(subsets) - set(self.subsets))
        if unknown:
            raise LayoutError(f"no subset {unknown} under {self.root}; found: {self.subsets}")
        keep = [s for s in self.samples if s.subset in set(subsets)]
        return ImageSet(self.root, self.layout, self.classes, keep, self.skipped)


def _list_files(folder: Path, skipped: list[tuple[str, str]]) -> list[Path]:
    found = walk(folder)
    skipped += found.skipped
    return [Path(p) for p in found.paths]


def _dirs(path: Path) -> list[Path]:
    try:
        return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError:
        return []


def _has(path: Path, *names: str) -> bool:
    return all((path / n).is_dir() for n in names)


def _describe(root: Path) -> str:
    if not root.exists():
        return f"{root} does not exist"
    if root.is_file():
        return f"{root} is a file"
    entries = sorted(p.name + ("/" if p.is_dir() else "") for p in root.iterdir())
    shown = ", ".join(entries[:12]) + (
        f", ... ({len(entries)} entries)" if len(entries) > 12 else ""
    )
    return f"{root} contains: {shown or 'nothing'}"


def detect_layout(root: str | os.PathLike) -> str:
    """Guess the layout of ``root`` from its folder names."""
    root = Path(root)
    if root.is_file() and root.suffix.lower() in (".csv", ".jsonl"):
        return "manifest"
    if _has(root, "0_real", "1_fake"):
        return "chameleon"
    level1 = _dirs(root)
    if any(_genimage_split_dir(d, s) for d in [root, *level1] for s in ("train", "val")):
        return "genimage"
    if any(_has(d, "0_real", "1_fake") for d in level1) or any(
        _has(c, "0_real", "1_fake") for d in level1 for c in _dirs(d)
    ):
        return "ufd"
    if level1 and any(
        classify(p) == "image"
        for d in level1
        for p in d.iterdir()
        if p.is_file() and not p.name.startswith(".")
    ):
        return "generic"
    raise LayoutError(
        "no known dataset layout found. Expected one of:\n"
        + "\n".join(f"  {k}: {v}" for k, v in LAYOUT_HELP.items())
        + f"\nbut {_describe(root)}"
    )


def data_source(data: Any) -> str:
    """What a report records as its data: the folder or manifest given, or an ImageSet's root
    (never the repr of every sample)."""
    return str(data.root) if isinstance(data, ImageSet) else str(data)


def find_images(
    root: str | os.PathLike,
    layout: str = "auto",
    split: str | None = None,
    classes: list[str] | None = None,
) -> ImageSet:
    """List the labelled images under ``root``.

    ``split`` picks GenImage's ``train`` or ``val`` folders (default ``val``, the test split) and
    a manifest's optional ``split`` column. ``classes`` fixes the class order of the generic and
    manifest layouts (default: folders/labels sorted, with a real-looking name first).
    """
    root = Path(root).expanduser()
    if layout not in LAYOUTS:
        raise LayoutError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    if not root.exists():
        raise LayoutError(f"{root} does not exist")
    chosen = detect_layout(root) if layout == "auto" else layout
    finder = {
        "genimage": _genimage,
        "ufd": _ufd,
        "chameleon": _chameleon,
        "generic": _generic,
        "manifest": _manifest,
    }[chosen]
    image_set = finder(root, split=split, classes=classes)
    if not image_set.samples:
        raise LayoutError(
            f"no images found for layout {chosen!r} ({LAYOUT_HELP[chosen]}); {_describe(root)}"
        )
    return image_set


def _expect(ok: bool, layout: str, root: Path) -> None:
    if not ok:
        raise LayoutError(
            f"{root} does not have the {layout} layout ({LAYOUT_HELP[layout]}); {_describe(root)}"
        )


def _binary(root: Path, layout: str, groups: list[tuple[str, Path, Path]]) -> ImageSet:
    skipped: list[tuple[str, str]] = []
    samples = []
    for subset, real_dir, fake_dir in groups:
        for label, folder in ((0, real_dir), (1, fake_dir)):
            samples += [Sample(str(p), label, subset) for p in _list_files(folder, skipped)]
    return ImageSet(root, layout, list(BINARY_CLASSES), samples, skipped)


def _genimage_split_dir(subset: Path, split: str) -> Path | None:
    """``subset/split`` holding ai/ and nature/, also one level down as in GenImage's release
    (``Midjourney/imagenet_midjourney/train/...``)."""
    if _has(subset / split, "ai", "nature"):
        return subset / split
    inner = [c / split for c in _dirs(subset) if _has(c / split, "ai", "nature")]
    return inner[0] if len(inner) == 1 else None


def _genimage(root: Path, split: str | None, classes: list[str] | None) -> ImageSet:
    split = split or "val"
    if split not in ("train", "val"):
        raise LayoutError(f"GenImage splits are 'train' and 'val', not {split!r}")
    if _genimage_split_dir(root, split):  # root is one subset
        candidates = [(root.name, _genimage_split_dir(root, split))]
    else:
        candidates = [
            (d.name, _genimage_split_dir(d, split))
            for d in _dirs(root)
            if _genimage_split_dir(d, split)
        ]
    _expect(bool(candidates), "genimage", root)
    return _binary(root, "genimage", [(n, d / "nature", d / "ai") for n, d in candidates])


def _ufd(root: Path, split: str | None, classes: list[str] | None) -> ImageSet:
    groups = []
    subsets = (
        [(root.name, root)]
        if not any(
            _has(d, "0_real", "1_fake") or any(_has(c, "0_real", "1_fake") for c in _dirs(d))
            for d in _dirs(root)
        )
        else [(d.name, d) for d in _dirs(root)]
    )
    for name, folder in subsets:
        if _has(folder, "0_real", "1_fake"):
            groups.append((name, folder / "0_real", folder / "1_fake"))
        for category in _dirs(folder):
            if _has(category, "0_real", "1_fake"):
                groups.append((name, category / "0_real", category / "1_fake"))
    _expect(bool(groups), "ufd", root)
    return _binary(root, "ufd", groups)


def _chameleon(root: Path, split: str | None, classes: list[str] | None) -> ImageSet:
    _expect(_has(root, "0_real", "1_fake"), "chameleon", root)
    return _binary(root, "chameleon", [(root.name, root / "0_real", root / "1_fake")])


def _order_classes(names: list[str], classes: list[str] | None, where: Path) -> list[str]:
    if classes:
        missing = sorted(set(names) - set(classes))
        if missing:
            raise LayoutError(f"{where} has classes {missing} not in the given classes {classes}")
        return list(classes)
    names = sorted(set(names))
    real = [n for n in names if n.lower() in _REAL_NAMES]
    return real[:1] + [n for n in names if n not in real[:1]]


def _generic(root: Path, split: str | None, classes: list[str] | None) -> ImageSet:
    folders = _dirs(root)
    _expect(bool(folders), "generic", root)
    order = _order_classes([f.name for f in folders], classes, root)
    skipped: list[tuple[str, str]] = []
    samples = []
    for folder in folders:
        label = order.index(folder.name)
        samples += [Sample(str(p), label, root.name) for p in _list_files(folder, skipped)]
    return ImageSet(root, "generic", order, samples, skipped)


def _manifest(root: Path, split: str | None, classes: list[str] | None) -> ImageSet:
    if root.suffix.lower() == ".jsonl":
        rows = [json.loads(line) for line in root.read_text().splitlines() if line.strip()]
    elif root.suffix.lower() == ".csv":
        with root.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
    else:
        raise LayoutError(f"a manifest is a .csv or .jsonl file, not {root.name}")
    if not rows or "path" not in rows[0] or "label" not in rows[0]:
        raise LayoutError(
            f"manifest {root} needs columns 'path' and 'label' (found: "
            f"{sorted(rows[0]) if rows else 'no rows'})"
        )
    if split is not None and "split" in rows[0]:
        rows = [r for r in rows if r.get("split") == split]
    raw = [str(r["label"]).strip() for r in rows]
    if all(v.isdigit() for v in raw):
        top = max(int(v) for v in raw)
        order = (
            list(classes)
            if classes
            else (list(BINARY_CLASSES) if top <= 1 else [str(i) for i in range(top + 1)])
        )
        labels = [int(v) for v in raw]
        if top >= len(order):
            raise LayoutError(f"manifest {root} has label {top} but only classes {order}")
    else:
        order = _order_classes(raw, classes, root)
        labels = [order.index(v) for v in raw]
    skipped: list[tuple[str, str]] = []
    samples = []
    for row, label in zip(rows, labels, strict=True):
        path = Path(row["path"])
        path = path if path.is_absolute() else root.parent / path
        samples.append(Sample(str(path), label, str(row.get("subset") or root.stem)))
    return ImageSet(root, "manifest", order, samples, skipped)
