"""Hostile inputs: >= 1,000 malformed or adversarial files through the Python API, `detect` and
the server; and property-based fuzzing of the decoder. No crash, no hang, a per-item error, and
the good images of the same batch still scored."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
import time

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from conftest import SERVER_KEY
from hostile import write_corpus
from miragedet import MiraGe, ModelConfig
from miragedet.data.dataset import ImageDecodeError, load_image
from miragedet.inference.detector import Detector, to_image

BOUND_S = 10.0  # CPU seconds: no single file may cost more to be decoded or refused


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hostile")
    files, good = write_corpus(folder)
    return folder, files, good


def test_corpus_is_large_and_varied(corpus):
    _, files, good = corpus
    assert len(files) >= 1000
    kinds = {c.split("-")[0] for c in files.values()}
    assert {"truncated", "bitflip", "huge", "bomb", "not", "valid", "random"} <= kinds
    assert len(good) >= 25


def test_python_api_scores_or_refuses_every_file(corpus, tiny):
    _, files, good = corpus
    detector = Detector(MiraGe(tiny, ModelConfig.for_method("mirage", depth=2)), batch_size=32)
    paths = sorted(files)
    slowest = 0.0
    for path in paths:  # the decode path alone, file by file, in CPU time (not the wall clock,
        start = time.process_time()  # which a busy machine stretches)
        with contextlib.suppress(ImageDecodeError):
            to_image(str(path), draft_size=detector.draft_size)
        slowest = max(slowest, time.process_time() - start)
    assert slowest < BOUND_S
    results = detector.score([str(p) for p in paths])  # batches mixing good and bad files
    assert [r.source for r in results] == [str(p) for p in paths]
    by_path = {r.source: r for r in results}
    for path in paths:
        r = by_path[str(path)]
        if r.error is None:
            assert 0.0 <= r.fake_prob <= 1.0 and r.label in ("real", "fake")
        else:
            assert r.fake_prob is None and r.label is None and len(r.error) > 5
    for path in good:
        assert by_path[str(path)].error is None, (path.name, by_path[str(path)].error)
    refused = [p for p, c in files.items() if c.startswith(("not-an-image", "huge-dims", "bomb"))]
    for path in refused:
        assert by_path[str(path)].error is not None, path.name
    assert sum(r.error is not None for r in results) > 100


def test_detect_command_survives_the_corpus(corpus, served_checkpoint, tmp_path):
    folder, files, good = corpus
    out = tmp_path / "rows.jsonl"
    command = [sys.executable, "-m", "miragedet", "detect", str(folder), "-m"]
    command += [str(served_checkpoint), "-f", "jsonl", "-o", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 1, done.stderr[-2000:]  # 1: some inputs could not be read
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["path"] for r in rows) == sorted(str(p) for p in files)
    by_path = {r["path"]: r for r in rows}
    assert all(by_path[str(p)]["error"] is None for p in good)
    failed = sum(r["error"] is not None for r in rows)
    assert f"{len(rows) - failed} scored, {failed} failed" in done.stderr.replace("\n", " ")


def test_server_answers_every_file_without_5xx(corpus, server):
    _, files, good = corpus
    paths = sorted(files)
    small = [p for p in paths if p.stat().st_size < 200_000]
    large = [p for p in paths if p.stat().st_size >= 200_000]
    statuses: dict[str, int] = {}
    client = httpx.Client(headers={"X-API-Key": SERVER_KEY}, timeout=300)
    batches = [small[i : i + 16] for i in range(0, len(small), 16)] + [[p] for p in large]
    for batch in batches:
        files_ = [("files", (p.name, p.read_bytes())) for p in batch]
        r = client.post(f"{server}/v1/detect", files=files_)
        assert r.status_code < 500, r.text
        if r.status_code == 200:
            for item in r.json()["results"]:
                statuses[item["name"]] = item["status"]
                if item["status"] == 200:
                    assert 0.0 <= item["fake_prob"] <= 1.0
                else:
                    assert item["error"]
        else:  # the whole request refused (e.g. 413: body over the server's limit)
            assert len(batch) == 1 and r.status_code in (413, 415, 422), r.text
            statuses[batch[0].name] = r.status_code
    assert len(statuses) == len(paths)
    assert all(statuses[p.name] == 200 for p in good if p.stat().st_size < 200_000)
    assert {s for s in statuses.values()} <= {200, 413, 415, 422}
    assert client.get(f"{server}/healthz").status_code == 200


def _valid(fmt: str) -> bytes:
    buf = io.BytesIO()
    image = Image.linear_gradient("L").resize((40, 32)).convert("RGB")
    image.save(buf, fmt)
    return buf.getvalue()


SEEDS = {fmt: _valid(fmt) for fmt in ("JPEG", "PNG", "GIF", "WEBP", "TIFF")}


def _decodes_or_refuses(data: bytes) -> None:
    try:
        image = load_image(data, max_pixels=4_000_000)
    except ImageDecodeError as exc:
        assert exc.kind in ("format", "size", "corrupt", "missing") and str(exc)
    else:
        assert image.mode == "RGB" and image.width > 0 and image.height > 0


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=4096))
def test_any_bytes_decode_or_are_refused_cleanly(data):
    _decodes_or_refuses(data)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(sorted(SEEDS)),
    st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=12),
    st.one_of(st.none(), st.integers(0, 10**6)),
)
def test_mutated_images_decode_or_are_refused_cleanly(fmt, edits, cut):
    data = bytearray(SEEDS[fmt])
    for position, value in edits:
        data[position % len(data)] = value
    if cut is not None:
        data = data[: cut % (len(data) + 1)]
    _decodes_or_refuses(bytes(data))
