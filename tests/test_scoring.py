"""`score-dataset`: Parquet shards equal to `detect`, manifests, resume after SIGKILL (Ray)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from miragedet.apps.detect import run_detect
from miragedet.data.synthetic import write_layout
from miragedet.inference.detector import Detector
from miragedet.inference.score_dataset import ScoringError, list_inputs, read_scores, score_dataset

BROKEN = b"\xff\xd8\xff\xe0 this is not a JPEG"


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = write_layout(tmp_path_factory.mktemp("score"), "generic", ("grid-2",), n_per_class=100)
    (root / "real" / "zz-broken.jpg").write_bytes(BROKEN)
    return root


def _detect_scores(checkpoint, paths, tmp_path):
    out = tmp_path / "detect.jsonl"
    run_detect(
        Detector.from_pretrained(checkpoint), paths, output=out, fmt="jsonl", provenance=True
    )
    return {r["path"]: r for r in map(json.loads, out.read_text().splitlines())}


def test_local_engine_equals_detect_and_resumes_missing_shards(served_checkpoint, folder, tmp_path):
    paths = list_inputs(str(folder))
    assert len(paths) == 201
    out = tmp_path / "scores"
    report = score_dataset(str(folder), out, str(served_checkpoint), engine="local", shard_size=64)
    assert (report.scored, report.failed, report.shards) == (200, 1, 4)
    table = read_scores(out).to_pylist()
    assert [r["path"] for r in table] == paths  # every input once, in order
    expected = _detect_scores(served_checkpoint, paths, tmp_path)
    for row in table:
        ref = expected[row["path"]]
        if ref["error"]:
            assert row["error"] == ref["error"] and row["fake_prob"] is None
        else:
            assert row["fake_prob"] == pytest.approx(ref["fake_prob"], abs=1e-5)
            assert row["label"] == ref["label"] and row["error"] is None
            # the verdict weighed with the metadata, as detect gives it
            assert (row["verdict"], row["basis"]) == (ref["verdict"], ref["basis"])
            assert row["provenance"] == ref["provenance"]
    # a kill between the write and the rename leaves a temp file; a lost shard is re-scored alone
    (out / "part-00002.parquet").unlink()
    (out / ".part-00002.parquet.999.tmp").write_bytes(b"half")
    again = score_dataset(str(folder), out, str(served_checkpoint), engine="local", shard_size=64)
    assert (again.shards_done_before, again.scored + again.failed) == (3, 64)
    assert report.placement.startswith("on cpu")  # the header says where it scores
    assert not list(out.glob(".*.tmp"))
    assert read_scores(out).to_pylist() == table
    # the same folder with another shard size is another job: refused, nothing overwritten
    with pytest.raises(ScoringError, match="another job"):
        score_dataset(str(folder), out, str(served_checkpoint), engine="local", shard_size=10)


def test_manifests_and_bad_inputs(folder, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    paths = list_inputs(str(folder))
    relative = [os.path.relpath(p, folder) for p in paths]
    (folder / "list.txt").write_text("\n".join(relative) + "\n")
    (folder / "manifest.csv").write_text("path,note\n" + "".join(f"{p},x\n" for p in relative))
    pq.write_table(pa.table({"path": paths}), folder / "manifest.parquet")
    try:
        for name in ("list.txt", "manifest.csv", "manifest.parquet"):
            assert list_inputs(str(folder / name)) == [str(folder / r) for r in relative]
        (tmp_path / "bad.csv").write_text("file,label\na.jpg,1\n")
        with pytest.raises(ScoringError, match="'path' column"):
            list_inputs(str(tmp_path / "bad.csv"))
        with pytest.raises(ScoringError, match="no such folder"):
            list_inputs(str(tmp_path / "missing"))
        with pytest.raises(ScoringError, match="engine must be"):
            score_dataset(str(folder), tmp_path / "o", "ckpt", engine="spark")
        # a checkpoint that cannot load is refused before any worker starts or anything is written
        with pytest.raises(ValueError, match="does not exist"):
            score_dataset(str(folder), tmp_path / "o", str(tmp_path / "no-ckpt"), engine="ray")
        assert not (tmp_path / "o").exists()
    finally:
        for name in ("list.txt", "manifest.csv", "manifest.parquet"):
            (folder / name).unlink()


def test_ray_engine_killed_and_rerun_loses_and_repeats_nothing(served_checkpoint, tmp_path):
    pytest.importorskip("ray")
    root = write_layout(tmp_path / "data", "generic", ("grid-2",), n_per_class=150)
    (root / "real" / "zz-broken.jpg").write_bytes(BROKEN)
    out = tmp_path / "scores"
    command = [sys.executable, "-m", "miragedet", "score-dataset", str(root), str(out)]
    command += ["-m", str(served_checkpoint), "--engine", "ray", "--workers", "1"]
    command += ["--batch-size", "4", "--shard-size", "15"]
    env = dict(os.environ, RAY_AUTH_MODE="disabled")
    job = subprocess.Popen(
        command, env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    deadline = time.monotonic() + 900  # a hang guard only: two written shards end the wait
    while len(list(out.glob("part-*.parquet"))) < 2:
        assert job.poll() is None, job.stdout.read().decode()
        assert time.monotonic() < deadline, "no two shards in 900 s: the job hung"
        time.sleep(0.05)
    os.killpg(job.pid, signal.SIGKILL)  # the driver and the Ray processes it started
    job.wait()
    done_before = len(list(out.glob("part-*.parquet")))
    assert 2 <= done_before < 21, "the job finished before it could be killed"
    rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 1, rerun.stdout + rerun.stderr  # 1: an unreadable input
    assert f"({done_before} done before)" in rerun.stderr.replace("\n", " ")
    assert "1 Ray actor, each 0 GPU and 1 CPU, 2 decode threads" in " ".join(rerun.stderr.split())
    rows = read_scores(out).to_pylist()
    paths = list_inputs(str(root))
    assert [r["path"] for r in rows] == paths  # none lost, none twice, in input order
    expected = _detect_scores(served_checkpoint, paths, tmp_path)
    errors = [r for r in rows if r["error"]]
    assert [r["path"] for r in errors] == [str(root / "real" / "zz-broken.jpg")]
    assert errors[0]["error"] == expected[errors[0]["path"]]["error"]
    for row in rows:
        if not row["error"]:
            assert row["fake_prob"] == pytest.approx(expected[row["path"]]["fake_prob"], abs=1e-5)


def test_ray_actors_on_a_gpu_decode_with_their_share_and_take_several_batches_a_call(monkeypatch):
    """A GPU actor decodes with its share of the machine's CPUs (a CPU actor with what it asks
    Ray for) and is handed several detector batches per call, so that its pipeline overlaps
    decoding with the forward inside the call (one batch a call would take turns). Stand-ins
    for the machine: 16 CPUs, 1 GPU."""
    import torch

    from miragedet.inference import score_dataset as sd
    from miragedet.inference import threads
    from miragedet.inference.detector_config import DetectorConfig

    monkeypatch.setattr(threads, "available_cpus", lambda: threads.Cpus(16, 16, "host"))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    config = DetectorConfig()
    on_cpu, rows = sd.actor_plan(config, 1.0, 0.0)
    assert (on_cpu.threads, rows) == (2, 32)
    half, rows = sd.actor_plan(config, 1.0, 0.5)  # two actors on the GPU
    assert (half.threads, rows) == (8, sd.RAY_GPU_BATCHES * 256)
    whole, rows = sd.actor_plan(config.replace(batch_size=64, threads=3), 1.0, 1.0)
    assert (whole.threads, rows) == (3, sd.RAY_GPU_BATCHES * 64)  # as asked
    assert sd.actor_plan(config, 1.0, 1.0)[0].threads == 16


def test_storage_objects_are_fetched_in_the_decode_threads(served_checkpoint, folder, monkeypatch):
    """A storage URI's objects are read in the decode pool (several at once, ahead of the
    forward), not one by one in the thread that feeds it; a missing one is its own error row."""
    import threading

    import numpy as np

    from miragedet.inference import score_dataset as module
    from miragedet.inference.detector_config import DetectorConfig

    local = list_inputs(str(folder))[:6]
    from pathlib import Path

    store = {f"mem://bucket/{i}.png": Path(p).read_bytes() for i, p in enumerate(local)}
    readers = []

    def read_input(path):
        readers.append(threading.current_thread().name)
        return store[path]  # KeyError: the object is missing

    monkeypatch.setattr(module, "read_input", read_input)
    config = DetectorConfig(provenance=False, threads=2, batch_size=4)
    scorer = module.Scorer(str(served_checkpoint), config)
    names = [*store, "mem://bucket/gone.png"]
    parts = (names[:4], names[4:])
    batches = [{"shard": np.zeros(len(part), dtype=np.int64), "index": np.arange(len(part)),
                "path": np.array(part, dtype=object)} for part in parts]  # fmt: skip
    rows = [json.loads(r) for out in scorer.stream(batches) for r in out["row"]]
    assert [r["path"] for r in rows] == names
    assert rows[-1]["error"].startswith("cannot read: ") and rows[-1]["fake_prob"] is None
    want = Detector.from_pretrained(served_checkpoint, batch_size=4).score(local, provenance=False)
    for row, p in zip(rows, want, strict=False):
        assert row["fake_prob"] == pytest.approx(p.fake_prob, abs=1e-6)
    assert len(readers) == len(names)
    assert all(name.startswith("miragedet-decode") for name in readers), readers
