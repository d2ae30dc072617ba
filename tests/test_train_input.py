"""The trainer's input path: the speed and data wait it records, workers capped by the CPUs,
one persistent loader whose workers still see each epoch, and JPEGs drafted only when allowed."""

from __future__ import annotations

import io
import json
import warnings

import pytest
import torch
from rich.console import Console

import miragedet.data.dataset as dataset_module
from miragedet.data.dataset import ImageDataset
from miragedet.data.synthetic import write_layout
from miragedet.data.transforms import Augment, Preprocess, TrainTransform
from miragedet.inference.threads import available_cpus
from miragedet.training.config import TrainConfig
from miragedet.training.input import TrainInput, draft_size
from miragedet.training.trainer import Trainer

TINY = dict(backbone="tiny", batch_size=16, depth=2, bank_size=32, lr=0.05, log_every=1)


@pytest.fixture(scope="module")
def pngs(tmp_path_factory):
    return write_layout(tmp_path_factory.mktemp("pngs"), "chameleon", ("grid-2",), n_per_class=16)


def _console() -> Console:
    return Console(file=io.StringIO(), width=200, force_terminal=False)


def test_a_run_records_its_speed_and_data_wait_in_the_log_and_the_result(pngs, tmp_path):
    config = TrainConfig(data=str(pngs), epochs=2, workers=0, output=str(tmp_path / "run"), **TINY)
    result = Trainer(config, console=_console()).fit()
    assert result.images_per_s > 0 and 0 <= result.data_wait_share <= 1
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").open()]
    epochs = [e for e in log if e["type"] == "val"]
    assert [e["epoch"] for e in epochs] == [1, 2]
    for entry in epochs:
        assert entry["images_per_s"] > 0 and 0 <= entry["data_wait_share"] <= 1
    assert (epochs[-1]["images_per_s"], epochs[-1]["data_wait_share"]) == (
        result.images_per_s,
        result.data_wait_share,
    )
    steps = [e for e in log if e["type"] == "train"]
    assert len(steps) == 4 and all(0 <= e["data_wait_share"] <= 1 for e in steps)


def test_a_run_stopped_mid_epoch_still_returns_its_speed(pngs, tmp_path):
    config = TrainConfig(
        data=str(pngs), epochs=1, max_steps=1, workers=0, output=str(tmp_path / "run"), **TINY
    )
    result = Trainer(config, console=_console()).fit()
    assert result.global_step == 1 and result.images_per_s > 0


