"""The provenance of a video file: its C2PA manifest, container tags and XMP, with the verdict
rules images use.

- C2PA: c2pa-python reads manifests in MP4/MOV/M4V (ISO BMFF) and AVI (RIFF) (its
  ``Reader.get_supported_mime_types()``).
- Container tags (FFmpeg's metadata dictionary, read with PyAV): ``encoder``, ``comment``,
  ``creation_time``, QuickTime's ``com.apple.quicktime.*`` (make, model, software) and the tags
  generators write. ComfyUI's video savers write the workflow there: VideoHelperSuite's Video
  Combine puts ``{"prompt": ..., "workflow": ...}`` as JSON in ``comment`` (its ffmetadata file);
  ComfyUI's own SaveVideo writes ``prompt`` and ``workflow`` as separate tags.
- XMP: the packet of a ``uuid`` box (Adobe XMP Specification Part 3, 1.2.7: UUID
  BE7ACFCB-97A9-42E8-9C71-999491E3AFAC) or a QuickTime ``XMP_`` atom, found by its
  ``<x:xmpmeta`` markers in the first and last 8 MB of the file (where muxers put ``moov``).

Animated WebP, GIF and APNG are images to Pillow, and keep :func:`~.verdict.read_provenance`'s
image path (ComfyUI's animated WebP carries its workflow in EXIF, as its stills do).
"""

from __future__ import annotations

import io
import json
import os
from typing import Any

from . import parameters
from .c2pa_manifest import read_c2pa
from .metadata import ai_tool_in, parse_xmp
from .signals import declared_basis, signals_of

#: Bytes of each end of the file searched for an XMP packet.
XMP_WINDOW = 8 * 2**20
#: Container tags reported (the rest are codec plumbing: major_brand, handler_name, ...).
TAGS = ("encoder", "comment", "creation_time", "title", "artist", "description", "software",
        "com.apple.quicktime.make", "com.apple.quicktime.model",
        "com.apple.quicktime.software", "com.apple.quicktime.creationdate",
        "com.android.manufacturer", "com.android.model")  # fmt: skip
_C2PA_FORMAT = {"mov": "MOV", "mp4": "MP4", "m4v": "M4V", "avi": "AVI"}


def container_tags(source: Any) -> tuple[dict[str, str], str | None]:
    """The container's (and first video stream's) metadata tags, and FFmpeg's format name."""
    import av

    opened = io.BytesIO(bytes(source)) if isinstance(source, bytes | bytearray) else source
    try:
        with av.open(opened) as container:
            tags = {str(k): str(v) for k, v in (container.metadata or {}).items()}
            if container.streams.video:
                for k, v in (container.streams.video[0].metadata or {}).items():
                    tags.setdefault(str(k), str(v))
            return tags, container.format.name
    except Exception:
        return {}, None


def _xmp_packet(source: Any) -> bytes | None:
    try:
        if isinstance(source, bytes | bytearray):
            chunks = [bytes(source[:XMP_WINDOW]), bytes(source[-XMP_WINDOW:])]
        else:
            with open(source, "rb") as handle:
                size = os.fstat(handle.fileno()).st_size
                chunks = [handle.read(XMP_WINDOW)]
                if size > XMP_WINDOW:
                    handle.seek(max(XMP_WINDOW, size - XMP_WINDOW))
                    chunks.append(handle.read(XMP_WINDOW))
    except OSError:
        return None
    for chunk in chunks:
        start = chunk.find(b"<x:xmpmeta")
        end = chunk.find(b"</x:xmpmeta>", start + 1) if start >= 0 else -1
        if 0 <= start < end:
            return chunk[start : end + len(b"</x:xmpmeta>")]
    return None


