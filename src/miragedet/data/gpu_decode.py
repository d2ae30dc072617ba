"""JPEG decoding on a CUDA GPU in batches, with the CLIP resize and centre crop done there too;
what the GPU decoder cannot take (other formats, CMYK, colour profiles other than sRGB, absurd
sizes, a file it fails on) goes back to the CPU decoder, which gives the same row as ever.

Two decoders, chosen by ``$MIRAGEDET_GPU_DECODER`` (``auto``, the default: the first installed
of the two, in this order):

- ``torchvision``: ``decode_jpeg(device="cuda")`` hands a list of encoded JPEGs to NVIDIA's nvJPEG
  in one batched call (torchvision.io docs, "decode_jpeg"; pytorch/vision #8496); the one whose
  pixels were checked on an H200 (docs/performance.md, "On a GPU").
- ``nvimgcodec``: NVIDIA's nvImageCodec (``pip install nvidia-nvimgcodec-cu12`` or ``-cu13``, with
  ``nvidia-nvjpeg``), whose batched ``Decoder.decode`` runs the A100/H100-class hardware JPEG
  engines where the GPU has them and nvJPEG's CUDA decoder elsewhere; a file it cannot decode
  comes back as None (nvImageCodec Python API, ``Decoder.decode`` and ``DecodeParams``).
  ``benchmarks/bench_gpu.py`` measures both and checks both against the CPU's pixels.

A corruption of batched GPU decodes was reported on H100s (pytorch/vision #9606), so the GPU's
pixels are checked against the CPU's by ``tests/test_gpu_decode.py`` (marked ``gpu``, run by
``benchmarks/bench_gpu.py``). On an H200 (docs/performance.md, "On a GPU") colour JPEGs
stayed within 2 levels of the CPU's on average, single or batched; some greyscale ones did not,
so :func:`probe` leaves greyscale to Pillow. ``MIRAGEDET_GPU_DECODE=0`` turns the GPU path off.

The CPU path (``dataset.load_image`` then ``transforms.Preprocess``) applies the EXIF orientation,
converts embedded colour profiles to sRGB and, by default, lets libjpeg decode large photos at a
reduced scale (``draft``). The GPU path reads the same header with Pillow (no pixel decode): it
applies the orientation with tensor flips, and hands anything with a non-sRGB profile or a
colour mode other than RGB back to the CPU. The resize is antialiased bicubic from the
full-size pixels (``torch.nn.functional.interpolate(antialias=True)``, PyTorch's kernel made to
match Pillow's), then rounded to 8 bits as Pillow's is; the score tolerance against the CPU path
is stated in docs/performance.md.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from .transforms import Preprocess

#: Every JPEG starts with SOI then a marker (ITU-T T.81, B.1.1.2).
JPEG_MAGIC = b"\xff\xd8\xff"
#: JPEGs decoded on the GPU in one call (bounds the full-size pixels held at once: 32 photos of
#: 4 MP are ~1.2 GB of uint8 RGB).
CHUNK = 32


@dataclass
class JpegJob:
    """One JPEG for the GPU: its bytes and the EXIF orientation (1-8) to apply after decoding."""

    data: bytes
    orientation: int = 1
    size: tuple[int, int] = (0, 0)  # (width, height) as stored


@lru_cache(maxsize=64)
def _is_srgb(icc: bytes) -> bool:
    from PIL import ImageCms

    try:
        profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        return profile.profile.xcolor_space.strip() == "RGB" and (
            "srgb" in ImageCms.getProfileDescription(profile).lower()
        )
    except Exception:  # a profile LittleCMS cannot read: the CPU path leaves those as they are
        return True


def probe(data: bytes, max_pixels: int) -> JpegJob | None:
    """A :class:`JpegJob` for encoded bytes the GPU path takes as the CPU path would, or None
    (not a JPEG, no end-of-image marker last, greyscale, CMYK/YCCK, a non-sRGB colour profile,
    more than ``max_pixels``, an unreadable header): those go to the CPU decoder."""
    from PIL import Image

    if not data.startswith(JPEG_MAGIC):
        return None
    if not data.rstrip(b"\x00").endswith(b"\xff\xd9"):  # no EOI: truncated, or a trailer after
        return None  # it; libjpeg says which (a GPU decoder may fill a truncated file in grey)
    try:
        with Image.open(io.BytesIO(data)) as image:
            # greyscale JPEGs decode wrong through torchvision's GPU path with mode=RGB (about
            # 45 levels off on every image in bench_gpu.py's check, NVIDIA H200, torchvision 0.26):
            # Pillow decodes those
            if image.format not in ("JPEG", "MPO") or image.mode != "RGB":
                return None
            width, height = image.size
            if width * height > max_pixels or min(width, height) < 1:
                return None
            icc = image.info.get("icc_profile")
            if icc and not _is_srgb(bytes(icc)):
                return None
            orientation = int(image.getexif().get(0x0112, 1) or 1)
    except Exception:
        return None
    return JpegJob(data, orientation if 1 <= orientation <= 8 else 1, (width, height))


def orient(pixels: Any, orientation: int) -> Any:
    """A (C, H, W) tensor turned as Pillow's ``ImageOps.exif_transpose`` turns the image for an
    EXIF orientation (1-8; the TIFF/EXIF 2.32 spec, tag 0x0112)."""
    if orientation == 2:
        return pixels.flip(-1)
    if orientation == 3:
        return pixels.flip(-1, -2)
    if orientation == 4:
        return pixels.flip(-2)
    if orientation == 5:  # transpose
        return pixels.transpose(-1, -2)
    if orientation == 6:  # 90 degrees clockwise
        return pixels.transpose(-1, -2).flip(-1)
    if orientation == 7:  # transverse
        return pixels.transpose(-1, -2).flip(-1, -2)
    if orientation == 8:  # 90 degrees counter-clockwise
        return pixels.transpose(-1, -2).flip(-2)
    return pixels


def resize_crop_normalize(pixels: Any, preprocess: Preprocess) -> Any:
    """A decoded (3, H, W) uint8 tensor as the model's (3, S, S) float32 input, on its device:
    the short side resized to ``resize_shortest`` (antialiased, rounded to 8 bits as Pillow
    rounds), centre-cropped to ``image_size``, scaled to [0, 1] and normalised."""
    import torch
    import torch.nn.functional as F

    height, width = pixels.shape[-2:]
    new_w, new_h = preprocess.resized_size(width, height)
    image = pixels.float()[None]
    if (new_w, new_h) != (width, height):
        mode = preprocess.resample  # bicubic or bilinear (gpu_decoder checks)
        image = F.interpolate(image, size=(new_h, new_w), mode=mode, antialias=True,
                              align_corners=False).round_().clamp_(0, 255)  # fmt: skip
    left, top, right, bottom = preprocess.centre_box(new_w, new_h)
    image = image[0, :, top:bottom, left:right]
    mean = torch.tensor(preprocess.mean, device=image.device).view(3, 1, 1)
    std = torch.tensor(preprocess.std, device=image.device).view(3, 1, 1)
    return (image / 255.0 - mean) / std


def _drain(device: Any) -> None:
    """Wait for the work queued on the caller's CUDA stream (the pipeline's side stream: the
    resizes of the chunk and batch before). The decoders allocate their outputs on that stream
    but write them from streams of their own (nvJPEG's hardware engine ignores stream order), so
    memory freed there, still being read, could be handed out and overwritten; pytorch/vision
    #9606 reports such corrupted rows going away when the caller's stream is drained first.
    It waits for the decode pipeline's own work only, not for the forward's stream."""
    import torch

    torch.cuda.current_stream(device).synchronize()


def _torchvision_decode(device: Any) -> Callable[[list[bytes]], list[Any]]:
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    def decode(encoded: list[bytes]) -> list[Any]:
        tensors = [torch.frombuffer(bytearray(data), dtype=torch.uint8) for data in encoded]
        _drain(device)
        return decode_jpeg(tensors, mode=ImageReadMode.RGB, device=device)

    return decode


def _nvimgcodec_decode(device: Any) -> Callable[[list[bytes]], list[Any]]:
    import torch
    from nvidia import nvimgcodec

    index = device.index if device.index is not None else torch.cuda.current_device()
    # fancy upsampling of the chroma planes, as libjpeg-turbo (Pillow) does by default
    decoder = nvimgcodec.Decoder(device_id=index, options=":fancy_upsampling=1")
    params = nvimgcodec.DecodeParams(
        apply_exif_orientation=False,  # orient() turns the pixels, as for the other decoder
        color_spec=nvimgcodec.ColorSpec.SRGB,
        allow_any_depth=False,
        sample_format=nvimgcodec.SampleFormat.I_RGB,
    )

    def decode(encoded: list[bytes]) -> list[Any]:
        stream = torch.cuda.current_stream(device)  # the caller's (the side stream's) stream
        _drain(device)
        images = decoder.decode([nvimgcodec.CodeStream(data) for data in encoded],
                                params=params, cuda_stream=stream.cuda_stream)  # fmt: skip
        return [
            torch.from_dlpack(image).permute(2, 0, 1)  # (H, W, 3) -> (3, H, W), no copy
            if image is not None
            else "nvImageCodec could not decode this file"
            for image in images
        ]

    return decode


#: The GPU JPEG decoders by ``$MIRAGEDET_GPU_DECODER`` name: what they are called in messages
#: and the function that builds one for a device (``auto`` tries them in this order).
DECODERS: dict[str, tuple[str, Callable[[Any], Callable[[list[bytes]], list[Any]]]]] = {
    "torchvision": ("nvjpeg (torchvision)", _torchvision_decode),
    "nvimgcodec": ("nvImageCodec", _nvimgcodec_decode),
}
#: Which GPU JPEG decoder: ``auto`` (default), ``torchvision`` or ``nvimgcodec``.
GPU_DECODER_ENV = "MIRAGEDET_GPU_DECODER"


class GpuJpegDecoder:
    """Decode :class:`JpegJob` batches on ``device`` into model inputs; per file, an error
    message where the GPU decoder fails (the caller then decodes that file on the CPU)."""

    def __init__(
        self,
        device: Any,
        preprocess: Preprocess,
        decode: Callable[[list[bytes]], list[Any]] | None = None,
        backend: str = "torchvision",
    ) -> None:
        self.device = device
        self.preprocess = preprocess
        self.backend = backend
        self.name = DECODERS[backend][0] if decode is None else f"{backend} (stand-in)"
        #: encoded JPEGs -> decoded (3, H, W) uint8 tensors, or a file's error text (tests pass
        #: a stand-in).
        self._decode = decode or DECODERS[backend][1](device)

    def _decode_safely(self, encoded: list[bytes]) -> list[Any]:
        """Decode a chunk in one call; when that call fails, file by file, so that one bad
        file costs only itself (its entry is then the error text)."""
        try:
            return list(self._decode(encoded))
        except Exception:
            out: list[Any] = []
            for one in encoded:
                try:
                    out.append(self._decode([one])[0])
                except Exception as exc:
                    out.append(f"{type(exc).__name__}: {exc}"[:300])
            return out

    def __call__(self, jobs: Sequence[JpegJob]) -> list[Any]:
        """A (3, S, S) float32 tensor on the device per job, or the GPU decoder's error text."""
        out: list[Any] = []
        for start in range(0, len(jobs), CHUNK):
            chunk = jobs[start : start + CHUNK]
            for job, pixels in zip(
                chunk, self._decode_safely([j.data for j in chunk]), strict=True
            ):
                out.append(self._finish(job, pixels))
        return out

    def _finish(self, job: JpegJob, pixels: Any) -> Any:
        """One decoded image as the model's input, or why not (e.g. the GPU's memory for a huge
        photo): the caller then decodes that file on the CPU."""
        if isinstance(pixels, str):
            return pixels
        if pixels.shape[-2:] != (job.size[1], job.size[0]):
            return f"GPU decoder gave {tuple(pixels.shape)} for {job.size}"
        try:
            pixels = pixels.to(self.device, non_blocking=True)
            return resize_crop_normalize(orient(pixels, job.orientation), self.preprocess)
        except Exception as exc:  # torch.cuda.OutOfMemoryError on a small GPU, ...
            return f"{type(exc).__name__}: {exc}"[:300]


#: ``MIRAGEDET_GPU_DECODE=0`` keeps decoding on the CPU when a GPU scores.
GPU_DECODE_ENV = "MIRAGEDET_GPU_DECODE"


def gpu_decoder(device: Any, preprocess: Preprocess) -> tuple[GpuJpegDecoder | None, str]:
    """The GPU JPEG decoder for ``device`` and why, or None and why not: a CPU device,
    ``$MIRAGEDET_GPU_DECODE=0``, a resize with no antialiased twin on the GPU (nearest,
    lanczos), no GPU decoder installed (``pip install miragedet[gpu]``) or the one
    ``$MIRAGEDET_GPU_DECODER`` names not working here."""
    import os

    import torch

    device = torch.device(device)
    if device.type != "cuda":
        return None, "the CPU decodes (no GPU scoring)"
    if os.environ.get(GPU_DECODE_ENV, "1") == "0":
        return None, f"the CPU decodes (${GPU_DECODE_ENV}=0)"
    if preprocess.resample not in ("bicubic", "bilinear"):
        return None, (f"the CPU decodes: the checkpoint resizes with {preprocess.resample}, "
                      "which has no antialiased twin on the GPU")  # fmt: skip
    asked = os.environ.get(GPU_DECODER_ENV, "auto").strip().lower() or "auto"
    if asked != "auto" and asked not in DECODERS:
        return None, (f"the CPU decodes: ${GPU_DECODER_ENV}={asked} is not one of auto, "
                      f"{', '.join(DECODERS)}")  # fmt: skip
    failed = []
    for backend in DECODERS if asked == "auto" else [asked]:
        try:
            decoder = GpuJpegDecoder(device, preprocess, backend=backend)
        except Exception as exc:  # ImportError, or a torchvision built without nvJPEG
            failed.append(f"{backend}: {type(exc).__name__}: {exc}"[:200])
            continue
        return decoder, f"JPEGs decoded on {device} by {decoder.name}, others on the CPU"
    return None, (
        f"the CPU decodes: no GPU JPEG decoder ({'; '.join(failed)}); pip install 'miragedet[gpu]'"
    )[:400]


def reference_pixels(data: bytes, preprocess: Preprocess) -> np.ndarray:
    """The CPU path's model input for encoded bytes at full decode (no draft), as a (3, S, S)
    array: what the GPU path is compared with."""
    from .dataset import load_image

    return preprocess(load_image(data)).numpy()
