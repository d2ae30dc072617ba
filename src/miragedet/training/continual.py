"""The continual protocol: generators learned one after another with ``adapt``, scored after
each step on every task seen so far, with CDDB's average accuracy and average forgetting
(Li et al., WACV 2023; forgetting as in Chaudhry et al., ECCV 2018: for each earlier task, its
best accuracy before the last step minus its accuracy after it)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from ..data.layouts import Sample, find_images
from .adapt import AdaptConfig, AdaptError, accuracy_on, adapt, check_roles, draw_shots, split_known


def held_out(data: str, config: AdaptConfig, first: bool) -> list[Sample]:
    """The images a task is scored on: the base task's held-out split (beyond the memory), or
    what a new task's shot draw leaves."""
    if first:
        image_set = find_images(data, config.layout, split=config.old_split)
        check_roles(image_set, data)
        pool, rest = split_known(
            image_set.samples, image_set, config.memory, config.held_out, config.seed
        )
        return rest or pool
    image_set = find_images(data, config.layout, split=config.split)
    _, rest = draw_shots(image_set, config.shots, config.seed)
    return [s for group in rest.values() for s in group[: config.held_out]]


def continual(
    base: str | Path,
    tasks: list[str],
    output: str | Path,
    config: AdaptConfig,
    on_stage: Any = None,
) -> dict[str, Any]:
    """Adapt ``base`` (trained on ``tasks[0]``) to ``tasks[1:]`` in turn, writing each step's
    checkpoint under ``output/step-N``; returns (and writes as continual.json / .md) the
    accuracy matrix and CDDB's metrics after each step."""
    from ..model.device import resolve_device
    from ..model.mirage import load_pretrained

    if len(tasks) < 2:
        raise AdaptError("a sequence needs the base task and at least one new task")
    say = on_stage or (lambda text: None)
    output = Path(output)
    evals = [held_out(t, config, first=(i == 0)) for i, t in enumerate(tasks)]
    matrix: list[list[float]] = []  # matrix[step][task]: accuracy on task after step
    model = load_pretrained(base, device=resolve_device(config.device))
    matrix.append([accuracy_on(model, evals[0], config.batch_size)["accuracy"]])
    current = Path(base)
    steps = []
    for t in range(1, len(tasks)):
        say(f"step {t}: {tasks[t]}")
        step_config = dataclasses.replace(config, old_data=tasks[0] if t == 1 else None, force=True)
        target = output / f"step-{t}"
        result = adapt(current, tasks[t], target, step_config, on_stage=say)
        matrix.append(
            [
                accuracy_on(result.model, evals[i], config.batch_size)["accuracy"]
                for i in range(t + 1)
            ]
        )
        steps.append({"step": t, "task": tasks[t], **metrics(matrix)})
        current = target
    report = {"tasks": tasks, "accuracy": matrix, "steps": steps, **metrics(matrix)}
    output.mkdir(parents=True, exist_ok=True)
    (output / "continual.json").write_text(json.dumps(report, indent=2) + "\n")
    (output / "continual.md").write_text(markdown(report))
    return report


def metrics(matrix: list[list[float]]) -> dict[str, float]:
    """Average accuracy over the tasks seen and average forgetting of the earlier ones, in %."""
    last = matrix[-1]
    average = 100 * sum(last) / len(last)
    earlier = range(len(last) - 1)
    drops = [max(matrix[s][i] for s in range(i, len(matrix) - 1)) - last[i] for i in earlier]
    forgetting = 100 * sum(drops) / len(drops) if drops else 0.0
    return {"average_accuracy": average, "average_forgetting": forgetting}


def markdown(report: dict[str, Any]) -> str:
    tasks = report["tasks"]
    lines = [
        "# Continual adaptation",
        "",
        "| after step | "
        + " | ".join(Path(t).name for t in tasks)
        + " | avg acc | avg forgetting |",
        "| --- |" + " ---: |" * (len(tasks) + 2),
    ]
    for step, row in enumerate(report["accuracy"]):
        cells = [f"{100 * a:.1f}" for a in row] + ["-"] * (len(tasks) - len(row))
        m = metrics(report["accuracy"][: step + 1])
        lines.append(
            f"| {step} ({Path(tasks[step]).name}) | "
            + " | ".join(cells)
            + f" | {m['average_accuracy']:.1f} | {m['average_forgetting']:.1f} |"
        )
    return "\n".join(lines) + "\n"
