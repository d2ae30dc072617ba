"""Command-line options built from a config dataclass's fields: each field that applies to a
command becomes its option (name, default, help from the field's metadata), and the command
gets them back as one config object, as transformers' ``HfArgumentParser`` does for argparse."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, Union

import typer

from ...inference.detector_config import DetectorConfig, fields_for


def cli_type(f: dataclasses.Field, hints: dict[str, Any]) -> Any:
    """The type a command line gives for field ``f``: its ``cli_type`` metadata, else its
    annotation (``str | os.PathLike``: a path; a list: comma-separated text)."""
    if "cli_type" in f.metadata:
        return f.metadata["cli_type"]
    hint = hints[f.name]
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        if len(rest) > 1:
            return Path | None
        hint = rest[0]
    if typing.get_origin(hint) is list:
        return str | None
    return hint | None


def _is_list(f: dataclasses.Field, hints: dict[str, Any]) -> bool:
    hint = hints[f.name]
    parts = typing.get_args(hint) if typing.get_origin(hint) in (Union, types.UnionType) else ()
    return any(typing.get_origin(h) is list for h in (hint, *parts))


def config_options(
    config_type: type, surface: str, argument: str = "config", given_only: bool = False
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: the fields of ``config_type`` whose ``surfaces`` metadata names ``surface``
    become options of the command (after its own parameters, with the field's default and
    help); the command receives them as one ``config_type`` instance in its ``argument``
    parameter. ``given_only``: every option defaults to "not given" and the command receives
    a dict of the options given (to lay over a config file); list fields take comma-separated
    text."""
    hints = typing.get_type_hints(config_type)
    chosen = fields_for(config_type, surface)
    lists = {f.name for f in chosen if _is_list(f, hints)}

    def wrap(command: Callable[..., Any]) -> Callable[..., Any]:
        own = [p for p in inspect.signature(command).parameters.values() if p.name != argument]
        clash = sorted({p.name for p in own} & {f.name for f in chosen})
        if clash:
            raise TypeError(
                f"{command.__name__} declares {clash} itself: they come from the config"
            )
        added = [_parameter(f, hints, surface, given_only) for f in chosen]

        @functools.wraps(command)
        def run(**values: Any) -> Any:
            mine = {f.name: values.pop(f.name) for f in chosen}
            for name in lists & set(mine):
                if isinstance(mine[name], str):
                    mine[name] = [t.strip() for t in mine[name].split(",") if t.strip()] or None
            if given_only:
                return command(**values, **{argument: {k: v for k, v in mine.items()
                                                         if v is not None}})  # fmt: skip
            return command(**values, **{argument: config_type(**mine)})

        own_hints = _evaluated(
            {p.name: p.annotation for p in own if p.annotation is not inspect.Parameter.empty},
            command,
        )
        run.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
            [p.replace(annotation=own_hints.get(p.name, p.annotation)) for p in own] + added
        )
        run.__annotations__ = {p.name: p.annotation for p in run.__signature__.parameters.values()}
        return run

    return wrap


def _parameter(
    f: dataclasses.Field, hints: dict[str, Any], surface: str, given_only: bool
) -> inspect.Parameter:
    """Field ``f`` as a keyword parameter whose default is its typer Option."""
    flag = "--" + f.name.replace("_", "-")
    names = (flag, *f.metadata.get("aliases", {}).get(surface, ()))
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    kind = cli_type(f, hints)
    if isinstance(default, bool):  # --provenance/--no-provenance
        names, kind = (f"{flag}/--no-{flag[2:]}",), bool | None
    help_text = f.metadata["help"]
    if given_only and default is not None and "Default" not in help_text:
        shown = ",".join(default) if isinstance(default, list) else default
        help_text = f"{help_text} Default: {shown}.".strip()
    option = typer.Option(
        None if given_only else default, *names, help=help_text, show_default=not given_only
    )
    return inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=option,
                             annotation=kind)  # fmt: skip


def _evaluated(annotations: dict[str, Any], command: Callable[..., Any]) -> dict[str, Any]:
    """The command's own parameters' annotations as types (modules with ``from __future__ import
    annotations`` hold strings), resolved in the command's module."""
    holder = type("Annotations", (), {"__annotations__": annotations})
    return typing.get_type_hints(holder, globalns=command.__globals__)


def detector_options(surface: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """:func:`config_options` for :class:`~miragedet.inference.detector_config.DetectorConfig`
    (surfaces: detect, score-dataset, serve)."""
    return config_options(DetectorConfig, surface)
