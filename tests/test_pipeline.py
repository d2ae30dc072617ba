"""The scoring pipeline on the CPU: GPU decoding's logic with a stand-in decoder (orientation,
resize, fallback per file), bounded read-ahead, the out-of-memory back-off, device choice."""

from __future__ import annotations

import io
import threading

import numpy as np
import pytest
import torch
from PIL import Image

from icc import DISPLAY_P3, matrix_profile
from miragedet import MiraGe, ModelConfig
from miragedet.data.gpu_decode import GpuJpegDecoder, probe, reference_pixels
from miragedet.data.transforms import Preprocess
from miragedet.inference.detector import Detector
from miragedet.inference.pipeline import (
    Batch,
    default_batch_size,
    in_parts,
    overlap,
    staged_batches,
)
from miragedet.model.backbone import load_backbone
from miragedet.model.device import enable_tf32, gpu_share, resolve_device


def pillow_decode(encoded: list[bytes]) -> list[torch.Tensor]:
    """What nvJPEG hands back: the stored pixels as (3, H, W) uint8, no EXIF orientation."""
    out = []
    for data in encoded:
        image = Image.open(io.BytesIO(data))
        image.load()
        out.append(torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1))
    return out


def photo(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (height // 16, width // 16, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((width, height), Image.BICUBIC)


def jpeg(image: Image.Image, **kw) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=92, **kw)
    return buffer.getvalue()


def with_orientation(image: Image.Image, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return jpeg(image, exif=exif.tobytes())


PRE = Preprocess(image_size=32, resize_shortest=32)
#: Antialiased bicubic in torch against Pillow's, on the same decoded pixels, 8-bit rounding on
#: both sides: at most a couple of levels here (normalised units: levels / 255 / std).
LEVELS = 3 / 255 / min(PRE.std)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_gpu_path_turns_resizes_and_crops_as_the_cpu_path(orientation):
    data = with_orientation(photo(96, 64, orientation), orientation)
    job = probe(data, 10**8)
    assert job is not None and job.orientation == orientation and job.size == (96, 64)
    ours = GpuJpegDecoder("cpu", PRE, decode=pillow_decode)([job])[0].numpy()
    reference = reference_pixels(data, PRE)
    assert ours.shape == reference.shape == (3, 32, 32)
    assert np.abs(ours - reference).max() <= LEVELS
    if orientation != 1:  # the orientation matters: unturned pixels would not match
        unturned = GpuJpegDecoder("cpu", PRE, decode=pillow_decode)([probe(jpeg(
            photo(96, 64, orientation)), 10**8)])[0].numpy()  # fmt: skip
        assert np.abs(unturned - reference).max() > LEVELS


def test_probe_leaves_to_the_cpu_what_the_gpu_path_would_get_wrong():
    image = photo(64, 48)
    png = io.BytesIO()
    image.save(png, "PNG")
    assert probe(png.getvalue(), 10**8) is None  # not a JPEG
    assert probe(jpeg(image.convert("CMYK")), 10**8) is None  # CMYK
    p3 = matrix_profile(DISPLAY_P3, 2.2, "Display P3")
    assert probe(jpeg(image, icc_profile=p3), 10**8) is None  # needs a colour conversion
    assert probe(jpeg(image), 64 * 48 - 1) is None  # over the pixel limit: the CPU refuses it
    assert probe(jpeg(image)[:20], 10**8) is None  # no readable header
    assert probe(jpeg(image.convert("L")), 10**8) is None  # greyscale: nvJPEG's RGB is off
    assert probe(jpeg(image), 10**8) is not None


def test_a_file_the_gpu_decoder_fails_on_gets_the_cpu_row(tmp_path):
    model = MiraGe(load_backbone("tiny"), ModelConfig.for_method("mirage", depth=2))
    files = []
    for i in range(5):
        path = tmp_path / f"{i}.jpg"
        path.write_bytes(jpeg(photo(80 + 16 * i, 64, i)))
        files.append(path)
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(files[0].read_bytes()[:300])
    png = tmp_path / "p.png"
    photo(64, 64, 9).save(png)
    (tmp_path / "text.jpg").write_bytes(b"not an image at all")
    inputs = [str(p) for p in [*files, truncated, png, tmp_path / "text.jpg", tmp_path / "gone"]]

    cpu = Detector(model, batch_size=3, threads=2, exact_decode=True)
    gpu = Detector(model, batch_size=3, threads=2, exact_decode=True)
    calls = []

    threads = set()

    def counting(encoded):
        calls.append(len(encoded))
        threads.add(threading.current_thread().name)
        return pillow_decode(encoded)

    gpu.gpu_decoder = GpuJpegDecoder("cpu", model.backbone.preprocess, decode=counting)
    expected, got = cpu.score(inputs), gpu.score(inputs)
    assert [p.source for p in got] == inputs
    for e, g in zip(expected, got, strict=True):
        assert (e.error is None) == (g.error is None)
        if e.error is None:
            assert abs(e.fake_prob - g.fake_prob) < 0.02
        else:
            assert g.error == e.error  # the CPU's own words, from the fallback
    assert sum(calls) >= 5  # the JPEGs went through the stand-in GPU decoder, in batches
    assert max(calls) > 1
    # beside the forward, in the device stage's own thread (on a GPU: its own CUDA stream)
    assert threads and all(name.startswith("miragedet-device") for name in threads), threads


def test_the_device_stage_runs_one_batch_ahead_of_the_forward():
    """With a GPU decoder, batch n + 1's decode starts while the caller still holds batch n, and
    never more than one batch ahead; without one, stage 2 runs in the caller's thread."""
    staging_next = threading.Event()
    started = []

    def stage(entry):
        started.append(entry)
        if entry == 1:
            staging_next.set()
        return Batch([entry])

    seen = []
    for entry, batch in overlap(iter(range(5)), stage, torch.device("cpu"), side=True):
        assert batch.prepared == [entry]
        if entry == 0:  # batch 1 is staged while the caller holds batch 0 (a serial run would
            # stage it only after the caller asked for the next one: this wait would fail)
            assert staging_next.wait(timeout=120), "stage 2 of batch 1 did not run beside batch 0"
        assert set(started) <= set(range(entry + 2))  # at most one batch ahead
        seen.append(entry)
    assert seen == list(range(5))

    caller = threading.current_thread().name
    names = []
    list(overlap(range(3), lambda e: names.append(threading.current_thread().name) or Batch([e]),
                 torch.device("cpu"), side=False))  # fmt: skip
    assert names == [caller] * 3


def test_evaluate_decodes_through_the_device_stage_with_the_cpu_scores(tmp_path, monkeypatch):
    """evaluate's resize path with a (stand-in) GPU decoder: JPEGs go to it beside the forward,
    a file it fails on gets the CPU path's score or error, the scores equal the CPU path's."""
    from miragedet.data import gpu_decode
    from miragedet.data.dataset import Sample
    from miragedet.evaluation.scores import score_samples

    model = MiraGe(load_backbone("tiny"), ModelConfig.for_method("mirage", depth=2))
    samples = []
    for i in range(7):
        path = tmp_path / f"{i}.jpg"
        path.write_bytes(jpeg(photo(64 + 16 * i, 48, i), comment=b"gpu fails" if i == 3 else b""))
        samples.append(Sample(str(path), i % 2, "s"))
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg, ends like one \xff\xd9")
    samples.append(Sample(str(tmp_path / "bad.jpg"), 0, "s"))
    pre = model.backbone.preprocess
    options = dict(batch_size=3, workers=2, preprocess=pre, device=torch.device("cpu"))
    expected = score_samples(model, samples, **options)
    threads = set()

    refused = []

    def flaky(encoded):
        threads.add(threading.current_thread().name)
        if any(b"gpu fails" in data for data in encoded):
            refused.append(len(encoded))
            raise RuntimeError("nvJPEG: bad data (stand-in)")
        return pillow_decode(encoded)

    def stand_in(device, pre):
        return GpuJpegDecoder("cpu", pre, decode=flaky), "stand-in"

    monkeypatch.setattr(gpu_decode, "gpu_decoder", stand_in)
    got = score_samples(model, samples, **options)
    assert threads and all(name.startswith("miragedet-device") for name in threads)
    assert 1 in refused  # sample 3 failed on the GPU alone, then was decoded on the CPU
    assert got.errors.keys() == expected.errors.keys() == {7}
    assert got.errors[7] == expected.errors[7]
    good = np.arange(7)
    assert np.abs(got.probs[good] - expected.probs[good]).max() < 0.02


def test_read_ahead_is_bounded_however_slow_the_consumer():
    started = []

    def work(item):
        started.append(item)
        return item

    batches = staged_batches(range(1000), work, batch_size=10, threads=2, ahead=2)
    chunk, results = next(batches)
    assert chunk == results == list(range(10))
    assert len(started) <= 30  # this batch and two ahead, never the whole input
    rest = [r for _, rs in batches for r in rs]
    assert rest == list(range(10, 1000))


class _Tight:
    """A model whose forward runs out of GPU memory above 2 inputs."""

    def __init__(self, model):
        self.model = model

    def __call__(self, pixels):
        if len(pixels) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return self.model(pixels)


def test_out_of_memory_halves_the_batch_and_loses_nothing():
    model = MiraGe(load_backbone("tiny"), ModelConfig.for_method("mirage", depth=2))
    detector = Detector(model, batch_size=8, precision="fp32")
    pixels = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    expected = detector.forward_tensors(pixels)
    notes = []
    detector.notify = notes.append
    detector.model = _Tight(model)
    got = detector.forward_tensors(pixels)
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert detector.batch_size == 2
    assert len(notes) == 1 and "out of memory at 8 inputs" in notes[0]
    np.testing.assert_allclose(detector.forward_tensors(pixels[:7]), expected[:7], atol=1e-6)
    assert detector.batch_size == 2  # later batches start at 2: nothing said again
    assert len(notes) == 1
    # torch.compile's one shape follows the halving (else each half is padded back up)
    from miragedet.inference.compiled import CompiledForward

    compiled, shapes = CompiledForward(model, 8), []
    compiled._compiled = lambda x: (shapes.append(len(x)), _Tight(model)(x))[1]
    detector.model, detector.batch_size = compiled, 8
    np.testing.assert_allclose(detector.forward_tensors(pixels), expected, atol=1e-6)
    assert compiled.batch_size == 2 and shapes[-1] == 2 and len(notes) == 1
    with pytest.raises(torch.OutOfMemoryError):  # one input that does not fit is an error
        in_parts(lambda p: (_ for _ in ()).throw(torch.OutOfMemoryError("x")), pixels[:1],
                 detector)  # fmt: skip


def test_out_of_memory_while_stacking_or_in_evaluate_loses_nothing(tmp_path, monkeypatch):
    """The GPU's memory runs out while a batch is stacked on it: the batch stays in host memory
    and goes to the model in parts (said once); evaluate's forward halves its batch like the
    Detector's. Scores equal the unhindered run's."""
    from miragedet.data.dataset import Sample
    from miragedet.evaluation.scores import score_samples
    from miragedet.inference import pipeline

    model = MiraGe(load_backbone("tiny"), ModelConfig.for_method("mirage", depth=2))
    paths, samples = [], []
    for i in range(5):
        paths.append(tmp_path / f"{i}.jpg")
        paths[-1].write_bytes(jpeg(photo(48 + 16 * i, 48, i)))
        samples.append(Sample(str(paths[-1]), i % 2, "s"))
    detector = Detector(model, batch_size=4, precision="fp32")
    expected = [p.to_dict() for p in detector.score(paths, provenance=False)]
    options = dict(batch_size=4, workers=1, preprocess=model.backbone.preprocess,
                   device=torch.device("cpu"))  # fmt: skip
    evaluated = score_samples(model, samples, **options)
    stacked = []
    real_stack = pipeline.stack_on

    def full(tensors, device):
        stacked.append(len(tensors))
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(pipeline, "stack_on", full)
    notes = []
    detector.notify = notes.append
    got = [p.to_dict() for p in detector.score(paths, provenance=False)]
    assert stacked == [4]  # the second batch stays on the host without trying the device again
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in got] == [
        {k: v for k, v in r.items() if k != "seconds"} for r in expected
    ]
    assert len(notes) == 1 and "stacking a batch" in notes[0] and "nothing lost" in notes[0]
    stacked.clear()  # the device is tried again after HOST_BATCHES_AFTER_OOM batches
    monkeypatch.setattr(pipeline, "HOST_BATCHES_AFTER_OOM", 1)
    one = Detector(model, batch_size=1, precision="fp32")
    one.notify = notes.append
    got = [p.to_dict() for p in one.score(paths, provenance=False)]
    assert stacked == [1, 1, 1]
    np.testing.assert_allclose([r["fake_prob"] for r in got], [r["fake_prob"] for r in expected],
                               atol=1e-5)  # fmt: skip
    # no pinned memory to be had (this CPU-only build has none): a plain copy, not an error
    on_meta = real_stack([torch.ones(3, 4, 4), torch.zeros(3, 4, 4)], torch.device("meta"))
    assert on_meta.shape == (2, 3, 4, 4) and on_meta.device.type == "meta"

    monkeypatch.setattr(pipeline, "stack_on", real_stack)
    said = []
    monkeypatch.setattr(pipeline, "to_stderr", said.append)
    tight = _Tight(model)
    tight.classes, tight.eval = model.classes, lambda: None
    again = score_samples(tight, samples, **options)
    np.testing.assert_allclose(again.probs, evaluated.probs, atol=1e-6)
    assert len(said) == 1 and "out of memory at 4 inputs per forward" in said[0]


class _TightAll:
    """A model whose forward and image encoder run out of GPU memory above 2 inputs; the rest
    is the model's own."""

    def __init__(self, model):
        self._model = model

    def __getattr__(self, name):
        return getattr(self._model, name)

    def _fits(self, pixels):
        if len(pixels) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return pixels

    def __call__(self, pixels):
        return self._model(self._fits(pixels))

    def encode_image(self, pixels):
        return self._model.encode_image(self._fits(pixels))

    def adaptation_features(self, pixels):
        return self._model.adaptation_features(self._fits(pixels))


def test_evaluate_analyze_and_adapt_forwards_back_off_on_out_of_memory(tmp_path, monkeypatch):
    """evaluate's tiles view and feature cache, analyze's embeddings and adapt's features halve
    their forwards on a CUDA out-of-memory error like the resize path (said once each; the
    results equal the unhindered run's)."""
    from miragedet.data.dataset import Sample
    from miragedet.data.views import View
    from miragedet.evaluation.scores import score_samples
    from miragedet.inference import pipeline

    samples = []
    for i in range(3):
        path = tmp_path / f"{i}.jpg"
        path.write_bytes(jpeg(photo(96 + 16 * i, 80, i)))
        samples.append(Sample(str(path), i % 2, "s"))
    said = []
    monkeypatch.setattr(pipeline, "to_stderr", said.append)
    mirage = MiraGe(load_backbone("tiny"), ModelConfig.for_method("mirage", depth=2))
    tiles = dict(batch_size=8, workers=0, view=View("tiles", max_tiles=4))
    expected = score_samples(mirage, samples, **tiles).probs
    np.testing.assert_allclose(score_samples(_TightAll(mirage), samples, **tiles).probs,
                               expected, atol=1e-5)  # fmt: skip
    assert len(said) == 1 and "out of memory at 8 inputs per forward" in said[0]
    probe = MiraGe(load_backbone("tiny"), ModelConfig.for_method("linear-probe"))
    cached = dict(batch_size=3, workers=0)
    expected = score_samples(probe, samples, cache_dir=tmp_path / "a", **cached).probs
    got = score_samples(_TightAll(probe), samples, cache_dir=tmp_path / "b", **cached).probs
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert len(said) == 2 and "at 3 inputs per forward" in said[1]
    # analyze's embeddings and adapt's features back off alike
    from types import SimpleNamespace

    from miragedet.evaluation.analyze import embed_samples
    from miragedet.training.adapt import features_of

    found = SimpleNamespace(samples=samples)
    first = embed_samples(mirage, found, tmp_path / "e1.npy", batch_size=3)
    again = embed_samples(_TightAll(mirage), found, tmp_path / "e2.npy", batch_size=3)
    np.testing.assert_allclose(again.embeds, first.embeds, atol=1e-5)
    np.testing.assert_allclose(features_of(_TightAll(mirage), samples, 3)[0],
                               features_of(mirage, samples, 3)[0], atol=1e-5)  # fmt: skip
    assert len(said) == 4


def test_device_choice_without_a_gpu(monkeypatch):
    assert resolve_device(None).type == resolve_device("auto").type == "cpu"
    assert resolve_device(" CPU ".lower()).type == "cpu"
    with pytest.raises(ValueError, match="no CUDA GPU"):
        resolve_device("cuda")
    with pytest.raises(ValueError, match="auto, cpu, cuda"):
        resolve_device("gpu")
    assert enable_tf32("cpu") is None and gpu_share("auto", 2) == 0.0
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("auto").type == "cuda"
    assert gpu_share("auto", 2) == 0.5 and gpu_share("cpu", 2) == 0.0
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert [gpu_share("cuda", n) for n in (1, 2, 3, 4, 5)] == [1.0, 1.0, 0.5, 0.5, 1 / 3]


def test_batch_size_on_a_gpu_comes_from_its_free_memory(monkeypatch):
    """Without a batch size asked, a GPU gets the largest power of two up to GPU_BATCH_MAX whose
    forward takes at most half its free memory (one forward of 4 inputs measured): what detect,
    serve and evaluate use; off a GPU the caller's default. CUDA stand-ins (no GPU here)."""
    from miragedet.inference.pipeline import GPU_BATCH_MAX, batch_for

    mib, seen = 2**20, []
    state = {"free": 80 * 2**30, "allocated": 10 * mib}
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda d: (state["free"], 2 * state["free"]))
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda d: None)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda d: state["allocated"])
    monkeypatch.setattr(
        torch.cuda, "max_memory_allocated", lambda d: state["allocated"] + 4 * 100 * mib
    )
    monkeypatch.setattr(torch, "zeros", lambda *shape, device=None: (shape, device))
    gpu = torch.device("cuda")
    batch, why = batch_for(seen.append, gpu, 224, None)
    assert batch == GPU_BATCH_MAX and "80 GiB, 100 MiB per input" in why
    assert seen == [((4, 3, 224, 224), gpu)]
    state["free"] = 2 * 2**30  # 1 GiB for the batch: 8 x 100 MiB fits, 16 does not
    assert batch_for(seen.append, gpu, 224, None)[0] == 8
    assert batch_for(seen.append, gpu, 224, 24) == (24, "as asked") and len(seen) == 2
    assert batch_for(seen.append, torch.device("cpu"), 224, None, 64) == (64, "default")


