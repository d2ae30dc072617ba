"""The adversarial robustness report of `evaluate --attack`: attack, save as PNG, rescore.

For each attack (:mod:`miragedet.inference.attacks`) and each subset, on up to
``max_per_subset`` images (a seeded sample, the same for every attack):

- the correctly classified ones are attacked (a targeted attack: only those of other classes
  than its target), each adversarial image rounded to 8 bits, saved as PNG under
  ``OUTPUT/adversarial/<attack>/``, reloaded and rescored as any file is scored: *success* is
  a verdict that is wrong after that round trip, *robust accuracy* the share of the sample still
  right (eps=0 gives the clean accuracy exactly);
- *survival*: the same PNGs after re-encodings every upload meets (JPEG 90 and 75, a 0.5x
  resize; :mod:`miragedet.data.degrade`), and, beside it, how many of the same images the
  re-encoding alone gets wrong;
- *caught by stability*: the share of successful adversarial images that ``--stability``
  (:mod:`miragedet.inference.stability`) would mark "uncertain", beside the share of the clean
  images it marks (resize view only).

Saved adversarial images are reused by a rerun with the same model, view and attack (the work
is resumable); anything else starts that attack afresh.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
import shutil
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from ..data.dataset import load_image
from ..data.degrade import Degradation
from ..data.layouts import Sample
from ..inference.attacks import Attack, perturb, require_art
from .scores import score_samples

#: What an upload goes through on the way to a platform: two JPEG qualities and a 0.5x resize.
DEFAULT_SURVIVAL = ("jpeg:90", "jpeg:75", "scale:0.5")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", text)


def model_key(model: Any, threshold: float, view: Any) -> str:
    """A digest of what an attack depends on: the trained tensors, the backbone, the
    threshold and the view (saved adversarial images are reused only under the same key)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.trainable_state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().numpy().tobytes())
    digest.update(f"{model.backbone.source}|{model.backbone.fingerprint}|{threshold}".encode())
    digest.update(json.dumps(asdict(view), sort_keys=True).encode())
    return digest.hexdigest()[:16]


def sample_indices(scores: Any, max_per_subset: int, seed: int = 0) -> list[int]:
    """Up to ``max_per_subset`` readable images per subset, drawn with ``seed``, in order."""
    rng = np.random.default_rng(seed)
    subsets, ok = scores.subsets, scores.ok
    chosen: list[int] = []
    for subset in dict.fromkeys(subsets.tolist()):
        members = np.flatnonzero(ok & (subsets == subset))
        if len(members) > max_per_subset:
            members = np.sort(rng.choice(members, max_per_subset, replace=False))
        chosen += members.tolist()
    return chosen


