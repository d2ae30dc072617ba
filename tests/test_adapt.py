"""Few-shot adaptation (docs/adapt.md): a tiny MiraGe trained on grid-2 learns stripes-3 from
16 images per class without forgetting grid-2, where plain fine-tuning on the same shots
forgets; generators learned in a row keep CDDB's forgetting low; an attribution model says
"unknown generator" for a family it never saw; bad input is refused with nothing written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from conftest import fit_tiny, in_process
from miragedet import Detector, MiraGe, ModelConfig, save_pretrained
from miragedet.apps.cli import app
from miragedet.data.layouts import ImageSet, Sample, find_images
from miragedet.data.synthetic import SEEN, make_set, write_layout
from miragedet.evaluation.metrics import binary_metrics
from miragedet.model.backbone import load_backbone
from miragedet.training.adapt import AdaptConfig, AdaptError, adapt, check_roles, draw_shots
from miragedet.training.continual import continual
from miragedet.training.step import predict_fake_prob


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A detector trained on grid-2 (the quickstart's recipe) and data of three generators."""
    root = tmp_path_factory.mktemp("adapt")
    tiny = load_backbone("tiny")
    torch.manual_seed(0)
    images, labels = make_set(1000, tiny.preprocess.image_size, SEEN, seed=1)
    model, _ = fit_tiny(tiny, tiny.preprocess.batch(images), labels, 400)
    save_pretrained(model, root / "base")
    write_layout(root / "grid-2", "ufd", ("grid-2",), n_per_class=460, seed=21)
    write_layout(root / "stripes-3", "ufd", ("stripes-3",), n_per_class=216, seed=22)
    write_layout(root / "chroma-2", "ufd", ("chroma-2",), n_per_class=216, seed=23)
    return root


@pytest.fixture(scope="module")
def adapted(world):
    """stripes-3 learned by prototype adaptation, with backpropagation made impossible."""

    def no_gradient(*args, **kwargs):
        raise AssertionError("prototype adaptation must not backpropagate")

    config = AdaptConfig(shots=16, old_data=str(world / "grid-2"), split=None, old_split=None)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.Tensor, "backward", no_gradient)
        patch.setattr(torch.autograd, "backward", no_gradient)
        result = adapt(world / "base", world / "stripes-3", world / "adapted", config)
    return result


def _accuracy(model: MiraGe, samples: list[Sample]) -> float:
    from PIL import Image

    pixels = model.backbone.preprocess.batch([Image.open(s.path).convert("RGB") for s in samples])
    labels = np.array([min(s.label, 1) for s in samples])
    return binary_metrics(labels, predict_fake_prob(model, pixels).numpy())["accuracy"]


def test_prototype_adaptation_learns_without_forgetting_where_plain_finetuning_forgets(
    world, adapted
):
    result = adapted
    old, new = result.table
    assert new["before"]["accuracy"] <= 0.60  # the base model does not see stripes at all
    assert new["after"]["accuracy"] >= 0.90
    assert abs(old["after"]["accuracy"] - old["before"]["accuracy"]) <= 0.01
    assert result.saved and result.forgetting <= 1.0
    assert all(p.grad is None for p in result.model.parameters())
    report = json.loads((world / "adapted" / "adapt_report.json").read_text())
    assert report["table"] == result.table

    # plain fine-tuning on the same 16 + 16 shots, nothing protecting grid-2
    stripes = find_images(world / "stripes-3")
    shots, _ = draw_shots(stripes, 16, 0)
    shot_list = [s for group in shots.values() for s in group]
    plain = MiraGe.from_pretrained(world / "base")
    from PIL import Image

    pixels = plain.backbone.preprocess.batch([Image.open(s.path).convert("RGB") for s in shot_list])
    labels = torch.tensor([min(s.label, 1) for s in shot_list])
    fit_tiny(plain.backbone, pixels, labels, 50, model=plain)
    held_grid = [s for s in find_images(world / "grid-2").samples][::4]
    base = MiraGe.from_pretrained(world / "base")
    assert _accuracy(base, held_grid) - _accuracy(plain, held_grid) >= 0.05