def test_batch_size_default_and_asked():
    model = MiraGe(load_backbone("tiny"), ModelConfig.for_method("mirage", depth=2))
    detector = Detector(model, batch_size=None)
    assert (detector.batch_size, detector.batch_reason) == (32, "default")
    assert default_batch_size(detector, 5) == (5, "as asked")
    with pytest.raises(ValueError):
        default_batch_size(detector, 0)
    assert detector.info()["decode"] == "pillow (cpu)" and detector.info()["device"] == "cpu"


def test_the_server_decodes_jpegs_through_the_gpu_stage_with_the_cpu_rows(tmp_path):
    """serve with a (stand-in) GPU decoder: JPEGs go to it in the model's batches; one it fails
    on is decoded by Pillow (the same score as without it); one nobody decodes is a 422."""
    import asyncio

    import httpx

    from miragedet.apps.server import ServerSettings, create_app

    model = MiraGe(load_backbone("tiny"), ModelConfig.for_method("mirage", depth=2))
    model.save_pretrained(str(tmp_path / "ckpt"))
    refused_by_gpu = {(72, 64)}
    seen = []

    def flaky(encoded):
        out = pillow_decode(encoded)
        seen.extend(tuple(p.shape[1:]) for p in out)
        if any(tuple(p.shape[1:][::-1]) in refused_by_gpu for p in out):
            raise RuntimeError("nvJPEG: unsupported (stand-in)")
        return out

    def loader(gpu: bool):
        detector = Detector.from_pretrained(tmp_path / "ckpt", precision="fp32", exact_decode=True)
        if gpu:
            detector.gpu_decoder = GpuJpegDecoder("cpu", detector.preprocess, decode=flaky)
        return detector

    broken = bytearray(jpeg(photo(80, 64, 5)))
    broken[broken.index(b"\xff\xda") + 5] = 9  # a scan naming a component that does not exist
    uploads = [("a.jpg", jpeg(photo(96, 64, 1))), ("b.jpg", jpeg(photo(72, 64, 2))),
               ("c.png", _png_bytes(photo(64, 64, 3))), ("d.jpg", bytes(broken))]  # fmt: skip

    async def post(app):
        transport = httpx.ASGITransport(app=app)
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=transport, base_url="http://test") as client,
        ):
            for _ in range(12_000):  # the model loads in the background; a bound for a hang
                if (await client.get("/readyz")).status_code == 200:
                    break
                await asyncio.sleep(0.05)
            files = [("files", (name, data)) for name, data in uploads]
            return (await client.post("/v1/detect", files=files)).json()["results"]

    settings = ServerSettings(model=str(tmp_path / "ckpt"), provenance=False)
    gpu = asyncio.run(post(create_app(settings, load_detector=lambda: loader(True))))
    cpu = asyncio.run(post(create_app(settings, load_detector=lambda: loader(False))))
    assert (64, 96) in seen and (64, 72) in seen  # both JPEGs went to the GPU stage
    assert [r["status"] for r in gpu] == [r["status"] for r in cpu] == [200, 200, 200, 422]
    assert gpu[3]["code"] == cpu[3]["code"] == "corrupt_image"
    for g, c in zip(gpu[:3], cpu[:3], strict=True):
        assert abs(g["fake_prob"] - c["fake_prob"]) < 0.02
    assert gpu[1]["fake_prob"] == cpu[1]["fake_prob"]  # the refused one: Pillow's own decode


