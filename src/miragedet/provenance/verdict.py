"""The provenance of one file and the verdict it gives: C2PA (:mod:`.c2pa_manifest`), generator
parameters (:mod:`.parameters`), EXIF/XMP (:mod:`.metadata`) and watermarks, combined.

It is reported next to the detector's probability and never replaces it: metadata is easy to
strip or forge, pixels are what the detector judges.
"""

from __future__ import annotations

import io
import os
from typing import Any

from PIL import Image

from ..data import formats
from ..data.video import is_video_file
from . import parameters
from .c2pa_manifest import read_c2pa
from .metadata import AI_SOURCE_TYPES, ai_tool_in, raw_exif, read_exif, read_xmp
from .signals import declared_basis, signals_of

formats.register()  # HEIF and JPEG XL files carry metadata too


def _read_bytes(item: Any) -> bytes | None:
    if isinstance(item, bytes | bytearray):
        return bytes(item)
    if isinstance(item, str | os.PathLike):
        try:
            with open(item, "rb") as handle:
                return handle.read()
        except OSError:
            return None
    if isinstance(item, Image.Image) and getattr(item, "filename", None):
        return _read_bytes(item.filename)
    return None


def read_provenance(
    item: Any, trust_anchors: str | None = None, watermarks: bool = False
) -> dict[str, Any]:
    """C2PA, XMP, generator parameters, EXIF and (with ``watermarks``) invisible generator
    watermarks of an input (path, bytes or Pillow image), with a one-line summary (never raw
    JSON)."""
    if is_video_file(item):
        from .video_metadata import read_video_provenance

        return read_video_provenance(item, trust_anchors)
    data = _read_bytes(item)
    image = item if isinstance(item, Image.Image) else None
    if image is None and data is not None:
        try:
            image = Image.open(io.BytesIO(data))
        except Exception:
            image = None
    raw = raw_exif(image) if image is not None else {}
    exif = read_exif(image, raw) if image is not None else {}
    xmp = read_xmp(image) if image is not None else {}
    try:
        params = parameters.read(dict(image.info), raw) if image is not None else []
    except Exception as exc:  # a reader tripping over hostile metadata: say so, keep going
        params = [{"source": "parameters", "error": f"{type(exc).__name__}: {exc}"[:200]}]
    fmt = image.format if image is not None else None
    marks = _watermarks(item, image) if watermarks else None
    c2pa_info = (
        read_c2pa(data, fmt, trust_anchors)
        if data is not None
        else {"checked": False, "reason": "no file bytes (decoded image or array input)"}
    )
    software = " ".join(exif.get(k, "") for k in ("software", "make", "model"))
    ai_software = ai_tool_in(software)
    xmp_tool = ai_tool_in(" ".join(xmp.get(k, "") for k in ("creator_tool", "ai_system")))
    declared = [p for p in params if p.get("tool")]
    if c2pa_info.get("present") and c2pa_info.get("declares_ai"):
        state = c2pa_info.get("validation_state") or "unknown"
        if "signingCredential.untrusted" in c2pa_info.get("validation_codes", []):
            state += ", signer not on a trust list"
        ingredients = c2pa_info["ingredients_declaring_ai"]
        what = (
            "declares AI generation"
            if any(t in AI_SOURCE_TYPES for t in c2pa_info["digital_source_types"])
            else f"has an ingredient declaring AI generation ({ingredients[0]})"
        )
        summary = f"C2PA manifest {what} ({c2pa_info['claim_generator']}; signature {state})"
    elif marks and marks.get("found"):
        summary = (
            f"invisible watermark of {marks['generator']} "
            f"({100 * marks['bit_match']:.0f}% of its bits)"
        )
    elif xmp.get("declares_ai"):
        named = xmp.get("ai_system") or xmp.get("creator_tool")
        summary = f"XMP declares {xmp['source_claim']}" + (f" ({named})" if named else "")
    elif declared:
        first = declared[0]
        details = ", ".join(
            f"{k} {v}" for k, v in first.get("details", {}).items() if k != "prompt"
        )[:160]
        summary = (
            f"generator parameters from {first['tool']}"
            + (f": {first['generator']}" if first.get("generator") else "")
            + (f" ({details})" if details else "")
        )
    elif c2pa_info.get("present"):
        claims = ", ".join(dict.fromkeys(c2pa_info.get("source_claims", [])))
        summary = f"C2PA manifest by {c2pa_info['claim_generator']}, no AI declaration" + (
            f" (source: {claims})" if claims else ""
        )
    elif ai_software:
        summary = f"EXIF names a generative tool: {exif.get('software') or exif.get('make')}"
    elif xmp_tool:
        summary = f"XMP names a generative tool: {xmp.get('ai_system') or xmp['creator_tool']}"
    elif xmp.get("source_claim"):
        summary = f"XMP source: {xmp['source_claim']}"
    elif exif:
        summary = "EXIF: " + ", ".join(f"{k} {v}" for k, v in exif.items())
    else:
        summary = "no provenance metadata (no C2PA manifest, no camera or software EXIF)"
    result = {
        "signals": signals_of(c2pa_info, xmp, declared, marks, exif if ai_software else None),
        "c2pa": c2pa_info,
        "parameters": params,
        "xmp": xmp,
        "exif": exif,
        **({"watermark": marks} if marks is not None else {}),
    }
    result["declares_ai"] = declared_basis(result) is not None  # one rule for both
    result["summary"] = summary
    return result


def _watermarks(item: Any, image: Image.Image | None) -> dict[str, Any]:
    from ..data.dataset import ImageDecodeError, load_image
    from . import watermark

    try:
        pixels = load_image(item if isinstance(item, Image.Image) or image is None else image)
    except ImageDecodeError as exc:
        return {"checked": False, "reason": str(exc)}
    return watermark.read(pixels)


def combine(label: str | None, provenance: dict[str, Any] | None) -> tuple[str | None, str]:
    """One verdict from the pixel label and the metadata, and its basis.

    A declaration of generative AI (C2PA, XMP, generator parameters, a generative tool named in
    EXIF) makes the verdict "fake" whatever the pixels say: such metadata is written by the tools
    themselves and nobody adds it to a real photo by accident, while stripping it is trivial, so
    its presence is strong evidence and its absence none. Metadata claiming a camera never turns a
    pixel "fake" into "real" (it is easy to forge in that direction), except a valid C2PA
    capture claim (``digitalCapture``) signed by a signer on the user's own trust list
    (``--trust-anchors``): basis "declared (c2pa capture, trusted signer)"."""
    basis = declared_basis(provenance)
    if basis is not None and label is not None:
        return "fake", basis
    if label is not None and (provenance or {}).get("c2pa", {}).get("trusted_capture"):
        return "real", "declared (c2pa capture, trusted signer)"
    return label, "pixels"