def robustness_report(
    model: Any,
    attack_model: Any,
    clean: Any,
    attacks: list[Attack],
    output: str | Path,
    threshold: float,
    view: Any,
    max_per_subset: int = 100,
    survival: tuple[str, ...] | list[str] = DEFAULT_SURVIVAL,
    stability: bool = True,
    batch_size: int = 64,
    workers: int = 0,
    attack_batch: int = 8,
    seed: int = 0,
    on_progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, Any]:
    """Run ``attacks`` on a sample of the images ``clean`` scored (see the module) and write
    adversarial.md, .csv, .json and adversarial.png to ``output``. ``model`` scores (at the
    evaluation's precision); ``attack_model`` (fp32) gives the gradients."""
    require_art()
    output = Path(output)
    folder = output / "adversarial"
    folder.mkdir(parents=True, exist_ok=True)
    degradations = [Degradation.parse(s) for s in survival]
    pool = sample_indices(clean, max_per_subset, seed)
    samples = [clean.samples[i] for i in pool]
    labels = np.array([s.label for s in samples])
    subsets = np.array([s.subset for s in samples], dtype=object)
    right = (clean.fake_prob[pool] >= threshold) == (labels != 0)
    classes = list(model.classes)
    key = model_key(attack_model, threshold, view)
    options = dict(batch_size=batch_size, workers=workers, view=view)

    def wrong(scores: Any) -> np.ndarray:
        verdict = scores.fake_prob >= threshold
        return scores.ok & (verdict != (scores.labels != 0))

    # what the re-encodings alone do to the same (unattacked) images
    alone = {
        d.name: wrong(score_samples(model, samples, degradation=d, **options)) for d in degradations
    }
    clean_flagged = _stability_flags(model, samples, right, threshold, view, batch_size, stability)

    rows: list[dict[str, Any]] = []
    for attack in attacks:
        target = attack.target_index(classes)
        in_play = right if target is None else right & (labels != target)
        considered = np.ones(len(samples), bool) if target is None else labels != target
        paths = _attack_images(
            attack_model, samples, np.flatnonzero(in_play), attack, folder, key, view,
            attack_batch, on_progress,
        )  # fmt: skip
        adversarial = [
            Sample(paths[i], s.label, s.subset) if i in paths else s for i, s in enumerate(samples)
        ]
        attacked = np.flatnonzero(in_play)
        success = np.zeros(len(samples), bool)
        after: dict[str, np.ndarray] = {}
        changed = np.zeros(len(samples))
        if len(attacked):
            chosen = [adversarial[i] for i in attacked]
            success[attacked] = wrong(score_samples(model, chosen, **options))
            for d in degradations:
                after[d.name] = np.zeros(len(samples), bool)
                after[d.name][attacked] = wrong(
                    score_samples(model, chosen, degradation=d, **options)
                )
            changed[attacked] = [_max_change(samples[i].path, paths[i]) for i in attacked]
        caught = _stability_flags(
            model, adversarial, success, threshold, view, batch_size, stability
        )
        for subset in [*dict.fromkeys(subsets.tolist()), "mean"]:
            rows.append(
                _row(attack, subset, subsets, considered, right, in_play, success, after,
                     alone, caught, clean_flagged, changed)
            )  # fmt: skip
        _mean_row(rows, attack)
    report = {
        "model_key": key,
        "threshold": threshold,
        "view": asdict(view),
        "max_per_subset": max_per_subset,
        "survival": [d.name for d in degradations],
        "stability": stability and view.kind == "resize",
        "sample": len(samples),
        "rows": rows,
    }
    _write(report, output)
    return report


def _attack_images(
    model: Any,
    samples: list[Sample],
    indices: np.ndarray,
    attack: Attack,
    folder: Path,
    key: str,
    view: Any,
    attack_batch: int,
    on_progress: Callable[[str, int, int], None] | None,
) -> dict[int, str]:
    """PNG paths of the adversarial versions of ``samples[indices]``, made (or reused from an
    earlier run with the same key), ``attack_batch`` decoded images at a time."""
    from PIL import Image

    directory = folder / _slug(attack.name)
    stamp = directory / "_attack.json"
    meta = {"attack": attack.name, "model_key": key}
    if stamp.is_file() and json.loads(stamp.read_text()) != meta:
        shutil.rmtree(directory)  # another model, view or threshold: its images do not apply
    directory.mkdir(parents=True, exist_ok=True)
    stamp.write_text(json.dumps(meta))
    paths = {int(i): str(directory / f"{int(i):06d}.png") for i in indices}
    todo = [int(i) for i in indices if not Path(paths[int(i)]).is_file()]
    done = len(indices) - len(todo)
    if on_progress is not None:
        on_progress(attack.name, done, len(indices))
    chunk = max(1, attack_batch) * 4
    for start in range(0, len(todo), chunk):
        part = todo[start : start + chunk]
        images = [np.asarray(load_image(samples[i].path)) for i in part]
        labels = [samples[i].label for i in part]
        preprocess = model.backbone.preprocess
        adversarial = perturb(model, images, labels, attack, preprocess, view, attack_batch)
        for i, array in zip(part, adversarial, strict=True):
            tmp = Path(paths[i]).with_suffix(".tmp.png")
            Image.fromarray(array).save(tmp, format="PNG")
            tmp.replace(paths[i])  # whole or absent: a killed run resumes cleanly
        done += len(part)
        if on_progress is not None:
            on_progress(attack.name, done, len(indices))
    return paths


def _max_change(original: str, adversarial: str) -> float:
    """The largest change of any pixel, in grey levels, between the two files as decoded."""
    a = np.asarray(load_image(original), np.int16)
    b = np.asarray(load_image(adversarial), np.int16)
    return float(np.abs(a - b).max())


