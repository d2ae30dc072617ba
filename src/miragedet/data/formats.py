"""Image formats: the decoders we register, file signatures, and which files of a folder are images.

One table (:data:`FORMATS`) says what is read and with which library; the decoder
(:func:`miragedet.data.dataset.load_image`), the folder walk of ``detect``, ``score-dataset`` and
the dataset layouts, the server's 415 rule and the web page's file picker all derive from it.

Files are recognised by their content (the signature in their first bytes), never by their name:
``IMG_0001.JPG``, ``photo.jpe``, ``download`` (no extension) and a PNG saved as ``.jpg`` are all
found. Signatures follow each format's specification: JPEG (ITU T.81, SOI ``FF D8 FF``), PNG (RFC
2083), GIF (87a/89a), WebP (RIFF ``WEBP``), TIFF (``II*\\0`` / ``MM\\0*``), ISO base media
``ftyp`` brands (ISO/IEC 14496-12; ``heic``/``mif1``... from ISO/IEC 23008-12 HEIF, ``avif`` from
the AV1 Image File Format), JPEG XL (ISO/IEC 18181-2: codestream ``FF 0A``, container box
``JXL ``), and the RAW containers LibRaw reads (Fujifilm RAF, Olympus ORF, Panasonic RW2, Canon
CR2/CR3/CRW, Sigma X3F, Minolta MRW; DNG and most others are TIFF with a ``DNGVersion`` tag or a
reduced-resolution first IFD).
"""

from __future__ import annotations

import contextlib
import io
import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class ImageDecodeError(ValueError):
    """An input could not be decoded into an RGB image.

    ``kind`` says why: "format" (not an image, or a format Pillow cannot read), "size" (too
    many pixels: a decompression bomb), "corrupt" (truncated or damaged), "missing" (no file).
    """

    def __init__(self, message: str, kind: str = "corrupt") -> None:
        super().__init__(message)
        self.kind = kind


HEAD = 64  # bytes read to recognise a file
FORMATS_EXTRA = "pip install 'miragedet[formats]'"


@dataclass(frozen=True)
class Format:
    name: str  # what `sniff` returns and the server names
    title: str  # for people (README, errors)
    extensions: tuple[str, ...]
    library: str  # who decodes it
    mime: tuple[str, ...] = ()


FORMATS: tuple[Format, ...] = (
    Format("JPEG", "JPEG", (".jpg", ".jpeg", ".jpe", ".jfif"), "Pillow", ("image/jpeg",)),
    Format("PNG", "PNG", (".png",), "Pillow", ("image/png",)),
    Format("WEBP", "WebP", (".webp",), "Pillow", ("image/webp",)),
    Format("GIF", "GIF (first frame)", (".gif",), "Pillow", ("image/gif",)),
    Format("BMP", "BMP", (".bmp", ".dib"), "Pillow", ("image/bmp",)),
    Format("TIFF", "TIFF", (".tif", ".tiff"), "Pillow", ("image/tiff",)),
    Format("HEIF", "HEIC/HEIF (iPhone)", (".heic", ".heif", ".hif"), "pillow-heif",
           ("image/heic", "image/heif")),
    Format("AVIF", "AVIF", (".avif",), "Pillow (libavif)", ("image/avif",)),
    Format("JXL", "JPEG XL", (".jxl",), "pillow-jxl-plugin [formats]", ("image/jxl",)),
    Format("RAW", "camera RAW and DNG", (
        ".dng", ".cr2", ".cr3", ".crw", ".nef", ".nrw", ".arw", ".srf", ".sr2", ".raf", ".orf",
        ".rw2", ".pef", ".srw", ".x3f", ".3fr", ".iiq", ".erf", ".kdc", ".mrw", ".mos", ".raw",
    ), "rawpy (LibRaw) [formats]", ("image/x-adobe-dng",)),
)  # fmt: skip
#: Other formats Pillow reads, decoded by the CLI and the Python API (not accepted by the server).
PILLOW_OTHERS = ("MPO", "PPM", "ICO", "PSD", "JPEG2000", "TGA", "QOI", "PCX", "SGI", "DDS")
#: What the server and the web page accept (MPO: the JPEG variant phones write for depth photos).
ACCEPTED = frozenset({f.name for f in FORMATS} | {"MPO"})
IMAGE_EXTENSIONS = frozenset(e for f in FORMATS for e in f.extensions) | {".ppm", ".pgm", ".pbm"}
RAW_EXTENSIONS = frozenset(next(f for f in FORMATS if f.name == "RAW").extensions)
#: Video files (read by content; the names matter only for storage listings and the web page).
VIDEO_EXTENSIONS = frozenset({".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi"})

