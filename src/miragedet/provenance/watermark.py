"""Invisible watermarks that open image generators embed, read with the invisible-watermark package.

- Stable Diffusion XL (diffusers' ``StableDiffusionXLWatermarker``, and Stability AI's
  generative-models sampling scripts): the fixed 48-bit message ``0xB3EC907BB19E`` embedded with
  the ``dwtDct`` method. diffusers passes RGB arrays to the encoder, Stability's scripts BGR ones,
  so both channel orders are read.
- Stable Diffusion 1.x reference script (CompVis ``scripts/txt2img.py``): the bytes
  ``StableDiffusionV1`` with ``dwtDct`` on BGR arrays.

A message counts as present when at least 92% of its bits match (44 of 48; 126 of 136): on an
unmarked image each bit matches with probability 1/2, so a false match has probability below
1e-9 per message and channel order. The encoder refuses images under 256 x 256 pixels, so
smaller ones are "not applicable". Decoding costs tens of milliseconds per megapixel
(``benchmarks/bench_provenance.py --watermarks``), which is why it is off by default
(``--watermarks``); install with ``pip install 'miragedet[watermark]'``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

SDXL_BITS = [int(b) for b in bin(0b101100111110110010010000011110111011000110011110)[2:]]
SD1_BYTES = b"StableDiffusionV1"
MATCH = 0.92
MIN_PIXELS = 256 * 256


def _bits(data: bytes) -> list[int]:
    return [int(b) for byte in data for b in format(byte, "08b")]


MESSAGES = {  # name -> (bits, channel orders to try)
    "Stable Diffusion XL": (SDXL_BITS, ("rgb", "bgr")),
    "Stable Diffusion 1.x": (_bits(SD1_BYTES), ("bgr",)),
}


def available() -> bool:
    try:
        import imwatermark  # noqa: F401
    except ImportError:
        return False
    return True


def read(image: Any) -> dict[str, Any]:
    """Which known watermark ``image`` (a Pillow image) carries: ``{"checked", "found",
    "generator", "bit_match"}``, or why it was not checked."""
    if not available():
        return {
            "checked": False,
            "reason": "invisible-watermark is not installed: pip install 'miragedet[watermark]'",
        }
    if image.width * image.height < MIN_PIXELS or min(image.size) < 256:
        return {"checked": False, "reason": "image smaller than 256 x 256: not applicable"}
    from imwatermark import WatermarkDecoder

    rgb = np.ascontiguousarray(np.asarray(image.convert("RGB")))
    orders = {"rgb": rgb, "bgr": np.ascontiguousarray(rgb[:, :, ::-1])}
    best: dict[str, Any] = {"checked": True, "found": False, "generator": None, "bit_match": 0.0}
    for name, (bits, channel_orders) in MESSAGES.items():
        decoder = WatermarkDecoder("bits", len(bits))
        for order in channel_orders:
            try:
                got = decoder.decode(orders[order], "dwtDct")
            except Exception as exc:  # the decoder on an odd image: no signal, say why
                return {"checked": False, "reason": f"decoder failed: {type(exc).__name__}"}
            match = float(np.mean([int(a) == b for a, b in zip(got, bits, strict=True)]))
            if match > best["bit_match"]:
                best.update(bit_match=match)
            if match >= MATCH:
                return {"checked": True, "found": True, "generator": name, "bit_match": match}
    return best
