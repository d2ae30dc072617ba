"""The `miragedet` command: a thin shell over the library (no logic of its own).

One module per command group (huggingface_hub's ``commands/`` layout); each imports the library
inside its commands, so ``--help`` and ``--version`` load no torch. Commands are registered here,
in the order ``--help`` lists them.
"""

from __future__ import annotations

import typer

from ..._version import __version__
from . import adapt, data, deploy, evaluate, score, start, train
from .common import console


class _QuietFlags:
    """A flag takes no value, so --help shows none beside it (typer 0.29 prints the option's
    type, `<bool>`, for every option without a metavar; an empty metavar is shown as nothing)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._quiet(self.params)

    def get_help_option(self, ctx):
        option = super().get_help_option(ctx)
        self._quiet([option] if option is not None else [])
        return option

    @staticmethod
    def _quiet(params: list) -> None:
        for param in params:
            if getattr(param, "is_flag", False) and param.metavar is None:
                param.metavar = ""


class _Command(_QuietFlags, typer.core.TyperCommand):
    pass


class _Group(_QuietFlags, typer.core.TyperGroup):
    pass


class _Typer(typer.Typer):
    """Every command of ours is a `_Command`."""

    def command(self, *args, cls=_Command, **kwargs):
        return super().command(*args, cls=cls, **kwargs)


app = _Typer(
    cls=_Group,
    add_completion=False,
    no_args_is_help=True,
    help="Detect AI-generated images with MiraGe on a frozen CLIP.",
)


def _version(value: bool) -> None:
    if value:
        console.print(f"miragedet {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """miragedet: train, evaluate and run MiraGe detectors."""


app.command()(start.quickstart)
app.command()(start.doctor)
app.command()(train.train)
app.command()(evaluate.evaluate)
app.command()(adapt.adapt)
app.command()(adapt.continual)
app.command()(score.detect)
app.command("score-dataset")(score.score_dataset)
app.command()(deploy.serve)
app.command()(evaluate.analyze)
app.command("audit-data")(data.audit_data)
app.command()(deploy.export)
app.command()(evaluate.calibrate)
app.command("make-synthetic")(data.make_synthetic)
app.command()(start.backbones)
app.command()(start.info)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Our warnings as one line of ours ("warning: ..."), without Python's source excerpt."""
    import sys

    print(f"warning: {message}", file=file or sys.stderr)


def main() -> None:
    import warnings

    warnings.showwarning = _show_warning
    app()


if __name__ == "__main__":
    main()