_HEIF_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"hevm", b"hevs", b"mif1",
                b"msf1", b"mif2"}  # fmt: skip
_AVIF_BRANDS = {b"avif", b"avis"}
_VIDEO_BRANDS = {b"isom", b"iso2", b"iso4", b"iso5", b"iso6", b"mp41", b"mp42", b"avc1", b"qt  ",
                 b"M4V ", b"M4VH", b"M4VP", b"3gp4", b"3gp5", b"3gp6", b"3g2a", b"MSNV", b"dash",
                 b"f4v ", b"XAVC", b"mp71"}  # fmt: skip


def sniff(head: bytes) -> str | None:
    """The format whose signature starts ``head`` ("JPEG", "HEIF", "RAW", "VIDEO", ...), or None.

    "VIDEO" marks a video container (MP4/MOV, Matroska/WebM, AVI): not an image."""
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head[:4] == b"RIFF" and head[8:12] in (b"AVI ", b"AMV "):
        return "VIDEO"
    if head[4:8] == b"ftyp":
        return _ftyp(head)
    if head.startswith(b"\xff\x0a") or head.startswith(b"\x00\x00\x00\x0cJXL \r\n\x87\n"):
        return "JXL"
    if head.startswith((b"FUJIFILMCCD-RAW", b"IIRO", b"IIRS", b"MMOR", b"IIU\x00", b"FOVb",
                        b"\x00MRM")) or head[6:14] == b"HEAPCCDR":  # fmt: skip
        return "RAW"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "RAW" if head[8:10] == b"CR" else "TIFF"  # Canon CR2 is TIFF with "CR" at 8
    if head[:2] == b"BM" and len(head) >= 14:
        return "BMP"
    if (
        head.startswith(b"\x1a\x45\xdf\xa3")
        or head[:3] == b"FLV"
        or head[:4]
        in (
            b"\x00\x00\x01\xba",
            b"\x30\x26\xb2\x75",
        )
    ):
        return "VIDEO"  # Matroska/WebM, Flash, MPEG-PS, ASF/WMV
    return None


def _ftyp(head: bytes) -> str | None:
    size = int.from_bytes(head[:4], "big")
    end = min(max(size, 16), len(head))
    brands = {head[8:12]} | {head[i : i + 4] for i in range(16, end - 3, 4)}
    if brands & _AVIF_BRANDS:
        return "AVIF"
    if brands & _HEIF_BRANDS:
        return "HEIF"
    if b"crx " in brands:
        return "RAW"  # Canon CR3
    if brands & _VIDEO_BRANDS:
        return "VIDEO"
    return None


def read_head(source: Any) -> bytes:
    """The first bytes of a path, bytes or binary stream (the stream's position is kept)."""
    if isinstance(source, bytes | bytearray | memoryview):
        return bytes(source[:HEAD])
    if hasattr(source, "read"):
        position = source.tell()
        head = source.read(HEAD)
        source.seek(position)
        return head
    with open(source, "rb") as handle:
        return handle.read(HEAD)


# -- decoders ------------------------------------------------------------------------------------

_registered = False


def register() -> None:
    """Register the optional Pillow plugins that are installed (once per process)."""
    global _registered
    if _registered:
        return
    _registered = True
    try:
        import pillow_heif

        pillow_heif.register_heif_opener()
    except ImportError:
        pass
    with contextlib.suppress(ImportError):
        import pillow_jxl  # noqa: F401  (importing registers the plugin)


def _importable(name: str) -> bool:
    try:
        __import__(name)
    except ImportError:
        return False
    return True


def _pillow(feature: str) -> bool:
    from PIL import features

    return bool(features.check(feature))


#: How to tell whether a format's decoder is here; formats not listed need only Pillow's core.
_CHECKS = {
    "WEBP": lambda: _pillow("webp"),
    "AVIF": lambda: _pillow("avif"),
    "HEIF": lambda: _importable("pillow_heif"),
    "JXL": lambda: _importable("pillow_jxl"),
    "RAW": lambda: _importable("rawpy"),
}


def available() -> dict[str, bool]:
    """Whether each format of :data:`FORMATS` can be decoded in this environment."""
    return {f.name: _CHECKS.get(f.name, lambda: True)() for f in FORMATS}