def test_the_server_and_the_detector_build_the_same_rows(served_checkpoint):
    """serve builds its results with the pipeline's row builder (inference/outcomes.py): the
    same verdicts as the Detector's for an image, its re-deliveries and a file nobody reads."""
    import asyncio

    from conftest import in_process
    from miragedet.apps.server import ServerSettings, create_app
    from miragedet.inference.stability import Stability

    uploads = [("a.jpg", jpeg(photo(96, 64, 1))), ("b.png", _png_bytes(photo(64, 80, 2))),
               ("c.jpg", jpeg(photo(80, 64, 3))[:300])]  # fmt: skip
    detector = Detector.from_pretrained(served_checkpoint, precision="fp32")
    settings = ServerSettings(model=str(served_checkpoint), precision="fp32", provenance=False)

    async def post():
        async with in_process(create_app(settings)) as client:
            files = [("files", (name, data)) for name, data in uploads]
            plain = await client.post("/v1/detect", files=files)
            stable = await client.post("/v1/detect?stability=true", files=files)
            return plain.json()["results"], stable.json()["results"]

    served = asyncio.run(post())
    data = [d for _, d in uploads]
    local = (detector.score(data, provenance=False, stability=False),
             detector.score(data, provenance=False, stability=Stability()))  # fmt: skip
    for results, predictions in zip(served, local, strict=True):
        assert [r["status"] for r in results] == [200, 200, 422]
        assert results[2]["code"] == "corrupt_image" and predictions[2].error
        for got, want in zip(results[:2], predictions[:2], strict=True):
            assert got["fake_prob"] == pytest.approx(want.fake_prob, abs=1e-6)
            # one arithmetic on every surface: p(fake) is 1 - p(real) to the bit (float64)
            assert got["fake_prob"] == 1.0 - got["probs"]["Real"]
            assert want.fake_prob == 1.0 - want.probs["Real"]
            assert (got["label"], got["verdict"], got["basis"], got["top_class"]) == (
                want.label, want.verdict, want.basis, want.top_class)  # fmt: skip
            assert got["probs"] == pytest.approx(want.probs, abs=1e-6)
            if want.stability is None:
                assert got["stability"] is None
                continue
            assert got["stability"]["scores"] == pytest.approx(want.stability["scores"], abs=1e-6)
            assert got["stability"]["scores"]["as given"] == got["fake_prob"]
            assert want.stability["scores"]["as given"] == want.fake_prob
            assert got["stability"]["uncertain"] == want.stability["uncertain"]
    assert all(r["stability"] for r in served[1][:2])


