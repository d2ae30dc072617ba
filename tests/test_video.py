"""Video (docs/video.md): clips decoded by seeking to their sampled frames, scored by their
frames on every surface with a timeline, a temporal head for what frames alone cannot show,
their provenance, and hostile clips refused as error rows."""

from __future__ import annotations

import asyncio
import json
import struct
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from conftest import fit_tiny, in_process
from miragedet import MiraGe, ModelConfig, save_pretrained
from miragedet.apps.cli import app
from miragedet.data.synthetic import make_set
from miragedet.data.synthetic_video import VideoSpec, make_frames, write_video, write_video_set
from miragedet.data.video import Sampling, plan, read_video
from miragedet.inference.detector import Detector
from miragedet.model.backbone import load_backbone


@pytest.fixture(scope="module")
def frame_model(tmp_path_factory) -> Path:
    """A tiny detector trained on grid-2 stills (the quickstart's recipe): frames are its input."""
    torch.manual_seed(0)
    tiny = load_backbone("tiny")
    images, labels = make_set(300, 32, seed=1)
    model = MiraGe(tiny, ModelConfig.for_method("mirage", depth=2))
    model, _ = fit_tiny(tiny, tiny.preprocess.batch(images), labels, 400, model=model)
    path = tmp_path_factory.mktemp("video") / "frames"
    save_pretrained(model, path)
    return path


def _numbered(n: int, size: int = 32) -> list[np.ndarray]:
    """Frames whose top-left 8 x 8 block holds their index (x 2), the rest dark."""
    frames = []
    for i in range(n):
        frame = np.zeros((size, size, 3), np.uint8)
        frame[:8, :8] = 2 * i
        frames.append(frame)
    return frames


def _index(image) -> int:
    return round(float(np.asarray(image)[:8, :8].mean()) / 2)


def test_frames_are_sampled_by_time_by_seeking(tmp_path):
    clip = write_video(tmp_path / "n.mkv", _numbered(100), fps=10)  # 10 s
    got = read_video(clip, Sampling(frames=16))
    assert len(got.frames) == 16 and got.duration == pytest.approx(10.0)
    expected = [int(t * 10) for t in plan(10.0, Sampling(frames=16))]  # frame shown at t
    assert [_index(f) for f in got.frames] == expected
    assert got.times == pytest.approx([i / 10 for i in expected])
    by_rate = read_video(clip, Sampling(fps=2))  # one frame every half second
    assert [_index(f) for f in by_rate.frames] == list(range(0, 100, 5))
    first = read_video(clip, Sampling(frames=4, max_seconds=2.0))
    assert max(first.times) < 2.0


def test_rotation_and_variable_frame_rate_follow_the_container(tmp_path):
    path = tmp_path / "portrait.mp4"
    marker = np.zeros((32, 48, 3), np.uint8)
    marker[:8, :8] = 255  # top-left of the stored frame
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=8)
        stream.width, stream.height, stream.pix_fmt = 48, 32, "yuv444p"
        stream.options = {"qp": "0"}
        stream.set_display_rotation(90)  # counter-clockwise, as a phone held upright records
        for _ in range(8):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(marker, format="rgb24")))
        container.mux(stream.encode())
    clip = read_video(path, Sampling(frames=2))
    shown = np.asarray(clip.frames[0])
    assert clip.rotation == 90 and clip.frames[0].size == (32, 48) == (clip.width, clip.height)
    assert shown[-8:, :8].mean() > 200 and shown[:8, :8].mean() < 50  # top-left -> bottom-left

    vfr = tmp_path / "vfr.mkv"
    stamps = [0, 100, 150, 900, 1000, 1700, 2500, 2600]  # ms: bursts and gaps
    with av.open(str(vfr), "w") as container:
        stream = container.add_stream("ffv1", rate=10)
        stream.width = stream.height = 32
        stream.pix_fmt = "bgr0"
        stream.codec_context.time_base = stream.time_base = Fraction(1, 1000)
        for stamp, array in zip(stamps, _numbered(len(stamps)), strict=True):
            frame = av.VideoFrame.from_ndarray(array, format="rgb24")
            frame.pts, frame.time_base = stamp, stream.time_base
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    clip = read_video(vfr, Sampling(frames=len(stamps)))
    for t, image in zip(clip.times, clip.frames, strict=True):
        assert stamps[_index(image)] / 1000 == pytest.approx(t, abs=1e-3)  # timestamps, not rate


