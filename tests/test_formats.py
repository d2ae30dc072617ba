"""Every image a user has: phone, camera and web formats decode, folders are walked by content,
and nothing is skipped in silence. Files are written with each format's own encoder (Pillow,
pillow-heif, pillow-jxl-plugin, PiDNG for DNG)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageCms

from icc import ADOBE_RGB, DISPLAY_P3, matrix_profile
from miragedet.apps.detect import discover
from miragedet.data import formats
from miragedet.data.dataset import ImageDecodeError, load_image
from miragedet.inference.score_dataset import discover_inputs

pytest.importorskip("pillow_heif")
pytest.importorskip("pillow_jxl")
pytest.importorskip("rawpy")

# the ISO base media header an MP4 writer starts with (ISO/IEC 14496-12 `ftyp` box, brand isom)
MP4_HEAD = b"\x00\x00\x00\x20ftypisom\x00\x00\x02\x00isomiso2avc1mp41" + b"\x00\x00\x00\x08free"


def _photo(w: int = 96, h: int = 64, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    base = np.linspace(0, 255, w)[None, :, None] * np.ones((h, 1, 3))
    noise = rng.normal(0, 3, (h, w, 3))
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))


def write_dng(path: Path, w: int = 128, h: int = 96, seed: int = 0) -> Path:
    """A 12-bit RGGB Bayer DNG written by PiDNG (the tags a camera writes for LibRaw)."""
    from pidng.core import RAW2DNG, DNGTags, Tag
    from pidng.defs import (
        CalibrationIlluminant,
        CFAPattern,
        DNGVersion,
        Orientation,
        PhotometricInterpretation,
        PreviewColorSpace,
    )

    rng = np.random.default_rng(seed)
    raw = (rng.integers(200, 3800, (h, w))).astype(np.uint16)
    t = DNGTags()
    for tag, value in [
        (Tag.ImageWidth, w),
        (Tag.ImageLength, h),
        (Tag.TileWidth, w),
        (Tag.TileLength, h),
        (Tag.Orientation, Orientation.Horizontal),
        (Tag.PhotometricInterpretation, PhotometricInterpretation.Color_Filter_Array),
        (Tag.SamplesPerPixel, 1),
        (Tag.BitsPerSample, 12),
        (Tag.CFARepeatPatternDim, [2, 2]),
        (Tag.CFAPattern, CFAPattern.RGGB),
        (Tag.BlackLevel, 0),
        (Tag.WhiteLevel, 4095),
        (
            Tag.ColorMatrix1,
            [[1, 1], [0, 1], [0, 1], [0, 1], [1, 1], [0, 1], [0, 1], [0, 1], [1, 1]],
        ),
        (Tag.CalibrationIlluminant1, CalibrationIlluminant.D65),
        (Tag.AsShotNeutral, [[1, 1], [1, 1], [1, 1]]),
        (Tag.Make, "miragedet"),
        (Tag.Model, "test sensor"),
        (Tag.DNGVersion, DNGVersion.V1_4),
        (Tag.DNGBackwardVersion, DNGVersion.V1_2),
        (Tag.PreviewColorSpace, PreviewColorSpace.sRGB),
    ]:
        t.set(tag, value)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = RAW2DNG()
    writer.options(t, path="", compress=False)
    writer.convert(raw, filename=str(path.with_suffix("")))
    return path.with_suffix(".dng")


def _encode(image: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return buf.getvalue()


ENCODED = {  # format -> (extension, encoder)
    "JPEG": (".jpg", lambda im: _encode(im, "JPEG", quality=92)),
    "PNG": (".png", lambda im: _encode(im, "PNG")),
    "WEBP": (".webp", lambda im: _encode(im, "WEBP", quality=90)),
    "GIF": (".gif", lambda im: _encode(im, "GIF")),
    "BMP": (".bmp", lambda im: _encode(im, "BMP")),
    "TIFF": (".tif", lambda im: _encode(im, "TIFF")),
    "HEIF": (".heic", lambda im: _encode(im, "HEIF", quality=90)),
    "AVIF": (".avif", lambda im: _encode(im, "AVIF", quality=90)),
    "JXL": (".jxl", lambda im: _encode(im, "JXL", quality=90)),
}


@pytest.fixture(scope="module")
def mixed(tmp_path_factory) -> dict:
    """A folder like a phone/camera dump: every format, odd names, sidecars, a video, hidden."""
    root = tmp_path_factory.mktemp("mixed")
    images = []
    for i, (fmt, (ext, encode)) in enumerate(sorted(ENCODED.items())):
        data = encode(_photo(seed=i))
        assert formats.sniff(data[:64]) == fmt
        images.append(root / f"photo-{fmt.lower()}{ext}")
        images[-1].write_bytes(data)
    images.append(write_dng(root / "camera" / "IMG_0001.dng"))
    oddly_named = {
        "IMG_0002.JPG": "JPEG",  # upper case
        "IMG_0003.HEIC": "HEIF",
        "scan.jpe": "JPEG",
        "old.jfif": "JPEG",
        "download": "PNG",  # no extension
        "mislabelled.jpg": "PNG",  # a PNG under a JPEG name
        "avatar.txt": "WEBP",  # wrong extension altogether
        "sub/folder/iphone.bin": "HEIF",
    }
    for j, (name, fmt) in enumerate(oddly_named.items()):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(ENCODED[fmt][1](_photo(seed=50 + j)))
        images.append(path)
    others = {
        "IMG_0001.json": "{}",
        "IMG_0002.json": "[1]",
        "notes.txt": "hello",
        "meta.xmp": "<x/>",
    }
    for name, text in others.items():
        (root / name).write_text(text)
    from miragedet.data.synthetic_video import VideoSpec, make_frames, write_video

    clip = make_frames(np.random.default_rng(0), VideoSpec("real", frames=8, size=32))
    images.append(write_video(root / "clip.mov", clip))  # a video is an input too (by its frames)
    (root / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (root / "._IMG_0002.JPG").write_bytes(b"\x00\x05\x16\x07")  # macOS resource fork
    (root / ".thumbnails").mkdir()
    (root / ".thumbnails" / "t.jpg").write_bytes(ENCODED["JPEG"][1](_photo(8, 8)))
    return {"root": root, "images": sorted(str(p) for p in images), "others": others}


def test_every_format_decodes_to_the_pixels_its_encoder_was_given(tmp_path):
    photo = _photo(seed=3)
    for fmt, (_, encode) in ENCODED.items():
        decoded = load_image(encode(photo))
        assert decoded.mode == "RGB" and decoded.size == photo.size, fmt
        error = np.abs(np.asarray(decoded, np.float32) - np.asarray(photo, np.float32)).mean()
        assert error < (12 if fmt == "GIF" else 6), (fmt, error)  # lossy codecs, GIF's palette
    dng = write_dng(tmp_path / "x.dng")
    assert load_image(dng).size == (128, 96)
    # reduced-scale decode of a RAW: LibRaw's half size, never below the size asked for
    assert load_image(dng, draft_size=40).size == (64, 48)
    assert load_image(dng, draft_size=60).size == (128, 96)
    assert load_image(dng.read_bytes()).size == (128, 96)  # bytes as from the server


def test_folder_walk_finds_images_by_content_and_accounts_for_everything(mixed):
    found = discover([str(mixed["root"])])
    assert sorted(found.paths) == mixed["images"]
    skipped = dict(found.skipped)
    root = mixed["root"]
    for name in mixed["others"]:
        assert skipped[str(root / name)] == formats.NOT_IMAGE
    assert str(root / "clip.mov") in found.paths and formats.VIDEO not in skipped.values()
    assert skipped[str(root / ".DS_Store")] == formats.HIDDEN
    assert skipped[str(root / "._IMG_0002.JPG")] == formats.HIDDEN
    assert skipped[str(root / ".thumbnails") + "/"] == formats.HIDDEN
    assert len(found.paths) + len(found.skipped) == 19 + 4 + 3
    summary = formats.summarize_skipped(found.skipped)
    assert "4 not images skipped (.json 2, .txt 1, .xmp 1)" in summary
    assert "video" not in summary and "3 hidden skipped" in summary
    images_only = formats.walk(root, videos=False)  # what a still-image walk leaves
    assert dict(images_only.skipped)[str(root / "clip.mov")] == formats.VIDEO
    # score-dataset lists the same inputs and the same leftovers
    listed = discover_inputs(str(root))
    assert listed.paths == found.paths and listed.skipped == found.skipped


def _detect(args, checkpoint, tmp_path, stdin=None):
    out = tmp_path / "rows.jsonl"
    command = [sys.executable, "-m", "miragedet", "detect", *args, "-m", str(checkpoint)]
    command += ["-f", "jsonl", "-o", str(out), "--list-skipped"]
    done = subprocess.run(command, input=stdin, capture_output=True, text=True, timeout=900)
    rows = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
    return done, rows


def test_detect_scores_every_image_of_a_mixed_folder_and_says_what_it_skipped(
    mixed, served_checkpoint, tmp_path
):
    done, rows = _detect([str(mixed["root"])], served_checkpoint, tmp_path)
    assert done.returncode == 0, done.stderr
    assert sorted(r["path"] for r in rows) == mixed["images"]
    assert all(r["error"] is None and 0 <= r["fake_prob"] <= 1 for r in rows), rows
    [clip] = [r for r in rows if r["path"].endswith("clip.mov")]
    assert clip["frames"] == 8 and len(clip["regions"]) == 8  # scored by its frames
    last = " ".join(done.stderr.split())
    assert "19 scored, 0 failed, 4 not images skipped (.json 2, .txt 1, .xmp 1)" in last
    assert "video" not in last and "3 hidden skipped" in last
    assert f"skipped {mixed['root'] / 'notes.txt'}: not an image" in last
    # the folder given on stdin is walked the same way
    again, stdin_rows = _detect(["-"], served_checkpoint, tmp_path, stdin=f"{mixed['root']}\n")
    assert again.returncode == 0, again.stderr
    assert [r["path"] for r in stdin_rows] == [r["path"] for r in rows]


def test_a_video_or_a_missing_decoder_is_an_error_that_says_so(tmp_path, monkeypatch):
    (tmp_path / "clip.mp4").write_bytes(MP4_HEAD + b"\x00" * 100)
    with pytest.raises(ImageDecodeError, match="a video clip, not an image") as err:
        load_image(tmp_path / "clip.mp4")
    assert err.value.kind == "format"
    jxl = ENCODED["JXL"][1](_photo())
    monkeypatch.setitem(sys.modules, "pillow_jxl", None)  # as if the extra were not installed
    with pytest.raises(ImageDecodeError, match=r"miragedet\[formats\]"):
        load_image(jxl)
    monkeypatch.setitem(sys.modules, "rawpy", None)
    with pytest.raises(ImageDecodeError, match=r"camera RAW and DNG needs .*miragedet\[formats\]"):
        load_image(write_dng(tmp_path / "x.dng"))


@pytest.mark.parametrize("primaries", [DISPLAY_P3, ADOBE_RGB], ids=["display-p3", "adobe-rgb"])
@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "HEIF"])
def test_an_embedded_icc_profile_is_converted_to_srgb(primaries, fmt):
    icc = matrix_profile(primaries, 2.2, "wide gamut (test)")
    photo = Image.new("RGB", (32, 16), (200, 60, 40))
    data = _encode(photo, fmt, icc_profile=icc, **({"quality": 100} if fmt != "PNG" else {}))
    decoded = np.asarray(load_image(data), np.int16)
    stored = Image.open(io.BytesIO(data)).convert("RGB")
    srgb = ImageCms.profileToProfile(
        stored,
        ImageCms.ImageCmsProfile(io.BytesIO(icc)),
        ImageCms.createProfile("sRGB"),
        outputMode="RGB",
    )
    assert np.abs(decoded - np.asarray(srgb, np.int16)).max() <= 1
    # and the conversion did something: wide-gamut red is a more saturated sRGB red
    assert np.abs(decoded - np.asarray(stored, np.int16)).max() >= 8


def test_a_display_p3_photo_scores_like_its_srgb_conversion(served_checkpoint):
    from miragedet.inference.detector import Detector

    icc = matrix_profile(DISPLAY_P3, 2.2, "Display P3 (test)")
    photo = _photo(seed=9)
    p3 = _encode(photo, "PNG", icc_profile=icc)
    srgb = ImageCms.profileToProfile(
        photo, ImageCms.ImageCmsProfile(io.BytesIO(icc)), ImageCms.createProfile("sRGB")
    )
    detector = Detector.from_pretrained(served_checkpoint)
    a, b, untouched = detector.score([p3, _encode(srgb, "PNG"), _encode(photo, "PNG")])
    assert a.fake_prob == pytest.approx(b.fake_prob, abs=1e-6)
    assert a.fake_prob != pytest.approx(untouched.fake_prob, abs=1e-6)


def test_orientation_is_applied_for_jpeg_and_heic():
    photo = _photo(40, 20, seed=4)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    for fmt in ("JPEG", "HEIF"):
        data = _encode(photo, fmt, exif=exif.tobytes(), quality=95)
        turned = load_image(data)
        assert turned.size == (20, 40), fmt
        expected = np.asarray(photo.transpose(Image.Transpose.ROTATE_270), np.float32)
        assert np.abs(np.asarray(turned, np.float32) - expected).mean() < 6, fmt


def test_server_web_page_and_readme_list_the_decoders_formats():
    from miragedet.apps.server import ALLOWED_FORMATS

    assert {f.name for f in formats.FORMATS} <= ALLOWED_FORMATS
    page = (Path(formats.__file__).parents[1] / "apps" / "static" / "index.html").read_text()
    assert f'accept="{formats.html_accept()}"' in page
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    for fmt in formats.FORMATS:
        assert fmt.title in readme, fmt.title


def test_video_upload_is_scored_by_its_frames_and_an_unreadable_one_is_415(
    served_checkpoint, tmp_path
):
    from miragedet.apps.server import prepare
    from miragedet.data.synthetic_video import VideoSpec, make_frames, write_video
    from miragedet.inference.detector import Detector
    from miragedet.inference.videos import VideoInputs

    detector = Detector.from_pretrained(served_checkpoint)
    unreadable = prepare(MP4_HEAD, detector, 10**8)
    assert unreadable.status == 415 and unreadable.error.startswith("not a readable video")
    assert unreadable.code == "unsupported_format"
    clip = write_video(tmp_path / "c.mp4", make_frames(np.random.default_rng(1), VideoSpec()))
    tensors, status, error, prepared, _ = prepare(clip.read_bytes(), detector, 10**8)
    assert status == 200 and isinstance(prepared, VideoInputs) and len(tensors) == 16
    tensors, status, error, tiles, _ = prepare(ENCODED["HEIF"][1](_photo()), detector, 10**8)
    assert status == 200 and error is None and len(tensors) == 1 and tiles is None


def write_dng_with_preview(path: Path, w: int = 128, h: int = 96) -> Path:
    """A DNG laid out as cameras, phones and Adobe's converter write them (DNG 1.4, 1.2 "file
    structure"): IFD0 a small RGB preview (NewSubfileType 1) carrying the DNG tags, the Bayer data
    in a SubIFD. Written with tifffile; the preview is red so that decoding it shows."""
    import tifffile

    rng = np.random.default_rng(0)
    raw = rng.integers(200, 3800, (h, w)).astype(np.uint16)
    preview = np.full((h // 4, w // 4, 3), (255, 0, 0), np.uint8)
    ifd0 = [
        (50706, "B", 4, (1, 4, 0, 0), True),  # DNGVersion
        (50707, "B", 4, (1, 2, 0, 0), True),  # DNGBackwardVersion
        (50708, "s", 0, "miragedet test", True),  # UniqueCameraModel
        (50721, "2i", 9, (1, 1, 0, 1, 0, 1, 0, 1, 1, 1, 0, 1, 0, 1, 0, 1, 1, 1), True),
        (50778, "H", 1, (21,), True),  # CalibrationIlluminant1: D65
        (50728, "2I", 3, (1, 1, 1, 1, 1, 1), True),  # AsShotNeutral
    ]
    cfa = [
        (33421, "H", 2, (2, 2), True),  # CFARepeatPatternDim
        (33422, "B", 4, (0, 1, 1, 2), True),  # CFAPattern: RGGB
        (50714, "H", 1, (0,), True),  # BlackLevel
        (50717, "H", 1, (4095,), True),  # WhiteLevel
    ]
    with tifffile.TiffWriter(path) as tif:
        tif.write(preview, photometric="rgb", subfiletype=1, subifds=1, extratags=ifd0)
        tif.write(raw, photometric=32803, subfiletype=0, bitspersample=16, extratags=cfa)
    return path


def test_a_dng_with_a_preview_first_is_rendered_from_its_sensor_data(tmp_path):
    path = write_dng_with_preview(tmp_path / "phone.dng")
    assert Image.open(path).size == (32, 24)  # what Pillow alone would give: the preview
    image = load_image(path)
    assert image.size == (128, 96)
    assert np.asarray(image)[..., 1].mean() > 60  # not the red preview
    renamed = tmp_path / "no-extension"
    renamed.write_bytes(path.read_bytes())
    assert load_image(renamed).size == (128, 96) and load_image(path.read_bytes()).size == (128, 96)