def test_p_fake_is_one_minus_p_real_in_float64_for_every_row():
    """The model's rows are float32; every surface takes 1 - p(real) in float64 (as detect
    always has), so a score near a threshold gets the same label everywhere."""
    from miragedet.data.views import View
    from miragedet.inference.outcomes import predicted, stable
    from miragedet.inference.stability import Stability

    rows = np.array([[0.1, 0.9], [0.3, 0.7]], dtype=np.float32)
    one = predicted("x", rows[0], ["Real", "Fake"], 0.5)
    assert one.fake_prob == 1.0 - float(rows[0, 0]) != float(np.float32(1.0) - rows[0, 0])
    judged = stable("x", rows, None, View(), ["Real", "Fake"], 0.5, Stability(("jpeg:75",)))
    assert judged.fake_prob == one.fake_prob == judged.stability["scores"]["as given"]
    assert judged.stability["scores"]["jpeg:75"] == 1.0 - float(rows[1, 0])


def test_a_tiles_batch_without_a_readable_image_gives_its_error_rows(served_checkpoint, tmp_path):
    """Under the tiles view, a batch whose inputs are all unreadable has nothing to forward:
    its rows are errors, and the next batch is scored."""
    from miragedet.inference.stability import Stability

    good = tmp_path / "good.png"
    photo(64, 48, 4).save(good)
    view = {"kind": "tiles", "max_tiles": 4}
    detector = Detector.from_pretrained(served_checkpoint, precision="fp32", view=view,
                                        batch_size=2)  # fmt: skip
    inputs = [str(tmp_path / "missing.jpg"), b"not an image", str(good)]
    for stability in (False, Stability()):
        rows = detector.score(inputs, provenance=False, stability=stability)
        assert [r.ok for r in rows] == [False, False, True]
        assert rows[2].tiles["count"] == len(rows[2].regions) and rows[2].fake_prob is not None
        assert rows[2].fake_prob == 1.0 - rows[2].probs["Real"]


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def test_the_gpu_decoder_is_refused_where_it_would_differ_or_is_turned_off(monkeypatch):
    from miragedet.data.gpu_decode import GPU_DECODE_ENV, gpu_decoder

    assert gpu_decoder("cpu", PRE)[0] is None
    lanczos = Preprocess(image_size=32, resize_shortest=32, resample="lanczos")
    decoder, why = gpu_decoder("cuda", lanczos)  # evaluate and detect ask the same function
    assert decoder is None and "lanczos" in why
    monkeypatch.setenv(GPU_DECODE_ENV, "0")
    decoder, why = gpu_decoder("cuda", PRE)
    assert decoder is None and GPU_DECODE_ENV in why