def test_a_generated_span_is_flagged_and_found_on_the_timeline(frame_model, tmp_path):
    """The fingerprint only in frames 40-60 of 100: the clip is flagged and its timeline peaks
    inside that span (8 fps: 5.0 to 7.5 s)."""
    spans = write_video_set(tmp_path / "span", 10, "span", frames=100, span=(40, 60), seed=3)
    reals = write_video_set(tmp_path / "reals", 10, "real", frames=100, seed=4)
    detector = Detector.from_pretrained(frame_model, precision="fp32")
    real_scores = [p.fake_prob for p in detector.score(sorted((reals / "0_real").glob("*")))]
    detector.threshold = max(real_scores) + 1e-6  # no real clip of a held-out set flagged
    fakes = detector.score(sorted((spans / "1_fake").glob("*")))
    flagged = [p.label == "fake" for p in fakes]
    inside = []
    for p in fakes:
        assert p.video["frames_scored"] == 16 and len(p.regions) == 16
        top = max(p.regions, key=lambda r: r["p"])
        inside.append(5.0 <= top["t"] < 7.5)
    assert sum(flagged) >= 9 and sum(inside) >= 9, (flagged, inside)


def test_temporal_head_sees_a_flicker_no_single_frame_shows(frame_model, tmp_path):
    train = write_video_set(tmp_path / "train", 32, "temporal", frames=16, seed=7)
    test = write_video_set(tmp_path / "test", 16, "temporal", frames=16, seed=8)
    out = tmp_path / "temporal"
    args = ["train", str(train), "--temporal", "-m", str(frame_model), "-o", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "with the head" in " ".join(result.output.split())
    paths = sorted(str(p) for p in test.rglob("*.mkv"))
    truth = np.array([0 if "0_real" in p else 1 for p in paths])
    frames_only = Detector.from_pretrained(frame_model, precision="fp32").score(paths)
    temporal = Detector.from_pretrained(out, precision="fp32")
    assert temporal.has_temporal and temporal.sampling.frames == 16
    with_head = temporal.score(paths)
    accuracy = lambda preds: float(np.mean([(p.fake_prob >= 0.5) == t for p, t in  # noqa: E731
                                            zip(preds, truth, strict=True)]))  # fmt: skip
    assert accuracy(frames_only) <= 0.60 and accuracy(with_head) >= 0.90
    assert all("temporal_fake_prob" in p.video for p in with_head)


def _animations(tmp_path: Path) -> list[Path]:
    frames = make_frames(np.random.default_rng(5), VideoSpec("fake", frames=12))
    return [write_video(tmp_path / "anim.webp", frames), write_video(tmp_path / "anim.gif", frames)]


def test_animated_images_are_clips_with_one_score_on_every_surface(frame_model, tmp_path):
    from miragedet.apps.server import ServerSettings, create_app

    files = _animations(tmp_path)
    api = Detector.from_pretrained(frame_model, precision="fp32").score(files)
    assert all(p.video["frames_scored"] >= 8 for p in api), [p.video for p in api]
    out = tmp_path / "rows.jsonl"
    args = ["detect", *map(str, files), "-m", str(frame_model), "--precision", "fp32"]
    result = CliRunner().invoke(app, [*args, "-o", str(out), "--timeline", str(tmp_path / "tl")])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(list((tmp_path / "tl").glob("*.png"))) == 2

    async def serve():
        settings = ServerSettings(model=str(frame_model), precision="fp32", provenance=False)
        async with in_process(create_app(settings)) as client:
            upload = [("files", (f.name, f.read_bytes())) for f in files]
            return (await client.post("/v1/detect", files=upload)).json()["results"]

    served = asyncio.run(serve())
    for p, row, res in zip(api, rows, served, strict=True):
        assert row["fake_prob"] == pytest.approx(p.fake_prob, abs=1e-6)
        assert res["fake_prob"] == pytest.approx(p.fake_prob, abs=1e-6)
        assert row["frames"] == res["video"]["frames_scored"] == p.video["frames_scored"]
        assert [r["t"] for r in res["regions"]] == [r["t"] for r in p.regions]


def test_clip_provenance_decides_the_verdict_as_for_images(frame_model, tmp_path):
    import io

    import c2pa

    from signing import throwaway_chain

    frames = make_frames(np.random.default_rng(2), VideoSpec("real", frames=8))
    plain = write_video(tmp_path / "plain.mp4", frames)
    comfy = tmp_path / "comfy.mp4"
    workflow = {"prompt": {"3": {"class_type": "KSampler", "inputs": {"seed": 5, "steps": 30}},
                           "4": {"class_type": "CheckpointLoaderSimple",
                                 "inputs": {"ckpt_name": "wan2.1_t2v_1.3B.safetensors"}}},
                "workflow": {"nodes": []}}  # fmt: skip
    with av.open(str(comfy), "w") as container:  # as VideoHelperSuite's Video Combine writes
        container.metadata["comment"] = json.dumps(workflow)
        stream = container.add_stream("libx264", rate=8)
        stream.width = stream.height = 32
        stream.pix_fmt = "yuv420p"
        for array in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")))
        container.mux(stream.encode())
    chain, key = throwaway_chain()
    signer = c2pa.Signer.from_info(c2pa.C2paSignerInfo(c2pa.C2paSigningAlg.ES256, chain, key, None))
    manifest = {
        "claim_generator_info": [{"name": "video-model", "version": "2"}],
        "title": "signed.mp4",
        "assertions": [{"label": "c2pa.actions", "data": {"actions": [{
            "action": "c2pa.created",
            "digitalSourceType": "http://cv.iptc.org/newscodes/digitalsourcetype/"
                                 "trainedAlgorithmicMedia"}]}}],
    }  # fmt: skip
    signed = io.BytesIO()
    c2pa.Builder(manifest).sign(signer, "video/mp4", io.BytesIO(plain.read_bytes()), signed)
    (tmp_path / "signed.mp4").write_bytes(signed.getvalue())
    from test_generators import _xmp

    packet = _xmp("trainedAlgorithmicMedia", "Video Generator 1.0").encode()
    uuid = bytes.fromhex("BE7ACFCB97A942E89C71999491E3AFAC")  # XMP Part 3, 1.2.7
    box = struct.pack(">I", 8 + 16 + len(packet)) + b"uuid" + uuid + packet
    (tmp_path / "xmp.mp4").write_bytes(plain.read_bytes() + box)  # a top-level box at the end
    detector = Detector.from_pretrained(frame_model, precision="fp32")
    names = [plain, comfy, tmp_path / "signed.mp4", tmp_path / "xmp.mp4"]
    by_name = {Path(p.source).name: p for p in detector.score(names, provenance=True)}
    assert by_name["xmp.mp4"].basis == "declared (xmp)" and by_name["xmp.mp4"].error is None
    assert by_name["plain.mp4"].basis == "pixels"
    assert by_name["comfy.mp4"].basis == "declared (parameters)"
    assert "wan2.1_t2v_1.3B" in by_name["comfy.mp4"].provenance["summary"]
    assert by_name["signed.mp4"].basis == "declared (c2pa)"
    assert by_name["signed.mp4"].provenance["c2pa"]["validation_state"] == "Valid"
    assert all(p.verdict == "fake" for n, p in by_name.items() if n != "plain.mp4")


def _forge_duration(data: bytes, seconds: float) -> bytes:
    """A Matroska file whose Segment Info declares ``seconds`` (Duration, EBML id 0x4489)."""
    at = data.find(b"\x44\x89\x88")
    assert at > 0
    return data[: at + 3] + struct.pack(">d", seconds * 1000) + data[at + 11 :]


def test_hostile_clips_are_error_rows_and_nothing_is_lost(frame_model, tmp_path):
    folder = tmp_path / "inbox"
    folder.mkdir()
    frames = make_frames(np.random.default_rng(9), VideoSpec("real", frames=40))
    good = write_video(folder / "good.mkv", frames)
    data = good.read_bytes()
    mp4 = write_video(tmp_path / "whole.mp4", frames).read_bytes()
    (folder / "truncated.mkv").write_bytes(data[: len(data) // 2])  # frames until the cut
    (folder / "truncated.mp4").write_bytes(mp4[: len(mp4) // 2])  # index lost with the cut
    (folder / "forged.mkv").write_bytes(_forge_duration(data, 10 * 3600.0))  # "10 hours"
    (folder / "header-only.mp4").write_bytes(mp4[:64])
    nested = b""
    for _ in range(5000):  # boxes inside boxes, 5000 deep
        nested = struct.pack(">I", len(nested) + 8) + b"moov" + nested
    (folder / "nested.mp4").write_bytes(mp4[:32] + nested)
    (folder / "renamed.jpg").write_bytes(mp4)  # a video under an image's name
    out = tmp_path / "rows.jsonl"
    args = ["detect", str(folder), "-m", str(frame_model), "-o", str(out), "--precision", "fp32"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1, result.output  # some inputs could not be read
    rows = {Path(r["path"]).name: r for r in map(json.loads, out.read_text().splitlines())}
    assert set(rows) == {p.name for p in folder.iterdir()}  # nothing lost
    assert rows["good.mkv"]["error"] is None and rows["good.mkv"]["frames"] == 16
    assert rows["truncated.mkv"]["error"] is None and rows["truncated.mkv"]["duration"] < 3.0
    forged = rows["forged.mkv"]
    assert forged["error"] is None and forged["duration"] == pytest.approx(4.875)
    assert rows["renamed.jpg"]["error"] is None and rows["renamed.jpg"]["frames"] == 16
    for name in ("truncated.mp4", "header-only.mp4", "nested.mp4"):
        assert rows[name]["fake_prob"] is None and rows[name]["error"], rows[name]
    from miragedet.inference.detector import Detector
    from miragedet.inference.stability import Stability

    still = tmp_path / "still.png"
    Image.fromarray(frames[0]).save(still)
    clip_row, image_row = Detector.from_pretrained(frame_model).score(
        [good, still], stability=Stability.parse(None, None)
    )  # --stability re-delivers images; a clip says so, as the server does, and the rest scores
    assert clip_row.error.startswith("stability applies to still images only"), clip_row.error
    assert image_row.ok and image_row.stability is not None
    with pytest.raises(ValueError, match="frames too large"):
        read_video(good, Sampling(max_pixels=100))  # absurd dimensions are refused up front
    with pytest.raises(ValueError, match="decode budget"):
        read_video(good, Sampling(frames=4, decode_per_frame=0))  # bounded work, not luck


def test_server_limits_video_uploads(frame_model, tmp_path):
    from miragedet.apps.server import ServerSettings, create_app

    clip = write_video(tmp_path / "c.mkv", make_frames(np.random.default_rng(3), VideoSpec()))

    async def ask(**limits):
        settings = ServerSettings(model=str(frame_model), provenance=False, **limits)
        async with in_process(create_app(settings)) as client:
            upload = {"files": ("c.mkv", clip.read_bytes())}
            return await client.post("/v1/detect", files=upload)

    assert asyncio.run(ask()).status_code == 200
    too_long = asyncio.run(ask(max_video_seconds=1.0))
    assert too_long.status_code == 413 and "over this server's limit" in too_long.json()["detail"]
    too_big = asyncio.run(ask(max_video_mb=1e-4))
    assert too_big.status_code == 413 and "MB limit" in too_big.json()["detail"]
    few = asyncio.run(ask(frames=4)).json()["results"][0]
    assert few["video"]["frames_scored"] == 4 and few["clip"] == few["video"]  # old name: 0.1


def test_long_clips_take_keyframes_and_resize_view_frames_are_drafted(tmp_path):
    """Samples 10 s or more apart take the keyframe before their time (no decoding a keyframe
    interval of frames per sample); frames for the resize view are converted at the draft size,
    scoring within the tolerance JPEG drafts have."""
    path = tmp_path / "long.mp4"
    with av.open(str(path), "w") as container:  # 200 s at 1 fps, a keyframe every 20 frames
        stream = container.add_stream("libx264", rate=1)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv444p"
        stream.options = {"qp": "0", "g": "20", "keyint_min": "20", "sc_threshold": "0"}
        for array in _numbered(100) + _numbered(100):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")))
        container.mux(stream.encode())
    sampled = read_video(path, Sampling(frames=8))  # 25 s apart: keyframes
    assert all(t % 20 == 0 for t in sampled.times), sampled.times
    exact = read_video(path, Sampling(frames=8, seek="exact"))
    assert exact.times == pytest.approx([int(t) for t in plan(200.0, Sampling(frames=8))])
    assert read_video(path, Sampling(frames=8, decode_per_frame=2)).times == sampled.times

    frames = [np.asarray(make_frames(np.random.default_rng(i), VideoSpec("fake", size=256))[0])
              for i in range(6)]  # fmt: skip
    big = write_video(tmp_path / "big.mkv", frames)
    drafted = read_video(big, Sampling(frames=6, draft_size=64))
    assert drafted.frames[0].size == (64, 64) and drafted.width == 256  # the clip's own size
    model = MiraGe(load_backbone("tiny"), ModelConfig.for_method("mirage", depth=2))
    quick = Detector(model, precision="fp32")  # resize view: frames drafted to 2 x 32 px
    assert quick.video_sampling.draft_size == 64
    full = Detector(model, precision="fp32", exact_decode=True)
    [a], [b] = quick.score([big]), full.score([big])
    assert abs(a.fake_prob - b.fake_prob) < 0.02


def test_train_and_evaluate_on_folders_of_clips(frame_model, tmp_path):
    """`train` takes --frames-per-clip frames of each clip (labelled as the clip); `evaluate`
    scores each clip as one sample, by its frames, equal to the Detector's clip score."""
    from miragedet.data.layouts import find_images
    from miragedet.data.video_samples import expand_videos
    from miragedet.evaluation.evaluate import evaluate_dataset
    from miragedet.model.mirage import load_pretrained
    from miragedet.training.config import TrainConfig
    from miragedet.training.trainer import Trainer

    data = write_video_set(tmp_path / "clips", 6, "fake", frames=16, seed=11)
    expanded = expand_videos(find_images(data), 4)
    assert len(expanded.samples) == 12 * 4 and {s.frame for s in expanded.samples} == {
        0.25,
        0.75,
        1.25,
        1.75,
    }
    config = TrainConfig(data=str(data), backbone="tiny", depth=2, batch_size=16, lr=0.02,
                         bank_size=32, workers=0, epochs=1, frames_per_video=4,
                         output=str(tmp_path / "run"))  # fmt: skip
    trainer = Trainer(config)
    assert len(trainer.train_set.samples) == 48 and trainer.steps_per_epoch == 3
    trainer.fit()
    assert not trainer.skipped  # every frame decoded

    model = load_pretrained(frame_model)
    metrics = evaluate_dataset(model, data, tmp_path / "eval", split=None, workers=0)
    rows = (tmp_path / "eval" / "scores.csv").read_text().splitlines()
    assert len(rows) == 1 + 12 and metrics["clean"]["clips"]["n"] == 12
    expected = Detector(model, precision="fp32").score([row.split(",")[0] for row in rows[1:]])
    for row, want in zip(rows[1:], expected, strict=True):
        assert float(row.split(",")[3]) == pytest.approx(want.fake_prob, abs=1e-6)


def test_evaluate_scores_clips_where_it_put_the_model(frame_model, tmp_path, monkeypatch):
    """evaluate scores clips through a Detector on the model's own device: a GPU in the machine
    (a stand-in here) does not move evaluate's model off the device it was put on (--device cpu
    or cuda:N would otherwise end on cuda:0 for the rest of the run)."""
    from miragedet.data.layouts import Sample
    from miragedet.evaluation.scores import score_samples
    from miragedet.model.mirage import load_pretrained

    frames = make_frames(np.random.default_rng(3), VideoSpec("fake", frames=12))
    clip = write_video(tmp_path / "clip.mkv", frames)
    model = load_pretrained(str(frame_model))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # "auto" would pick cuda
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    scores = score_samples(model, [Sample(str(clip), 1, "s")], batch_size=4, workers=0)
    assert not scores.errors and np.isfinite(scores.probs).all()
    assert model.clip.logit_scale.device.type == "cpu"