def test_the_adapted_checkpoint_is_a_normal_one_with_its_lineage(world, adapted, tmp_path):
    adapted = world / "adapted"
    run = CliRunner().invoke(app, ["info", str(adapted)])
    assert run.exit_code == 0, run.output
    lineage = json.loads(run.output)["lineage"]
    assert [e["generators"] for e in lineage] == [["stripes-3"]]
    assert lineage[0]["shots"] == 16 and lineage[0]["mode"] == "prototype"
    assert len(lineage[0]["data_hash"]) == 16
    detector = Detector.from_pretrained(adapted)
    assert detector.info()["lineage"] == lineage
    out = tmp_path / "rows.jsonl"
    images = [s.path for s in find_images(world / "stripes-3").samples[:4]]
    run = CliRunner().invoke(
        app, ["detect", *images, "-m", str(adapted), "-f", "jsonl", "-o", str(out)]
    )
    assert run.exit_code == 0, run.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["fake_prob"] for r in rows] == pytest.approx(
        [p.fake_prob for p in detector.score(images)], abs=1e-6
    )
    # export: the ONNX graph carries the adapters
    exported = tmp_path / "exported"
    shutil.copytree(adapted, exported)
    run = CliRunner().invoke(app, ["export", "--model", str(exported)])
    assert run.exit_code == 0, run.output
    from miragedet import load_detector

    on_onnx = load_detector(str(exported), backend="onnx").score(images)
    on_torch = Detector.from_pretrained(adapted, precision="fp32").score(images)
    assert [p.fake_prob for p in on_onnx] == pytest.approx(
        [p.fake_prob for p in on_torch], abs=1e-4
    )
    # adapting the adapted model appends to its lineage (its feature memory stands in for
    # --old-data)
    second = tmp_path / "second"
    run = CliRunner().invoke(
        app, ["adapt", str(world / "chroma-2"), "-m", str(adapted), "-o", str(second),
              "--split", "", "--shots", "8"],
    )  # fmt: skip
    assert run.exit_code == 0, run.output
    lineage = Detector.from_pretrained(second).lineage
    assert [e["generators"] for e in lineage] == [["stripes-3"], ["chroma-2"]]
    old_row = lineage[1]["table"][0]  # no --old-data: forgetting measured on the stored memory
    assert old_row["data"].startswith("old (feature memory")
    assert old_row["before"]["accuracy"] - old_row["after"]["accuracy"] <= 0.01


def test_a_sequence_of_generators_keeps_forgetting_low(world, tmp_path):
    tasks = [str(world / name) for name in ("grid-2", "stripes-3", "chroma-2")]
    config = AdaptConfig(shots=16, split=None, old_split=None)
    report = continual(world / "base", tasks, tmp_path / "seq", config)
    assert len(report["accuracy"]) == 3 and len(report["accuracy"][-1]) == 3
    assert report["average_forgetting"] <= 2.0, report
    assert report["average_accuracy"] >= 90.0, report
    assert (tmp_path / "seq" / "step-2" / "config.json").is_file()
    assert "| 2 (chroma-2) |" in (tmp_path / "seq" / "continual.md").read_text()


