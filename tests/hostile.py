"""A generated corpus of malformed and adversarial image files (nothing binary is committed).

`write_corpus(folder)` writes well over 1,000 files: truncated and bit-flipped JPEG, PNG, WebP,
GIF, TIFF and BMP; decompression bombs and enormous dimensions in tiny files; empty, one-byte and
non-image files; wrong extensions; animated and multi-frame images; 16-bit, CMYK, palette,
1-bit, float and alpha images; huge EXIF and ICC blocks. Returns the paths with the category of
each, and the few that are valid images that must be scored.
"""

from __future__ import annotations

import io
import random
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

FORMATS = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "GIF": ".gif", "TIFF": ".tif"}
FORMATS["BMP"] = ".bmp"


def _image(seed: int, size=(48, 40)) -> Image.Image:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (5, 6, 3), dtype=np.uint8)
    return Image.fromarray(small).resize(size, Image.BICUBIC)


def _encode(image: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return buf.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_with_size(width: int, height: int, mode_byte: int = 2) -> bytes:
    """A PNG whose header claims width x height but whose data is a few bytes."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, mode_byte, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat)
        + (_png_chunk(b"IEND", b""))
    )


def png_bomb(side: int = 12_000) -> bytes:
    """A real decompression bomb: a side x side grey PNG of zeros, compressed to ~100 KB."""
    row = b"\x00" + b"\x00" * side
    compressor = zlib.compressobj(9)
    body = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", body)
        + (_png_chunk(b"IEND", b""))
    )


def gif_with_size(width: int, height: int) -> bytes:
    header = b"GIF89a" + struct.pack("<HH", width, height) + b"\x80\x00\x00"
    palette = b"\x00\x00\x00\xff\xff\xff"
    image = b"\x2c" + struct.pack("<HHHH", 0, 0, width, height) + b"\x00"
    return header + palette + image + b"\x02\x02\x44\x01\x00\x3b"


def jpeg_with_size(width: int, height: int) -> bytes:
    """A small valid JPEG with its SOF0 dimensions rewritten."""
    data = bytearray(_encode(_image(0, (16, 16)), "JPEG"))
    sof = data.find(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def tiff_with_size(width: int, height: int) -> bytes:
    data = bytearray(_encode(_image(0, (16, 16)), "TIFF"))
    # rewrite the ImageWidth (256) and ImageLength (257) entries of the first IFD
    ifd = struct.unpack("<I", data[4:8])[0]
    count = struct.unpack("<H", data[ifd : ifd + 2])[0]
    for i in range(count):
        entry = ifd + 2 + 12 * i
        tag, kind = struct.unpack("<HH", data[entry : entry + 4])
        if tag in (256, 257):
            value = width if tag == 256 else height
            fmt = "<H" if kind == 3 else "<I"
            data[entry + 8 : entry + 8 + struct.calcsize(fmt)] = struct.pack(fmt, value)
    return bytes(data)


def write_corpus(folder: Path, seed: int = 0) -> tuple[dict[Path, str], list[Path]]:
    """Write the corpus; returns ({path: category}, [valid images that must be scored])."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    files: dict[Path, str] = {}
    counter = [0]

    def put(category: str, data: bytes, suffix: str) -> Path:
        counter[0] += 1
        path = folder / f"{counter[0]:05d}-{category}{suffix}"
        path.write_bytes(data)
        files[path] = category
        return path

    good: list[Path] = []
    originals = {}
    for fmt, suffix in FORMATS.items():
        image = _image(len(originals))
        originals[fmt] = _encode(image if fmt != "GIF" else image.convert("P"), fmt)
        good.append(put("valid", originals[fmt], suffix))

    for fmt, data in originals.items():
        suffix = FORMATS[fmt]
        cuts = sorted({rng.randrange(0, len(data)) for _ in range(40)} | {0, 1, 8, len(data) - 1})
        for cut in cuts:
            put(f"truncated-{fmt}", data[:cut], suffix)
        for _ in range(110):
            flipped = bytearray(data)
            for _ in range(rng.choice([1, 2, 4, 16])):
                position = rng.randrange(len(flipped))
                flipped[position] ^= 1 << rng.randrange(8)
            put(f"bitflip-{fmt}", bytes(flipped), suffix)
        for _ in range(10):  # runs of garbage over the header or the body
            mangled = bytearray(data)
            start = rng.randrange(len(mangled))
            for i in range(start, min(len(mangled), start + rng.randrange(1, 64))):
                mangled[i] = rng.randrange(256)
            put(f"garbage-run-{fmt}", bytes(mangled), suffix)

    # enormous dimensions in tiny files, and a real bomb
    for w, h in [(100_000, 100_000), (65_535, 65_535), (1, 2**31 - 1), (2**31 - 1, 1), (0, 10)]:
        put("huge-dims-PNG", png_with_size(w, h), ".png")
    for w, h in [(65_535, 65_535), (30_000, 30_000), (0, 0), (1, 65_535)]:
        kind = "huge-dims" if w * h > 200_000_000 or w * h == 0 else "odd-dims"  # odd: may decode
        put(f"{kind}-GIF", gif_with_size(w, h), ".gif")
        put(f"{kind}-JPEG", jpeg_with_size(w, h), ".jpg")
        put(f"{kind}-TIFF", tiff_with_size(w, h), ".tif")
    put("bomb-PNG", png_bomb(), ".png")

    # not images at all
    for i, data in enumerate(
        [
            b"",
            b"\x00",
            b"\xff\xd8",
            b"\x89PNG\r\n\x1a\n",
            b"GIF89a",
            b"RIFF\x00\x00\x00\x00WEBP",
            b"II*\x00",
            b"<html><body>not an image</body></html>",
            b"%PDF-1.4\n%%EOF",
            bytes(range(256)) * 8,
            b"\x00" * 10_000,
        ]
    ):
        for suffix in (".jpg", ".png"):
            put(f"not-an-image-{i}", data, suffix)
    for _ in range(20):
        put(
            "random-bytes",
            rng.randbytes(rng.randrange(1, 5000)),
            rng.choice(list(FORMATS.values())),
        )

    # valid images in odd shapes and modes: all must be scored
    base = _image(99)
    odd = {
        "png-as-jpg": (_encode(base, "PNG"), ".jpg"),
        "jpeg-as-png": (_encode(base, "JPEG"), ".png"),
        "webp-as-gif": (_encode(base, "WEBP"), ".gif"),
        "cmyk-jpeg": (_encode(base.convert("CMYK"), "JPEG"), ".jpg"),
        "palette-transparent-png": (
            _encode(base.convert("P"), "PNG", transparency=0),
            ".png",
        ),
        "gray-png": (_encode(base.convert("L"), "PNG"), ".png"),
        "la-png": (_encode(base.convert("LA"), "PNG"), ".png"),
        "one-bit-png": (_encode(base.convert("1"), "PNG"), ".png"),
        "rgba-webp": (_encode(base.convert("RGBA"), "WEBP"), ".webp"),
        "sixteen-bit-png": (
            _encode(
                Image.fromarray((np.arange(48 * 40).reshape(40, 48) * 30).astype(np.uint16)), "PNG"
            ),
            ".png",
        ),
        "float-tiff": (
            _encode(
                Image.fromarray(np.linspace(0, 1, 48 * 40, dtype=np.float32).reshape(40, 48)),
                "TIFF",
            ),
            ".tif",
        ),
        "one-pixel-png": (_encode(Image.new("RGB", (1, 1), (9, 9, 9)), "PNG"), ".png"),
        "thin-strip-png": (_encode(Image.new("RGB", (4000, 1), (9, 99, 9)), "PNG"), ".png"),
        "animated-gif": (
            _encode(
                base.convert("P"),
                "GIF",
                save_all=True,
                append_images=[_image(i).convert("P") for i in range(5)],
                duration=40,
                loop=0,
            ),
            ".gif",
        ),
        "animated-png": (
            _encode(base, "PNG", save_all=True, append_images=[_image(i) for i in range(3)]),
            ".png",
        ),
        "animated-webp": (
            _encode(base, "WEBP", save_all=True, append_images=[_image(i) for i in range(3)]),
            ".webp",
        ),
        "multipage-tiff": (
            _encode(base, "TIFF", save_all=True, append_images=[_image(i) for i in range(3)]),
            ".tif",
        ),
        "huge-exif-jpeg": (_encode(base, "JPEG", exif=b"Exif\x00\x00" + b"\x00" * 60_000), ".jpg"),
        "huge-icc-jpeg": (_encode(base, "JPEG", icc_profile=rng.randbytes(1_000_000)), ".jpg"),
        "huge-icc-png": (_encode(base, "PNG", icc_profile=rng.randbytes(300_000)), ".png"),
    }
    for name, (data, suffix) in odd.items():
        good.append(put(f"valid-{name}", data, suffix))
    exif = Image.Exif()
    exif[0x0112] = 9  # an orientation that does not exist
    good.append(put("valid-bad-orientation", _encode(base, "JPEG", exif=exif.tobytes()), ".jpg"))
    # video clips (docs/video.md): scored by their frames, or refused with a reason
    from miragedet.data.synthetic_video import VideoSpec, make_frames, write_video

    frames = make_frames(__import__("numpy").random.default_rng(seed), VideoSpec(frames=24))
    clips = {}
    for suffix in (".mkv", ".mp4"):
        clips[suffix] = write_video(folder / f"clip{suffix}", frames).read_bytes()
        (folder / f"clip{suffix}").unlink()
    mkv, mp4 = clips[".mkv"], clips[".mp4"]
    good.append(put("valid-clip-mkv", mkv, ".mkv"))
    good.append(put("valid-clip-renamed", mp4, ".jpg"))  # a video under an image's name
    good.append(put("valid-truncated-mkv", mkv[: len(mkv) * 2 // 3], ".mkv"))  # frames to the cut
    at = mkv.find(b"\x44\x89\x88")  # Matroska Duration: declare ten hours
    good.append(put("valid-forged-duration", mkv[: at + 3] + struct.pack(">d", 3.6e7)
                    + mkv[at + 11 :], ".mkv"))  # fmt: skip
    put("truncated-mp4", mp4[: len(mp4) // 2], ".mp4")
    put("zero-frames-mp4", mp4[:64], ".mp4")
    nested = b""
    for _ in range(5000):
        nested = struct.pack(">I", len(nested) + 8) + b"moov" + nested
    put("nested-boxes-mp4", mp4[:32] + nested, ".mp4")
    return files, good
