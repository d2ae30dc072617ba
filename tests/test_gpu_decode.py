"""On a GPU only (marked ``gpu``; CI has none, ``benchmarks/bench_gpu.py`` runs it): the GPU
decoder's pixels against the CPU's, over >= 1,000 decodes, and the rows of the hostile corpus.

Tolerances (per image, in 8-bit levels, after the CLIP resize to 224 px): nvJPEG's IDCT and
chroma upsampling are not libjpeg-turbo's, so pixels differ by a level or two; a corrupted decode
(pytorch/vision #9606: wrong pixels from batched decodes) differs by tens of levels on average.
``MIRAGEDET_GPU_REPORT`` names a JSON file for the figures measured."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hostile import write_corpus
from miragedet import MiraGe, ModelConfig
from miragedet.data.gpu_decode import DECODERS, GpuJpegDecoder, probe, reference_pixels
from miragedet.data.transforms import Preprocess
from miragedet.inference.detector import Detector
from miragedet.model.backbone import load_backbone

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

PRE = Preprocess()  # CLIP's 224 px
#: Mean absolute difference per image, in levels: above it a decode counts as corrupted.
MEAN_LEVELS = 2.0
#: The largest single difference allowed (levels), at sharp chroma edges.
MAX_LEVELS = 48.0


def _report(key: str, value) -> None:
    path = os.environ.get("MIRAGEDET_GPU_REPORT")
    if path:
        data = json.loads(Path(path).read_text()) if os.path.exists(path) else {}
        data[key] = value
        with open(path, "w") as handle:
            json.dump(data, handle, indent=1)


def _variants(count: int) -> list[bytes]:
    """JPEGs as cameras and sites write them: sizes, 4:4:4/4:2:2/4:2:0, progressive,
    greyscale, restart markers, qualities, EXIF orientations."""
    rng = np.random.default_rng(0)
    out = []
    for i in range(count):
        w, h = int(rng.integers(240, 1700)), int(rng.integers(240, 1300))
        small = rng.integers(0, 256, (max(2, h // 24), max(2, w // 24), 3), dtype=np.uint8)
        base = np.asarray(Image.fromarray(small).resize((w, h), Image.BICUBIC), np.float32)
        noisy = np.clip(base + rng.normal(0, 5, base.shape), 0, 255)
        image = Image.fromarray(noisy.astype("uint8"))
        kw = {"quality": int(rng.integers(50, 98)), "subsampling": int(rng.integers(0, 3))}
        if i % 5 == 1:
            kw["progressive"] = True
        if i % 7 == 2:
            image = image.convert("L")
        if i % 6 == 3:
            exif = Image.Exif()
            exif[0x0112] = int(rng.integers(1, 9))
            kw["exif"] = exif.tobytes()
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", **kw)
        out.append(buffer.getvalue())
    return out


@pytest.mark.parametrize("backend", list(DECODERS))
def test_gpu_pixels_match_the_cpu_over_a_thousand_decodes(backend):
    try:
        decoder = GpuJpegDecoder(torch.device("cuda"), PRE, backend=backend)
    except ImportError as exc:
        pytest.skip(f"{backend} is not installed here: {exc}")
    encoded = _variants(50)
    jobs = [probe(data, 10**9) for data in encoded]
    grey = [i for i in range(len(encoded)) if i % 7 == 2]  # left to Pillow (see probe)
    assert [i for i, job in enumerate(jobs) if job is None] == grey
    encoded = [d for i, d in enumerate(encoded) if i not in grey]
    jobs = [j for j in jobs if j is not None]
    references = [torch.from_numpy(reference_pixels(d, PRE)).cuda() for d in encoded]
    scale = torch.tensor(PRE.std, device="cuda").view(3, 1, 1) * 255.0
    means, maxima, corrupted = [], [], 0
    order = np.random.default_rng(1).permutation(np.tile(np.arange(len(jobs)), 25))[:1050]
    for start in range(0, len(order), 64):  # batches of mixed files, as a job sees them
        batch = order[start : start + 64]
        for k, pixels in zip(batch, decoder([jobs[k] for k in batch]), strict=True):
            assert not isinstance(pixels, str), pixels
            levels = ((pixels - references[k]) * scale).abs()
            means.append(float(levels.mean()))
            maxima.append(float(levels.max()))
            corrupted += means[-1] > MEAN_LEVELS
    key = "gpu_decode" if backend == "torchvision" else f"gpu_decode_{backend}"
    _report(key, {"decodes": len(means), "mean_levels_max": max(means),
                           "mean_levels_median": float(np.median(means)),
                           "max_levels": max(maxima), "corrupted": corrupted})  # fmt: skip
    assert len(means) >= 1000
    assert corrupted == 0, f"{corrupted} decodes differ from the CPU by > {MEAN_LEVELS} levels"
    assert max(maxima) <= MAX_LEVELS


def test_hostile_corpus_gets_the_cpu_rows_with_gpu_decoding(tmp_path):
    pytest.importorskip("av", reason="the hostile corpus writes video clips with PyAV")
    files, _ = write_corpus(tmp_path / "corpus")
    model = MiraGe(load_backbone("tiny"), ModelConfig.for_method("mirage", depth=2))
    gpu = Detector(model, device="cuda", precision="fp32", exact_decode=True, batch_size=64)
    cpu = Detector(model, device="cuda", precision="fp32", exact_decode=True, batch_size=64)
    cpu.gpu_decoder = None
    assert gpu.gpu_decoder is not None, gpu.decode_reason
    inputs = sorted(str(p) for p in files)
    worst, disagree = 0.0, []
    for e, g in zip(cpu.score(inputs), gpu.score(inputs), strict=True):
        if (e.error is None) != (g.error is None):
            disagree.append((e.source, e.error, g.error))
        elif e.error is None:
            worst = max(worst, abs(e.fake_prob - g.fake_prob))
    _report("hostile", {"files": len(inputs), "disagree": disagree[:20], "worst_p": worst})
    assert not disagree
    assert worst < 0.02
