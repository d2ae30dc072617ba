"""One detector configuration: DetectorConfig is the source of detect's, score-dataset's and
serve's options, of load_detector's keywords, and of what a Detector was made with."""

from __future__ import annotations

import dataclasses
import warnings

import pytest
import typer
from typer.testing import CliRunner

from miragedet import MiraGe, ModelConfig
from miragedet.apps.cli import app
from miragedet.apps.cli.options import config_options
from miragedet.inference.detector import Detector
from miragedet.inference.detector_config import (
    DETECT,
    EVERYWHERE,
    SCORE_DATASET,
    SERVE,
    DetectorConfig,
    option,
)
from miragedet.model.backbone import load_backbone

COMMANDS = {DETECT: "detect", SCORE_DATASET: "score-dataset", SERVE: "serve"}


def _params(command: str) -> dict[str, object]:
    group = typer.main.get_command(app)
    return {p.name: p for p in group.commands[command].params}


@pytest.mark.parametrize("surface", [DETECT, SCORE_DATASET, SERVE])
def test_each_command_takes_the_config_fields_that_apply_to_it(surface):
    params = _params(COMMANDS[surface])
    every = {f.name for f in dataclasses.fields(DetectorConfig)}
    wanted = {f.name for f in DetectorConfig.fields_for(surface)}
    assert every & set(params) == wanted  # no field applies where it should not, none missing
    for f in DetectorConfig.fields_for(surface):
        assert params[f.name].help == f.metadata["help"]
        default = params[f.name].default
        assert default == f.default or (default is None and f.default is None), f.name


def test_serve_keeps_its_old_flag_for_the_batch_size():
    assert "--max-batch" in _params("serve")["batch_size"].opts
    assert "--max-batch" not in _params("detect")["batch_size"].opts


def test_a_new_field_reaches_a_command_without_editing_it():
    @dataclasses.dataclass
    class Wider(DetectorConfig):
        sharpen: int | None = option(None, "A field added later.", EVERYWHERE)

    seen: list[DetectorConfig] = []

    def command(name: str = typer.Argument(...), config: Wider = None) -> None:
        seen.append((name, config))

    cli = typer.Typer()
    cli.command()(config_options(Wider, DETECT)(command))
    cli.command("other")(lambda: None)  # a group, so the command is named as in the app
    result = CliRunner().invoke(cli, ["command", "x", "--sharpen", "3", "--no-provenance"])
    assert result.exit_code == 0, result.output
    [(name, config)] = seen
    assert name == "x" and isinstance(config, Wider)
    assert config.sharpen == 3 and config.provenance is False and config.device == "auto"


def test_a_command_may_not_declare_a_config_field_itself():
    def command(threshold: float = typer.Option(None), config: DetectorConfig = None) -> None:
        pass

    with pytest.raises(TypeError, match="threshold"):
        config_options(DetectorConfig, DETECT)(command)


def test_overrides_are_checked_and_old_names_still_work_for_a_release():
    config = DetectorConfig()
    with pytest.raises(TypeError, match=r"unknown detector option.*threshhold"):
        config.replace(threshhold=0.3)
    with pytest.warns(DeprecationWarning, match="'draft' is now 'exact_decode'"):
        assert config.replace(draft=False).exact_decode is True
    with pytest.warns(DeprecationWarning, match="'decode_threads' is now 'threads'"):
        assert config.replace(decode_threads=3).threads == 3


def test_a_detector_keeps_its_config_and_scores_with_its_defaults(tmp_path):
    from PIL import Image

    model = MiraGe(load_backbone("tiny"), ModelConfig.for_method("mirage", depth=2))
    path = tmp_path / "a.png"
    Image.new("RGB", (40, 40), (90, 30, 60)).save(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)  # the new names warn nothing
        quiet = Detector(model, DetectorConfig(provenance=False, threads=2), precision="fp32")
    assert quiet.config.provenance is False and quiet.decode_threads == 2
    assert quiet.precision == "fp32" and quiet.config.precision == "fp32"
    assert quiet.score(path)[0].provenance is None
    reading = Detector(model, precision="fp32")  # the command line's default: provenance on
    assert reading.score(path)[0].provenance is not None
    assert reading.score(path, provenance=False)[0].provenance is None


def test_bad_options_are_refused_before_a_model_loads(tmp_path):
    with pytest.raises(ValueError, match="view must be one of"):
        DetectorConfig(view="mosaic").check()
    with pytest.raises(ValueError, match="backend must be one of"):
        DetectorConfig(backend="tensorrt").check()
    with pytest.raises(OSError):
        DetectorConfig(trust_anchors=tmp_path / "absent.pem").check()
    result = CliRunner().invoke(
        app, ["detect", str(tmp_path), "-m", str(tmp_path / "none"), "--view", "mosaic"]
    )
    assert result.exit_code == 2 and "view must be one of" in result.output


def test_train_takes_every_train_config_field_and_passes_only_what_was_given(tmp_path, monkeypatch):
    import miragedet.training.trainer as trainer_module
    from miragedet.training.config import TRAIN, TrainConfig

    params = _params("train")
    assert {f.name for f in dataclasses.fields(TrainConfig)} <= set(params)  # data: DATA
    for f in dataclasses.fields(TrainConfig):
        if TRAIN in f.metadata["surfaces"]:
            assert params[f.name].default is None, f.name  # unset: the YAML's, else default
            assert params[f.name].help.startswith(f.metadata["help"])
    seen: list[TrainConfig] = []

    def capture(config, console=None):
        seen.append(config)
        raise ValueError("stopped here")

    monkeypatch.setattr(trainer_module, "Trainer", capture)
    (tmp_path / "run.yaml").write_text("lr: 0.5\nepochs: 3\nsubsets: [a]\n")
    args = ["train", "somewhere", "-c", str(tmp_path / "run.yaml"), "--epochs", "2",
            "--subsets", "x, y", "-o", str(tmp_path / "out"), "--no-cache-features"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and "stopped here" in result.output, result.output
    [config] = seen
    assert (config.data, config.lr, config.epochs, config.subsets) == (
        "somewhere",
        0.5,
        2,
        ["x", "y"],
    )
    assert config.output == str(tmp_path / "out") and config.cache_features is False
    assert config.momentum == TrainConfig().momentum  # neither given nor in the file


def test_from_pretrained_and_the_command_line_pick_the_same_engine(tmp_path, monkeypatch):
    from PIL import Image

    from miragedet import load_detector

    monkeypatch.delenv("MIRAGEDET_BACKEND", raising=False)  # the suite's pin (conftest.py)
    checkpoint = tmp_path / "ckpt"
    MiraGe(load_backbone("tiny"), ModelConfig.for_method("mirage", depth=2)).save_pretrained(
        str(checkpoint)
    )
    path = tmp_path / "a.png"
    Image.new("RGB", (40, 40), (90, 30, 60)).save(path)
    api = Detector.from_pretrained(checkpoint)  # no backend: auto, as the commands
    assert api.engine is not None  # chosen by --backend auto's rule, not PyTorch by default
    again = load_detector(checkpoint).engine_info()
    assert again.pop("cached") is True  # measured once, by the first
    assert {k: v for k, v in api.engine_info().items() if k != "cached"} == again
    result = CliRunner().invoke(app, ["detect", str(path), "-m", str(checkpoint)])
    assert result.exit_code == 0, result.output
    assert f"engine {api.engine_info()['backend']}" in result.output
    assert f"{api.precision} (" in result.output