def missing_decoder(kind: str) -> str | None:
    """Why ``kind`` cannot be decoded here (naming what to install), or None when it can. Checks
    that one format only: the decode path asks for every image."""
    if _CHECKS.get(kind, lambda: True)():
        return None
    if kind == "AVIF":
        return "this Pillow has no AVIF support: pip install -U 'pillow>=11.3' (its wheels have it)"
    if kind == "HEIF":
        return "HEIC/HEIF needs pillow-heif: pip install pillow-heif"
    if kind == "WEBP":
        return "this Pillow was built without WebP: install a Pillow wheel from PyPI"
    title = {f.name: f.title for f in FORMATS}[kind]
    return f"{title} needs the formats extra: {FORMATS_EXTRA}"


def looks_like_raw_tiff(image: Any) -> bool:
    """A TIFF that Pillow opened but that holds a camera RAW: Pillow would give its preview.

    DNG files carry ``DNGVersion`` (tag 50706); NEF, ARW, PEF and other TIFF-based RAWs start
    with a reduced-resolution IFD (``NewSubfileType`` bit 0), the camera's thumbnail."""
    tags = getattr(image, "tag_v2", None)
    if tags is None:
        return False
    return 50706 in tags or bool(int(tags.get(254, 0) or 0) & 1)


def decode_raw(source: Any, max_pixels: int, draft_size: int | None = None):
    """Render a camera RAW or DNG with LibRaw (rawpy) into an 8-bit sRGB Pillow image.

    We demosaic the sensor data (AHD, the camera's as-shot white balance, LibRaw's sRGB output
    and its default brightness, the file's orientation) rather than take the embedded preview:
    the preview is optional, often far smaller than the sensor, and an independent image that need
    not match the sensor data. With ``draft_size`` (reduced-scale decoding) each 2x2 Bayer block
    becomes one pixel (LibRaw's half_size: no interpolation, 4x fewer pixels) when the result is
    still at least ``draft_size`` on its short side, like JPEG's draft mode.
    """
    from PIL import Image

    try:
        import rawpy
    except ImportError as exc:
        raise ImageDecodeError(missing_decoder("RAW") or str(exc), "format") from exc
    stream = io.BytesIO(source) if isinstance(source, bytes | bytearray) else source
    try:
        with rawpy.imread(stream) as raw:
            w, h = raw.sizes.width, raw.sizes.height
            if w * h > max_pixels:
                raise ImageDecodeError(
                    f"image too large: {w}x{h} pixels (limit {max_pixels})", "size"
                )
            half = bool(draft_size) and min(w, h) // 2 >= draft_size
            rgb = raw.postprocess(use_camera_wb=True, output_bps=8, half_size=half)
    except ImageDecodeError:
        raise
    except (rawpy.LibRawFileUnsupportedError, rawpy.NotSupportedError) as exc:
        raise ImageDecodeError("not a RAW format LibRaw can read", "format") from exc
    except (rawpy.LibRawError, MemoryError) as exc:
        raise ImageDecodeError(f"corrupt or truncated RAW image: {exc}") from exc
    return Image.fromarray(rgb)


_SRGB: Any = None
_TRANSFORMS: dict[tuple[bytes, str], Any] = {}


def to_srgb(image: Any, icc: bytes | None = None) -> Any:
    """``image`` converted from its embedded ICC profile (or ``icc``) to sRGB with Pillow's
    ImageCms (LittleCMS, perceptual intent), as a colour-managed viewer shows it: phones embed
    Display P3, cameras Adobe RGB, CMYK JPEGs their press profile. Images with no profile, an sRGB
    one, one that does not match their mode, or a profile LittleCMS cannot read are returned as
    they are."""
    from PIL import ImageCms

    global _SRGB
    icc = icc or image.info.get("icc_profile")
    if not icc or not isinstance(icc, bytes):
        return image
    try:
        profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        space = profile.profile.xcolor_space.strip()
        if space == "RGB" and "srgb" in ImageCms.getProfileDescription(profile).lower():
            return image
        mode = {"RGB": "RGB", "CMYK": "CMYK", "GRAY": "L"}.get(space)
        if mode is None:
            return image
        if mode == "RGB" and image.mode in ("RGBA", "P", "PA", "LA", "L", "RGBX"):
            image = image.convert("RGB")
        if image.mode != mode:
            return image
        key = (icc, mode)
        if key not in _TRANSFORMS:
            if _SRGB is None:
                _SRGB = ImageCms.createProfile("sRGB")
            if len(_TRANSFORMS) > 32:
                _TRANSFORMS.clear()
            _TRANSFORMS[key] = ImageCms.buildTransform(profile, _SRGB, mode, "RGB")
        return ImageCms.applyTransform(image, _TRANSFORMS[key])
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError, AttributeError):
        return image