def test_the_gpu_decoder_is_the_one_asked_for_or_the_first_that_works(monkeypatch):
    """$MIRAGEDET_GPU_DECODER: auto tries torchvision then nvImageCodec; a named one only that
    one; an unknown name, or none that builds here, leaves decoding to the CPU with the reason."""
    from miragedet.data import gpu_decode

    monkeypatch.delenv(gpu_decode.GPU_DECODER_ENV, raising=False)
    monkeypatch.delenv(gpu_decode.GPU_DECODE_ENV, raising=False)
    built = []

    def maker(name, works):
        def make(device):
            built.append(name)
            if not works:
                raise ImportError(f"no {name} here (stand-in)")
            return pillow_decode

        return make

    monkeypatch.setattr(gpu_decode, "DECODERS", {
        "torchvision": ("nvjpeg (torchvision)", maker("torchvision", False)),
        "nvimgcodec": ("nvImageCodec", maker("nvimgcodec", True)),
    })  # fmt: skip
    decoder, why = gpu_decode.gpu_decoder("cuda", PRE)
    assert built == ["torchvision", "nvimgcodec"] and decoder.backend == "nvimgcodec"
    assert "nvImageCodec" in why
    monkeypatch.setenv(gpu_decode.GPU_DECODER_ENV, "torchvision")
    decoder, why = gpu_decode.gpu_decoder("cuda", PRE)
    assert decoder is None and "no torchvision here" in why and "miragedet[gpu]" in why
    monkeypatch.setenv(gpu_decode.GPU_DECODER_ENV, "dali")
    decoder, why = gpu_decode.gpu_decoder("cuda", PRE)
    assert decoder is None and "dali" in why and "nvimgcodec" in why