def _stability_flags(
    model: Any,
    samples: list[Sample],
    mask: np.ndarray,
    threshold: float,
    view: Any,
    batch_size: int,
    enabled: bool,
) -> np.ndarray | None:
    """Which of ``samples[mask]`` stability marks "uncertain" (None: not measured; it needs
    the resize view)."""
    if not enabled or view.kind != "resize":
        return None
    from ..inference.detector import Detector
    from ..inference.stability import Stability

    flags = np.zeros(len(samples), bool)
    chosen = np.flatnonzero(mask)
    if not len(chosen):
        return flags
    # "fp32" leaves the model as the evaluation prepared it (no second cast), device None where
    # it put it (never moved to another device)
    detector = Detector(model, threshold=threshold, batch_size=batch_size, precision="fp32",
                        device=None)  # fmt: skip
    chosen_paths = [samples[i].path for i in chosen]
    predictions = detector.score(chosen_paths, provenance=False, stability=Stability())
    flags[chosen] = [bool(p.stability and p.stability["uncertain"]) for p in predictions]
    return flags


def _share(values: np.ndarray, mask: np.ndarray) -> float | None:
    return float(values[mask].mean()) if mask.any() else None


def _row(
    attack: Attack,
    subset: str,
    subsets: np.ndarray,
    considered: np.ndarray,
    right: np.ndarray,
    in_play: np.ndarray,
    success: np.ndarray,
    after: dict[str, np.ndarray],
    alone: dict[str, np.ndarray],
    caught: np.ndarray | None,
    clean_flagged: np.ndarray | None,
    changed: np.ndarray,
) -> dict[str, Any]:
    where = (subsets == subset) if subset != "mean" else np.ones(len(subsets), bool)
    scope = where & considered
    attacked = where & in_play
    n = int(scope.sum())
    row: dict[str, Any] = {
        "attack": attack.name,
        "family": attack.family,
        "kind": attack.kind,
        "eps": attack.eps,
        "target": attack.target,
        "subset": subset,
        "images": n,
        "attacked": int(attacked.sum()),
        "clean_accuracy": float(right[scope].mean()) if n else None,
        "robust_accuracy": float((right & ~success)[scope].mean()) if n else None,
        "success_rate": _share(success, attacked),
        "max_change": float(changed[attacked].max()) if attacked.any() else 0.0,
    }
    for name, values in after.items():
        row[f"success_after {name}"] = _share(values, attacked)
        row[f"alone {name}"] = _share(alone[name], attacked)
    row["caught_by_stability"] = _share(caught, success & where) if caught is not None else None
    row["clean_flagged_by_stability"] = (
        _share(clean_flagged, attacked) if clean_flagged is not None else None
    )
    return row


def _mean_row(rows: list[dict[str, Any]], attack: Attack) -> None:
    """Turn the attack's last row (all subsets pooled) into the mean over subsets (the paper's
    "average" column, as the other reports do; counts stay totals), or drop it when there is
    only one subset."""
    mine = [r for r in rows if r["attack"] == attack.name]
    pooled, per_subset = mine[-1], mine[:-1]
    if len(per_subset) < 2:
        rows.remove(pooled)
        return
    for key, value in list(pooled.items()):
        if isinstance(value, float) and key not in ("eps", "max_change"):
            values = [r[key] for r in per_subset if r.get(key) is not None]
            pooled[key] = float(np.mean(values)) if values else None