def test_an_attribution_model_says_unknown_generator_for_a_family_it_never_saw(
    attribution, tmp_path
):
    root = attribution.parent
    detector = Detector.from_pretrained(attribution)
    assert detector.classes == ["real", "grid-2", "stripes-3"]
    write_layout(tmp_path / "fresh", "generic", ("grid-2", "stripes-3"), n_per_class=150, seed=15)
    known = [p for p in detector.score([s.path for s in find_images(tmp_path / "fresh").samples])]
    unseen = find_images(root / "unseen")
    chroma = [s.path for s in unseen.samples if s.label == 1]
    flagged_known = np.mean([p.top_class == "unknown generator" for p in known])
    flagged_chroma = np.mean([p.top_class == "unknown generator" for p in detector.score(chroma)])
    assert flagged_known <= 0.05, flagged_known
    assert flagged_chroma >= 0.80, flagged_chroma
    assert all(p.open_set is not None and p.label in ("real", "fake") for p in known)

    # detect's rows and score-dataset's Parquet carry the same outcome
    rows = tmp_path / "rows.jsonl"
    args = ["detect", *chroma[:3], "-m", str(attribution), "-f", "jsonl", "-o", str(rows)]
    assert CliRunner().invoke(app, args).exit_code == 0
    api = detector.score(chroma[:3])
    detected = [json.loads(line) for line in rows.read_text().splitlines()]
    assert [r["unknown_generator"] for r in detected] == [p.open_set["unknown"] for p in api]
    assert [r["top_class"] for r in detected] == [p.top_class for p in api]
    from miragedet.inference.score_dataset import read_scores, score_dataset

    score_dataset(str(root / "unseen"), tmp_path / "scores", str(attribution), engine="local")
    table = read_scores(tmp_path / "scores")
    by_path = {row["path"]: row for row in table.to_pylist()}
    assert [by_path[c]["top_class"] for c in chroma[:3]] == [p.top_class for p in api]
    for want, got in zip(detected, (by_path[c] for c in chroma[:3]), strict=True):
        assert list(got) == list(want)  # one row: the class and open-set columns included
        assert got["unknown_generator"] == want["unknown_generator"]
        assert got["generator_distance"] == pytest.approx(want["generator_distance"], rel=1e-5)
        assert got["p_real"] == pytest.approx(want["p_real"], abs=1e-6)

    # the server gives the same outcome as the Python API
    import asyncio

    from miragedet.apps.server import ServerSettings, create_app

    server_app = create_app(ServerSettings(model=str(attribution), provenance=False))

    async def ask(path: str) -> dict:
        async with in_process(server_app) as client:
            files = {"files": ("a.png", Path(path).read_bytes())}
            return (await client.post("/v1/detect", files=files)).json()["results"][0]

    served = asyncio.run(ask(chroma[0]))
    [local] = detector.score(chroma[:1])
    assert served["top_class"] == local.top_class == "unknown generator"
    assert served["open_set"]["distance"] == pytest.approx(local.open_set["distance"], rel=1e-4)

    from miragedet.evaluation.evaluate import evaluate_dataset

    metrics = evaluate_dataset(
        detector.model, tmp_path / "fresh", tmp_path / "eval", split=None,
        unknown_data=root / "unseen", workers=0,
    )  # fmt: skip
    report = metrics["open_set"]
    assert set(report["unknown_rate"]) == {"real", "grid-2", "stripes-3", "unknown generators"}
    assert report["unknown_rate"]["unknown generators"] >= 0.80
    assert report["auroc"] >= 0.90
    assert "Open-set AUROC" in (tmp_path / "eval" / "report.md").read_text()