# -- which files are images ----------------------------------------------------------------------


def classify(path: str | os.PathLike) -> str:
    """ "image", "video" or "other" for a file. A name with an image extension is taken as an image
    without opening it (listing a million-file dataset stays quick; a file that is not what its
    name says fails at decoding, with its reason, and is never dropped). Any other file is judged
    by its content: a known signature, or else whether Pillow recognises it (formats without a
    fixed signature: TGA, PPM, ICO, ...)."""
    if Path(path).suffix.lower() in IMAGE_EXTENSIONS:
        return "image"
    try:
        head = read_head(path)
    except OSError:
        return "image"  # unreadable now: an input, so that its error is reported, not hidden
    kind = sniff(head)
    if kind == "VIDEO":
        return "video"
    if kind is not None:
        return "image"
    if Path(path).suffix.lower() in RAW_EXTENSIONS:
        return "image"  # RAW containers without a fixed signature (LibRaw knows them by content)
    from PIL import Image, UnidentifiedImageError

    register()
    try:
        with Image.open(path):
            return "image"
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError):
        return "other"
    except Exception:  # a plugin tripping over odd bytes: still not an image we can use
        return "other"


#: Why a file found in a folder is not an input (the summary groups by these). Videos are
#: inputs (scored by their frames, docs/video.md) unless a walk asks for images only.
NOT_IMAGE, VIDEO, HIDDEN = "not an image", "video (images only here)", "hidden"


@dataclass
class Found:
    """The image files of a walk, in order, and every other entry with the reason it was left."""

    paths: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def extend(self, other: Found) -> None:
        self.paths += other.paths
        self.skipped += other.skipped


def walk(folder: str | os.PathLike, videos: bool = True) -> Found:
    """Every regular file under ``folder`` (recursive, sorted): images and (with ``videos``)
    video files by content are inputs; the rest is listed as skipped with its reason. Hidden
    files and folders (names starting with ".", such as ``.DS_Store``, the ``._IMG_0001.JPG``
    resource forks macOS leaves on shared drives, ``.git``) are not opened or walked, and are
    listed as skipped "hidden"."""
    found = Found()
    for dirpath, dirnames, filenames in os.walk(folder):
        hidden = sorted(d for d in dirnames if d.startswith("."))
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.skipped += [(str(Path(dirpath) / d) + os.sep, HIDDEN) for d in hidden]
        for name in sorted(filenames):
            path = str(Path(dirpath) / name)
            if name.startswith("."):
                found.skipped.append((path, HIDDEN))
            elif not os.path.isfile(path):
                found.skipped.append((path, "not a regular file"))
            else:
                kind = classify(path)
                if kind == "image" or (kind == "video" and videos):
                    found.paths.append(path)
                else:
                    found.skipped.append((path, VIDEO if kind == "video" else NOT_IMAGE))
    return found


def summarize_skipped(skipped: Iterable[tuple[str, str]]) -> str:
    """E.g. "12 not images skipped (.json 10, .txt 2), 3 videos skipped (.mov 3), 1 hidden skipped
    (.DS_Store 1)": per reason, the commonest extensions first."""
    by_reason: dict[str, Counter] = {}
    for path, reason in skipped:
        suffix = Path(path.rstrip(os.sep)).suffix.lower() or "no extension"
        if path.endswith(os.sep):
            suffix = "folder"
        by_reason.setdefault(reason, Counter())[suffix] += 1
    parts = []
    labels = ((NOT_IMAGE, "not an image", "not images"), (VIDEO, "video", "videos"))
    for reason, one, many in (*labels, (HIDDEN, "hidden", "hidden")):
        counts = by_reason.pop(reason, None)
        if counts:
            ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
            detail = ", ".join(f"{s} {n}" for s, n in ranked[:4])
            detail += f", {len(ranked) - 4} more kinds" if len(ranked) > 4 else ""
            total = sum(counts.values())
            parts.append(f"{total} {one if total == 1 else many} skipped ({detail})")
    parts += [f"{sum(c.values())} skipped: {reason}" for reason, c in by_reason.items()]
    return ", ".join(parts)


def html_accept() -> str:
    """The web page's file-picker ``accept`` attribute for :data:`FORMATS` and videos."""
    return ",".join(["image/*", "video/*", *(e for f in FORMATS for e in f.extensions),
                     *sorted(VIDEO_EXTENSIONS)])  # fmt: skip