# -- writing --------------------------------------------------------------------------------


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def markdown(report: dict[str, Any]) -> str:
    """One table per subset (and the mean): a row per attack."""
    rows = report["rows"]
    survival = report["survival"]
    lines = [
        "# Adversarial robustness",
        "",
        f"White-box attacks (Adversarial Robustness Toolbox) through the detector's own "
        f"preprocessing ({report['view']['kind']} view), on up to {report['max_per_subset']} "
        f"images per subset; threshold {report['threshold']:g}. Each adversarial image was "
        "saved as PNG and rescored. eps in grey levels (1/255). Robust accuracy: share of the "
        "images still right; success: share of the attacked (correctly classified) images now "
        "wrong; after X: still wrong after X (in brackets: X alone on the clean images); caught: "
        "successful adversarial images that --stability marks uncertain (in brackets: clean "
        "images it marks).",
        "",
    ]
    for subset in dict.fromkeys(r["subset"] for r in rows):
        header = ["attack", "images", "clean acc", "robust acc", "success"]
        header += [f"after {s}" for s in survival] + ["caught by stability", "max change"]
        lines += [f"## {subset}", "", "| " + " | ".join(header) + " |"]
        lines.append("| --- |" + " ---: |" * (len(header) - 1))
        for r in (r for r in rows if r["subset"] == subset):
            cells = [
                r["attack"],
                str(r["images"]),
                _pct(r["clean_accuracy"]),
                _pct(r["robust_accuracy"]),
                _pct(r["success_rate"]),
            ]
            cells += [
                f"{_pct(r[f'success_after {s}'])} ({_pct(r[f'alone {s}'])})" for s in survival
            ]
            caught = r["caught_by_stability"]
            cells.append(
                "-" if caught is None and r["clean_flagged_by_stability"] is None
                else f"{_pct(caught)} ({_pct(r['clean_flagged_by_stability'])})"
            )  # fmt: skip
            cells.append(f"{r['max_change']:g}")
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["![robust accuracy against eps](adversarial.png)", ""]
    return "\n".join(lines)


def summary(adversarial: dict[str, Any]) -> list[str]:
    """The report.md section: robust accuracy per attack (the mean over subsets, or the one
    subset), with a pointer to the full tables."""
    rows = adversarial["rows"]
    shown = _summary_subset(rows)
    survival = adversarial["survival"]
    lines = [
        "## Adversarial robustness",
        "",
        f"{shown}; per subset, survival details and the plot in "
        "[adversarial.md](adversarial.md). eps in grey levels.",
        "",
        "| attack | clean acc | robust acc | success | "
        + " | ".join(f"after {s}" for s in survival)
        + " | caught by stability |",
        "| --- |" + " ---: |" * (4 + len(survival)),
    ]
    for r in (r for r in rows if r["subset"] == shown):
        cells = [r["attack"], _pct(r["clean_accuracy"]), _pct(r["robust_accuracy"])]
        cells += [_pct(r["success_rate"]), *[_pct(r[f"success_after {s}"]) for s in survival]]
        cells.append(_pct(r["caught_by_stability"]))
        lines.append("| " + " | ".join(cells) + " |")
    return [*lines, ""]


def _summary_subset(rows: list[dict[str, Any]]) -> str:
    """The rows a summary shows: the mean over subsets, or the one subset there is."""
    return "mean" if any(r["subset"] == "mean" for r in rows) else rows[0]["subset"]


def plot(report: dict[str, Any], path: str | Path) -> None:
    """Robust accuracy against eps: a line per attack family (the mean over subsets, or the
    one subset), starting from the clean accuracy at eps 0."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["rows"]
    shown = _summary_subset(rows)
    mine = [r for r in rows if r["subset"] == shown]
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for family in dict.fromkeys(r["family"] for r in mine):
        points = sorted(((r["eps"], r) for r in mine if r["family"] == family), key=lambda p: p[0])
        xs, ys = [e for e, _ in points], [r["robust_accuracy"] for _, r in points]
        if xs[0] > 0:  # eps 0 is the clean accuracy
            xs, ys = [0.0, *xs], [points[0][1]["clean_accuracy"], *ys]
        ax.plot(xs, [100 * (y if y is not None else np.nan) for y in ys], marker="o", label=family)
    ax.set(
        xlabel="eps (grey levels, L-infinity)",
        ylabel="robust accuracy (%)",
        title=f"Robust accuracy against eps ({shown})",
        ylim=(-2, 102),
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _write(report: dict[str, Any], output: Path) -> None:
    (output / "adversarial.json").write_text(json.dumps(report, indent=2) + "\n")
    columns = list(report["rows"][0]) if report["rows"] else []
    with open(output / "adversarial.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(report["rows"])
    (output / "adversarial.md").write_text(markdown(report))
    if report["rows"]:
        plot(report, output / "adversarial.png")