def test_bad_input_is_refused_with_nothing_written(world, adapted, tmp_path):
    runner = CliRunner()
    out = tmp_path / "out"
    base = ["-m", str(world / "base"), "-o", str(out), "--old-data", str(world / "grid-2")]
    too_many = runner.invoke(app, ["adapt", str(world / "stripes-3"), *base, "--shots", "5000",
                                   "--split", "", "--old-split", ""])  # fmt: skip
    assert too_many.exit_code == 2 and "fewer than --shots 5000" in too_many.output
    empty = tmp_path / "empty"
    (empty / "0_real").mkdir(parents=True)
    (empty / "1_fake").mkdir()
    shutil.copy(find_images(world / "stripes-3").samples[0].path, empty / "0_real" / "a.png")
    no_fakes = runner.invoke(app, ["adapt", str(empty), *base, "--shots", "1", "--split", ""])
    assert no_fakes.exit_code == 2 and "no images" in no_fakes.output
    assert not out.exists()
    contradiction = ImageSet(tmp_path, "generic", ["grid-2", "real"], [Sample("x", 0, "s")])
    with pytest.raises(AdaptError, match="class 0 is 'grid-2'"):
        check_roles(contradiction, "DATA")
    relabelled = ImageSet(tmp_path, "manifest", ["real", "nature"], [Sample("x", 0, "s")])
    with pytest.raises(AdaptError, match="looks real but is labelled fake"):
        check_roles(relabelled, "DATA")
    # a feature memory made with another backbone (an adapted checkpoint's, copied beside a
    # checkpoint of another CLIP) is refused
    other = MiraGe(load_backbone("random:tiny-asym"), ModelConfig.for_method("mirage", depth=2))
    save_pretrained(other, tmp_path / "other")
    shutil.copy(world / "adapted" / "adapt_memory.safetensors", tmp_path / "other")
    wrong = runner.invoke(app, ["adapt", str(world / "stripes-3"), "-m", str(tmp_path / "other"),
                                "-o", str(out), "--split", ""])  # fmt: skip
    assert wrong.exit_code == 2 and "another backbone" in wrong.output
    assert not out.exists()
    # --device as on train: a GPU asked for where there is none is a clear error, nothing written
    sequence = [str(world / "grid-2"), str(world / "stripes-3"), "-m", str(world / "base")]
    for command in (["adapt", str(world / "stripes-3"), *base],
                    ["continual", *sequence, "-o", str(out)]):  # fmt: skip
        gpu = runner.invoke(app, [*command, "--device", "cuda:7"])
        assert gpu.exit_code == 2 and "no CUDA GPU is usable here" in gpu.output, gpu.output
        assert "Traceback" not in gpu.output and not out.exists()


def test_prompt_mode_is_guarded_against_forgetting(world, tmp_path):
    out = tmp_path / "prompt"
    run = CliRunner().invoke(
        app, ["adapt", str(world / "stripes-3"), "-m", str(world / "base"), "-o", str(out),
              "--mode", "prompt", "--old-data", str(world / "grid-2"), "--split", "",
              "--old-split", "", "--steps", "60"],
    )  # fmt: skip
    # tuning the prompts on 32 images moves what grid-2 relied on; the guard refuses to save
    assert run.exit_code == 1, run.output
    assert "not saved" in run.output and not out.exists()


def test_shrinkage_through_the_gram_matrix_equals_scikit_learns():
    from sklearn.covariance import ledoit_wolf_shrinkage

    from miragedet.training.adapt_prototype import shrinkage

    generator = torch.Generator().manual_seed(0)
    for n, d in ((50, 3), (40, 300), (200, 64)):
        x = torch.randn(n, d, generator=generator) @ torch.randn(d, d, generator=generator)
        x = x - x.mean(dim=0)
        expected = ledoit_wolf_shrinkage(x.double().numpy(), assume_centered=True)
        assert shrinkage(x) == pytest.approx(expected, rel=1e-9)


def test_a_checkpoint_train_wrote_adapts_without_old_data(world, tmp_path):
    """train keeps the feature memory of what the model knows (here its training images: this
    layout has no validation split) beside each checkpoint; adapt then needs no --old-data."""
    runner = CliRunner()
    run = runner.invoke(app, [
        "train", str(world / "grid-2"), "--backbone", "tiny", "--depth", "2", "--batch-size",
        "64", "--epochs", "1", "--workers", "0", "--max-per-class", "128", "-o",
        str(tmp_path / "run"),
    ])  # fmt: skip
    assert run.exit_code == 0, run.output
    assert (tmp_path / "run" / "last" / "adapt_memory.safetensors").is_file()
    adapted = runner.invoke(app, ["adapt", str(world / "stripes-3"), "-m",
                                  str(tmp_path / "run" / "last"), "-o", str(tmp_path / "out"),
                                  "--split", "", "--shots", "8", "--force"])  # fmt: skip
    assert adapted.exit_code == 0, adapted.output
    assert "using the feature memory stored" in " ".join(adapted.output.split())
