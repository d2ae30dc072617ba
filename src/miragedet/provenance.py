"""Provenance read beside the pixel score: C2PA manifests (c2pa-python) and EXIF fields.

It is reported next to the detector's probability and never replaces it: metadata is easy to
strip or forge, pixels are what the detector judges.
"""

from __future__ import annotations

import io
import json
import os
from typing import Any

from PIL import Image

#: IPTC digital source types that declare generative AI.
AI_SOURCE_TYPES = (
    "trainedAlgorithmicMedia",
    "compositeWithTrainedAlgorithmicMedia",
    "algorithmicMedia",
)
#: Words in an EXIF Software/Make field that name a generative tool.
AI_SOFTWARE = (
    "firefly",
    "dall-e",
    "dall·e",
    "dalle",
    "midjourney",
    "stable diffusion",
    "stablediffusion",
    "imagen",
    "gemini",
    "chatgpt",
    "openai",
    "sora",
    "flux",
    "ideogram",
    "leonardo",
    "novelai",
    "comfyui",
    "automatic1111",
)
_EXIF_TAGS = {
    0x010F: "make",
    0x0110: "model",
    0x0131: "software",
    0x0132: "datetime",
    0x013B: "artist",
}
_MIME = {
    "JPEG": "image/jpeg",
    "PNG": "image/png",
    "WEBP": "image/webp",
    "TIFF": "image/tiff",
    "GIF": "image/gif",
    "HEIF": "image/heif",
    "AVIF": "image/avif",
}


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


def read_exif(image: Image.Image) -> dict[str, str]:
    try:
        exif = image.getexif()
    except Exception:
        return {}
    out = {}
    for tag, name in _EXIF_TAGS.items():
        value = exif.get(tag)
        if value:
            out[name] = str(value).strip("\x00 ").strip()
    return out


def read_c2pa(data: bytes, image_format: str | None) -> dict[str, Any]:
    """The active C2PA manifest's claim generator, AI declaration and validation state."""
    try:
        import c2pa
    except ImportError:
        return {"checked": False, "reason": "c2pa-python is not installed"}
    mime = _MIME.get(image_format or "", "image/jpeg")
    try:
        report = json.loads(c2pa.Reader(mime, io.BytesIO(data)).json())
    except Exception as exc:
        if "ManifestNotFound" in type(exc).__name__ or "ManifestNotFound" in str(exc):
            return {"checked": True, "present": False}
        return {"checked": True, "present": False, "error": str(exc)[:200]}
    manifest = report.get("manifests", {}).get(report.get("active_manifest"), {})
    generators = [
        g.get("name", "") + (f" {g['version']}" if g.get("version") else "")
        for g in manifest.get("claim_generator_info", [])
    ]
    source_types = []
    for assertion in manifest.get("assertions", []):
        if str(assertion.get("label", "")).startswith("c2pa.actions"):
            for action in assertion.get("data", {}).get("actions", []):
                if action.get("digitalSourceType"):
                    source_types.append(action["digitalSourceType"])
    declares_ai = any(t.rsplit("/", 1)[-1] in AI_SOURCE_TYPES for t in source_types)
    signer = manifest.get("signature_info", {})
    return {
        "checked": True,
        "present": True,
        "claim_generator": ", ".join(generators) or manifest.get("claim_generator"),
        "digital_source_types": source_types,
        "declares_ai": declares_ai,
        "signed_by": signer.get("issuer") or signer.get("common_name"),
        "validation_state": report.get("validation_state"),
        "validation_codes": [s.get("code") for s in report.get("validation_status", [])],
    }


def read_provenance(item: Any) -> dict[str, Any]:
    """C2PA and EXIF provenance of an input (path, bytes or Pillow image), with a summary."""
    data = _read_bytes(item)
    image = item if isinstance(item, Image.Image) else None
    if image is None and data is not None:
        try:
            image = Image.open(io.BytesIO(data))
        except Exception:
            image = None
    exif = read_exif(image) if image is not None else {}
    fmt = image.format if image is not None else None
    c2pa_info = (
        read_c2pa(data, fmt)
        if data is not None
        else {"checked": False, "reason": "no file bytes (decoded image or array input)"}
    )
    software = " ".join(exif.get(k, "") for k in ("software", "make", "model")).lower()
    ai_software = next((w for w in AI_SOFTWARE if w in software), None)
    if c2pa_info.get("present") and c2pa_info.get("declares_ai"):
        state = c2pa_info.get("validation_state") or "unknown"
        if "signingCredential.untrusted" in c2pa_info.get("validation_codes", []):
            state += ", signer not on a trust list"
        summary = (
            f"C2PA manifest declares AI generation ({c2pa_info['claim_generator']}; "
            f"signature {state})"
        )
    elif c2pa_info.get("present"):
        summary = f"C2PA manifest by {c2pa_info['claim_generator']}, no AI declaration"
    elif ai_software:
        summary = f"EXIF names a generative tool: {exif.get('software') or exif.get('make')}"
    elif exif:
        summary = "EXIF: " + ", ".join(f"{k} {v}" for k, v in exif.items())
    else:
        summary = "no provenance metadata (no C2PA manifest, no camera or software EXIF)"
    return {
        "c2pa": c2pa_info,
        "exif": exif,
        "declares_ai": bool(c2pa_info.get("declares_ai")) or ai_software is not None,
        "summary": summary,
    }