def test_workers_are_capped_by_the_cpus_with_our_note_and_no_pytorch_warning(pngs, tmp_path):
    usable = available_cpus().count
    asked = usable + 3
    console = _console()
    config = TrainConfig(
        data=str(pngs), epochs=1, max_steps=1, workers=asked, output=str(tmp_path / "run"), **TINY
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = Trainer(config, console=console)
        result = trainer.fit()
    assert trainer.workers == usable and result.global_step == 1
    printed = console.file.getvalue()
    assert f"workers: {asked} asked," in printed and f"using {usable}" in printed
    assert printed.count("workers:") == 1
    noise = [str(w.message) for w in caught if "worker" in str(w.message).lower()]
    assert noise == []


def test_default_workers_follow_the_device(monkeypatch):
    """Without --workers: two on a CPU; on a GPU the CPUs usable here less one for the main
    process, shared by the ranks torchrun started on the machine, at most 16, said in a note."""
    from miragedet.inference import threads
    from miragedet.training.input import usable_workers

    monkeypatch.setattr(threads, "available_cpus", lambda: threads.Cpus(16, 64, "cgroup quota"))
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert usable_workers(None, torch.device("cpu")) == (2, None)
    assert usable_workers(3, torch.device("cuda")) == (3, None)  # asked: as asked
    n, note = usable_workers(None, torch.device("cuda"))
    assert n == 15 and "workers: 15 (on a GPU: 16 of the host's 64 CPUs" in note
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    n, note = usable_workers(None, torch.device("cuda:2"))
    assert n == 3 and "shared by 4 ranks" in note
    monkeypatch.setattr(threads, "available_cpus", lambda: threads.Cpus(128, 128, "host"))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    assert usable_workers(None, torch.device("cuda"))[0] == 16
    monkeypatch.setattr(threads, "available_cpus", lambda: threads.Cpus(1, 1, "host"))
    assert usable_workers(None, torch.device("cuda"))[0] == 1  # never none at all
    assert usable_workers(None, torch.device("cpu")) == (
        1,
        "workers: 2 by default, 1 CPUs usable here: using 1",
    )


class _EpochEcho(torch.utils.data.Dataset):
    """Each item is the epoch its transform was set to when the item was made."""

    class _Transform:
        epoch = -1

        def set_epoch(self, epoch: int) -> None:
            self.epoch = epoch

    def __init__(self) -> None:
        self.transform = self._Transform()

    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> dict:
        value = torch.tensor([float(self.transform.epoch)])
        return {"label": 0, "index": index, "error": None, "pixel_values": value}


def test_persistent_workers_still_draw_each_epochs_augmentations():
    feed = TrainInput(_EpochEcho(), batch_size=2, workers=1, device=torch.device("cpu"), seed=0)
    assert feed.loader.persistent_workers and not feed.loader.pin_memory
    for epoch in (0, 1, 2):
        seen = [b["pixel_values"].flatten().tolist() for b in feed.batches([3, 1, 0, 2], epoch)]
        assert seen == [[epoch, epoch], [epoch, epoch]]
    first = feed.loader._iterator
    list(feed.batches([0], 3))
    assert feed.loader._iterator is first  # the same workers, not a new set each pass


def test_the_next_epoch_is_prepared_ahead_and_a_different_pass_starts_over():
    feed = TrainInput(_EpochEcho(), batch_size=2, workers=1, device=torch.device("cpu"), seed=0)

    def epochs_seen(batches):
        return [b["pixel_values"].flatten().tolist() for b in batches]

    assert epochs_seen(feed.batches([0, 1, 2, 3], 0, following=[3, 2, 1, 0])) == [[0, 0]] * 2
    assert feed.primed is not None and feed.primed[0] == [(1, 3), (1, 2), (1, 1), (1, 0)]
    assert epochs_seen(feed.batches([3, 2, 1, 0], 1)) == [[1, 1]] * 2
    # primed for epoch 2, but a stopped run or a dry run asks for something else
    list(feed.batches([0, 1], 1, following=[1, 2]))
    assert [b["indices"].tolist() for b in feed.batches([2, 3, 0], 5)] == [[2, 3], [0]]
    assert feed.primed is None


def test_workers_train_exactly_as_one_process_with_augmentation(pngs, tmp_path):
    weights = []
    for workers in (0, 2):
        config = TrainConfig(
            data=str(pngs),
            epochs=2,
            augment="robust",
            workers=workers,
            output=str(tmp_path / f"w{workers}"),
            **TINY,
        )
        trainer = Trainer(config, console=_console())
        trainer.fit()
        weights.append({k: v.clone() for k, v in trainer.model.state_dict().items()})
    for key in weights[0]:
        torch.testing.assert_close(weights[1][key], weights[0][key])


def test_draft_decoding_only_where_training_sees_the_image_through_a_resize():
    pre = Preprocess(image_size=224, resize_shortest=224)
    assert draft_size(TrainTransform(pre)) == 448  # inference's rule: 2 x resize_shortest
    assert draft_size(TrainTransform(pre, view="crop")) is None  # native pixels
    assert draft_size(TrainTransform(pre), align="jpeg:96") is None
    # the robust preset's resized crops (scale >= 0.5) still shrink into the model's input
    assert draft_size(TrainTransform(pre, Augment.preset("robust"))) == 448
    # crops so small that the draft would make them grow into the model's input: no draft
    tiny_crops = Augment(p_resized_crop=1.0, crop_scale=(0.05, 1.0))
    assert draft_size(TrainTransform(pre, tiny_crops)) is None


@pytest.fixture(scope="module")
def jpegs(tmp_path_factory):
    root = tmp_path_factory.mktemp("jpegs")
    return write_layout(root, "chameleon", ("grid-2",), n_per_class=8, size=256, fmt="jpg")


@pytest.mark.parametrize("view", ["resize", "crop"])
def test_training_decodes_large_jpegs_at_reduced_scale_only_with_the_resize_view(
    jpegs, tmp_path, monkeypatch, view
):
    decoded: list[tuple[int | None, tuple[int, int]]] = []
    real = dataset_module.load_image

    def recording(source, max_pixels=dataset_module.MAX_PIXELS, draft_size=None):
        image = real(source, max_pixels, draft_size=draft_size)
        decoded.append((draft_size, image.size))
        return image

    monkeypatch.setattr(dataset_module, "load_image", recording)
    # only the training pass counted here (the checkpoint's feature memory decodes its own)
    monkeypatch.setattr("miragedet.training.known.keep_memories", lambda *a, **k: None)
    config = TrainConfig(
        data=str(jpegs), epochs=1, max_steps=1, workers=0, view=view, **TINY
    )  # the tiny backbone's model size is 32 px: drafts of at least 64 px
    config.output = str(tmp_path / "run")
    Trainer(config, console=_console()).fit()
    assert len(decoded) == 16
    if view == "resize":
        assert set(decoded) == {(64, (64, 64))}  # 256 px decoded at 1/4 scale
    else:
        assert set(decoded) == {(None, (256, 256))}


def test_the_dataset_keeps_full_decodes_for_other_callers(jpegs):
    from miragedet.data.layouts import find_images

    samples = find_images(str(jpegs), "auto").samples[:1]
    sizes = []

    def transform(image, index):
        sizes.append(image.size)
        return torch.zeros(1)

    ImageDataset(samples, transform)[0]
    assert sizes == [(256, 256)]


def test_train_names_only_the_checkpoints_it_wrote(tmp_path):
    """Without validation no best is saved: the last line names RUN/last alone."""
    from typer.testing import CliRunner

    from miragedet.apps.cli import app
    from miragedet.data.synthetic import write_layout

    data = write_layout(tmp_path / "data", "ufd", ("grid-2",), n_per_class=8, size=32)
    run = CliRunner().invoke(app, [
        "train", str(data), "--backbone", "tiny", "--depth", "2", "--batch-size", "8",
        "--epochs", "1", "--workers", "0", "-o", str(tmp_path / "run"),
    ])  # fmt: skip
    assert run.exit_code == 0, run.output
    last_line = "".join(run.output.split()).split("done:")[-1]  # the console wraps long lines
    assert not (tmp_path / "run" / "best").exists()
    assert "run/last" in last_line and "/best" not in last_line