def _comfy(tags: dict[str, str]) -> list[dict[str, Any]]:
    """ComfyUI's workflow in the container tags (both savers' layouts)."""
    prompt, workflow, field = tags.get("prompt"), tags.get("workflow"), "container tags prompt"
    comment = tags.get("comment", "")
    if prompt is None and workflow is None and comment.lstrip().startswith("{"):
        try:
            data = json.loads(comment)
        except ValueError:
            data = None
        if isinstance(data, dict):
            prompt, workflow, field = data.get("prompt"), data.get("workflow"), "comment tag"
    if prompt is None and workflow is None:
        return []
    try:
        found = parameters.parse_comfy(prompt, workflow)
    except Exception as exc:  # hostile JSON: say so, keep going
        return [{"source": "parameters", "error": f"{type(exc).__name__}: {exc}"[:200]}]
    return [{"source": "parameters", "field": field, **found}] if found else []


def read_video_provenance(source: Any, trust_anchors: str | None = None) -> dict[str, Any]:
    """C2PA, container tags, XMP and generator parameters of a video (path or bytes), in the
    shape :func:`~.verdict.read_provenance` gives for images (same verdict rules)."""
    tags, fmt = container_tags(source)
    brand = tags.get("major_brand", "").strip().lower()
    c2pa_format = _C2PA_FORMAT.get(brand[:3]) or ("MP4" if fmt and "mp4" in fmt else None)
    if fmt and fmt.startswith("avi"):
        c2pa_format = "AVI"
    if brand.startswith("qt"):
        c2pa_format = "MOV"
    if c2pa_format is None:
        c2pa_info: dict[str, Any] = {"checked": False, "reason": f"no C2PA reader for {fmt}"}
    elif isinstance(source, bytes | bytearray):
        c2pa_info = read_c2pa(bytes(source), c2pa_format, trust_anchors)
    else:
        try:
            with open(source, "rb") as handle:
                c2pa_info = read_c2pa(handle, c2pa_format, trust_anchors)
        except OSError as exc:
            c2pa_info = {"checked": False, "reason": str(exc)[:200]}
    xmp = parse_xmp(_xmp_packet(source))
    params = _comfy(tags)
    declared = [p for p in params if p.get("tool")]
    shown = {k: v[:200] for k, v in tags.items() if k in TAGS and k not in ("comment",)}
    if "comment" in tags and not params:
        shown["comment"] = tags["comment"][:200]
    tool_text = " ".join(shown.get(k, "") for k in ("encoder", "software", "comment",
                                                     "com.apple.quicktime.software"))  # fmt: skip
    ai_tag = ai_tool_in(tool_text)
    if c2pa_info.get("present") and c2pa_info.get("declares_ai"):
        summary = (f"C2PA manifest declares AI generation ({c2pa_info['claim_generator']}; "
                   f"signature {c2pa_info.get('validation_state') or 'unknown'})")  # fmt: skip
    elif xmp.get("declares_ai"):
        summary = f"XMP declares {xmp['source_claim']}"
    elif declared:
        first = declared[0]
        summary = (
            f"generator parameters from {first['tool']}"
            + (f": {first['generator']}" if first.get("generator") else "")
            + f" (video {first['field']})"
        )
    elif c2pa_info.get("present"):
        summary = f"C2PA manifest by {c2pa_info['claim_generator']}, no AI declaration"
    elif ai_tag:
        summary = f"container tags name a generative tool: {ai_tag}"
    elif shown:
        summary = "container tags: " + ", ".join(f"{k} {v}" for k, v in list(shown.items())[:4])
    else:
        summary = "no provenance metadata (no C2PA manifest, no container tags)"
    signals = signals_of(c2pa_info, xmp, declared, None, None)
    if ai_tag:
        signals.append({"source": "container", "claim": "generative tool named",
                        "generator": ai_tag, "details": {}, "verified": False,
                        "declares_ai": True})  # fmt: skip
    result = {
        "signals": signals,
        "c2pa": c2pa_info,
        "parameters": params,
        "xmp": xmp,
        "exif": {},
        "container": shown,
    }
    result["declares_ai"] = declared_basis(result) is not None
    result["summary"] = summary[:300]
    return result
