"""The `miragedet` command line (run in-process through typer's test runner)."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from miragedet.apps.cli import app

runner = CliRunner()


def test_quickstart_trains_evaluates_and_saves(tmp_path):
    result = runner.invoke(
        app,
        ["quickstart", "--output", str(tmp_path), "--steps", "60", "--methods", "zero-shot,mirage"],
    )
    assert result.exit_code == 0, result.output
    assert "random weights" in result.output and "not a detector" in result.output
    assert "zero-shot" in result.output and "mirage" in result.output
    assert "unseen" in result.output
    assert (tmp_path / "checkpoint" / "model.safetensors").is_file()
    assert "max logit difference 0.0e+00" in result.output

    info = runner.invoke(app, ["info", str(tmp_path / "checkpoint")])
    assert info.exit_code == 0, info.output
    assert json.loads(info.output)["model"]["method"] == "mirage"

    # its held-out images' feature memory is kept: adapt needs no --old-data
    from miragedet.data.synthetic import write_layout

    new = write_layout(tmp_path / "stripes", "ufd", ("stripes-3",), n_per_class=40, size=32)
    adapted = runner.invoke(app, ["adapt", str(new), "-m", str(tmp_path / "checkpoint"), "-o",
                                  str(tmp_path / "adapted"), "--split", "", "--shots", "8",
                                  "--force"])  # fmt: skip
    assert adapted.exit_code == 0, adapted.output
    assert "using the feature memory stored" in " ".join(adapted.output.split())


def test_quickstart_rejects_an_unknown_method(tmp_path):
    result = runner.invoke(app, ["quickstart", "--output", str(tmp_path), "--methods", "magic"])
    assert result.exit_code == 2
    assert "unknown method 'magic'" in result.output
    assert not (tmp_path / "checkpoint").exists()


def test_info_on_a_folder_that_is_not_a_checkpoint(tmp_path):
    result = runner.invoke(app, ["info", str(tmp_path)])
    assert result.exit_code == 2
    assert "not a miragedet checkpoint" in result.output


def test_backbones_lists_the_real_shapes():
    result = runner.invoke(app, ["backbones"])
    assert result.exit_code == 0
    assert "vit-l-14 " in result.output and "openai/clip-vit-large-patch14" in result.output


def test_flags_in_help_show_no_value():
    """A flag takes no value: --help must not print one (typer 0.29 prints `<bool>` beside every
    flag unless the command quiets it; constraints.txt pins the typer users and tests run)."""
    import typer

    group = typer.main.get_command(app)
    flagged = 0
    for name in [None, *group.commands]:
        result = runner.invoke(
            app, [name, "--help"] if name else ["--help"], env={"COLUMNS": "200"}
        )
        assert result.exit_code == 0, result.output
        flagged += sum(
            "--no-" in line or "--version" in line for line in result.output.splitlines()
        )
        assert "<bool>" not in result.output and "BOOLEAN" not in result.output, name
    assert flagged > 20  # the commands' flags were in what was read
