"""Provenance read beside the pixel score: C2PA manifests (c2pa-python), generator parameters
(:mod:`miragedet.generators`) and EXIF fields.

It is reported next to the detector's probability and never replaces it: metadata is easy to
strip or forge, pixels are what the detector judges.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
from typing import Any

from PIL import Image

from . import generators
from .data import formats

formats.register()  # HEIF and JPEG XL files carry metadata too

#: The IPTC Digital Source Type vocabulary (https://cv.iptc.org/newscodes/digitalsourcetype/),
#: each term with what it tells. Only the two "trained" terms declare generative AI:
#: ``algorithmicMedia`` is "created purely by an algorithm not based on any sampled training
#: data" (a gradient, a fractal, a render), not generative AI.
IPTC_SOURCE_TYPES = {
    "trainedAlgorithmicMedia": "generative AI",
    "compositeWithTrainedAlgorithmicMedia": "contains generative AI",
    "algorithmicallyEnhanced": "edited by an algorithm",
    "algorithmicMedia": "synthetic, not generative AI",
    "compositeSynthetic": "synthetic composite",
    "digitalArt": "digital art",
    "virtualRecording": "virtual recording",
    "dataDrivenMedia": "data-driven media",
    "digitalCapture": "camera capture",
    "computationalCapture": "camera capture (computational)",
    "negativeFilm": "scan of film",
    "positiveFilm": "scan of film",
    "print": "scan of a print",
    "screenCapture": "screen capture",
    "compositeCapture": "composite of captures",
    "composite": "composite",
    "minorHumanEdits": "edited",
    "humanEdits": "edited",
    "digitalCreation": "digital creation",
}
AI_SOURCE_TYPES = ("trainedAlgorithmicMedia", "compositeWithTrainedAlgorithmicMedia")
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


_AI_WORDS = re.compile(
    r"(?<![\w])(" + "|".join(re.escape(w) for w in AI_SOFTWARE) + r")(?![\w])", re.IGNORECASE
)


def ai_tool_in(text: str) -> str | None:
    """The generative tool named in ``text`` as a whole word ("Imagenomic" is not "imagen",
    "Influx" is not "flux"), or None."""
    match = _AI_WORDS.search(text)
    return match.group(1) if match else None


def _raw_exif(image: Image.Image) -> dict[int, Any]:
    """IFD0 tags, and UserComment from the Exif IFD. A PNG's eXIf chunk is read only when it
    precedes the pixels (as writers put it): Pillow's ``getexif`` would decode the whole image to
    look for one after them."""
    try:
        if image.format == "PNG":
            exif = Image.Exif()
            if isinstance(image.info.get("exif"), bytes):
                exif.load(image.info["exif"])
        else:
            exif = image.getexif()
        out = dict(exif.items())
        with contextlib.suppress(Exception):
            comment = exif.get_ifd(0x8769).get(0x9286)
            if comment is not None:
                out[0x9286] = comment
        return out
    except Exception:
        return {}


def read_exif(image: Image.Image, raw: dict[int, Any] | None = None) -> dict[str, str]:
    """Make, Model, Software, DateTime, Artist as short text; a field holding a generator's JSON
    (ComfyUI's WebP writes its graphs into Make and Model) is left out: it is parsed by
    :mod:`miragedet.generators`, never shown raw."""
    raw = _raw_exif(image) if raw is None else raw
    out = {}
    for tag, name in _EXIF_TAGS.items():
        value = raw.get(tag)
        if value:
            text = str(value).strip("\x00 ").strip()
            if text and not generators.is_blob(text):
                out[name] = text[:120]
    return out


_IPTC_EXT = "{http://iptc.org/std/Iptc4xmpExt/2008-02-29/}"
_XMP_NS = "{http://ns.adobe.com/xap/1.0/}"
_XMP_FIELDS = {
    _IPTC_EXT + "DigitalSourceType": "digital_source_type",
    _IPTC_EXT + "AISystemUsed": "ai_system",  # IPTC Photo Metadata 2025.1 AI fields
    _IPTC_EXT + "AISystemVersionUsed": "ai_system_version",
    _XMP_NS + "CreatorTool": "creator_tool",
}
MAX_XMP = 4_000_000


def read_xmp(image: Image.Image) -> dict[str, Any]:
    """IPTC digital source type, IPTC AI-system fields and CreatorTool from an image's XMP packet
    (JPEG APP1, PNG iTXt ``XML:com.adobe.xmp``, WebP, HEIF), parsed with defusedxml: XMP is
    attacker-controlled, so entity declarations (billion laughs) and external references are
    refused, and a packet over 4 MB is not parsed."""
    packet = image.info.get("xmp") or image.info.get("XML:com.adobe.xmp")
    if not packet:
        return {}
    if len(packet) > MAX_XMP:
        return {"error": f"XMP packet of {len(packet)} bytes not parsed (limit {MAX_XMP})"}
    from defusedxml import ElementTree
    from defusedxml.common import DefusedXmlException

    if isinstance(packet, str):
        packet = packet.encode("utf-8", "replace")
    if b"<!DOCTYPE" in packet or b"<!ENTITY" in packet:  # XMP never needs a DTD (ISO 16684-1)
        return {"error": "XMP refused: it declares a DTD or entities"}
    start, end = packet.find(b"<x:xmpmeta"), packet.rfind(b"</x:xmpmeta>")
    body = packet[start : end + len(b"</x:xmpmeta>")] if 0 <= start < end else packet
    try:
        root = ElementTree.fromstring(body, forbid_dtd=True)
    except DefusedXmlException as exc:
        return {"error": f"XMP refused: {type(exc).__name__}"}
    except Exception as exc:  # malformed XML
        return {"error": f"XMP not parsed: {str(exc)[:120]}"}
    out: dict[str, Any] = {}
    for element in root.iter():
        for key, value in [*element.attrib.items(), (element.tag, element.text)]:
            name = _XMP_FIELDS.get(key)
            if name and isinstance(value, str) and value.strip() and name not in out:
                out[name] = value.strip()[:200]
        if element.tag == _IPTC_EXT + "DigitalSourceType" and "digital_source_type" not in out:
            text = " ".join(t.strip() for t in element.itertext() if t.strip())
            if text:
                out["digital_source_type"] = text[:200]
    term = out.get("digital_source_type", "").rsplit("/", 1)[-1]
    if term:
        out["source_claim"] = IPTC_SOURCE_TYPES.get(term, f"unknown ({term})")
        out["declares_ai"] = term in AI_SOURCE_TYPES
    return out


_CONTEXTS: dict[str, Any] = {}


def _context(trust_anchors: str | None) -> Any:
    """A c2pa Context that checks signers against ``trust_anchors`` (PEM text), cached."""
    if not trust_anchors:
        return None
    import c2pa

    if trust_anchors not in _CONTEXTS:
        settings = c2pa.Settings.from_dict(
            {"trust": {"trust_anchors": trust_anchors}, "verify": {"verify_trust": True}}
        )
        _CONTEXTS[trust_anchors] = c2pa.Context(settings)
    return _CONTEXTS[trust_anchors]


def load_trust_anchors(path: str | os.PathLike) -> str:
    """The PEM certificates of a trust list file (what ``--trust-anchors`` reads)."""
    text = open(path, encoding="ascii", errors="replace").read()  # noqa: SIM115 (read at once)
    if "-----BEGIN CERTIFICATE-----" not in text:
        raise ValueError(f"{path}: no PEM certificate (-----BEGIN CERTIFICATE-----) in it")
    return text


def _actions(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for assertion in manifest.get("assertions", []):
        if str(assertion.get("label", "")).startswith("c2pa.actions"):
            actions = (assertion.get("data") or {}).get("actions", []) or []
            out += [a for a in actions if isinstance(a, dict)]
    return out


def _source_types(manifest: dict[str, Any]) -> list[str]:
    return [
        str(a["digitalSourceType"]).rsplit("/", 1)[-1]
        for a in _actions(manifest)
        if a.get("digitalSourceType")
    ]


def _agents(manifest: dict[str, Any]) -> list[str]:
    """The ``softwareAgent`` of each action: a name, or {name, version} (C2PA 2.x)."""
    out = []
    for action in _actions(manifest):
        agent = action.get("softwareAgent")
        if isinstance(agent, dict):
            agent = " ".join(str(agent[k]) for k in ("name", "version") if agent.get(k))
        if isinstance(agent, str) and agent.strip():
            out.append(agent.strip()[:120])
    return list(dict.fromkeys(out))


def jpeg_has_app11(data: bytes) -> bool:
    """Whether a JPEG has an APP11 segment (where C2PA embeds its JUMBF manifest store, C2PA
    specification 2.1, A.3.1) before its image data: a walk over the marker segments, a few hundred
    bytes, instead of handing the whole file to the C2PA reader."""
    at = 2
    while at + 4 <= len(data):
        if data[at] != 0xFF:
            return True  # not a marker where one should be: let the C2PA reader judge
        marker = data[at + 1]
        if marker == 0xFF:
            at += 1
            continue
        if marker == 0xEB:
            return True
        if marker in (0xDA, 0xD9):  # start of scan / end of image: no more metadata segments
            return False
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:
            at += 2
            continue
        at += 2 + int.from_bytes(data[at + 2 : at + 4], "big")
    return False


def read_c2pa(
    data: bytes, image_format: str | None, trust_anchors: str | None = None
) -> dict[str, Any]:
    """The active C2PA manifest: claim generator, IPTC source types and what they declare,
    validation state (``Trusted`` when the signer chains to ``trust_anchors``), and the AI claims
    of its ingredients, followed down the ingredient tree (an AI image that was later edited keeps
    its AI claim in the ingredient's manifest)."""
    try:
        import c2pa
    except ImportError:
        return {"checked": False, "reason": "c2pa-python is not installed"}
    if image_format in ("JPEG", "MPO") and data[:2] == b"\xff\xd8" and not jpeg_has_app11(data):
        return {"checked": True, "present": False}
    mime = _MIME.get(image_format or "", "image/jpeg")
    try:
        reader = c2pa.Reader(mime, io.BytesIO(data), context=_context(trust_anchors))
        report = json.loads(reader.json())
    except Exception as exc:
        if "ManifestNotFound" in type(exc).__name__ or "ManifestNotFound" in str(exc):
            return {"checked": True, "present": False}
        return {"checked": True, "present": False, "error": str(exc)[:200]}
    manifests = report.get("manifests") or {}
    manifest = manifests.get(report.get("active_manifest"), {})
    generators_ = [
        g.get("name", "") + (f" {g['version']}" if g.get("version") else "")
        for g in manifest.get("claim_generator_info", [])
    ]
    terms = _source_types(manifest)
    ingredient_ai = []
    seen = {report.get("active_manifest")}
    stack = [(manifest, 0)]
    while stack:  # the ingredient tree, each manifest once, 16 levels at most
        current, depth = stack.pop()
        for ingredient in current.get("ingredients", []) or []:
            label = ingredient.get("active_manifest")
            if not label or label in seen or label not in manifests or depth >= 16:
                continue
            seen.add(label)
            child = manifests[label]
            if any(t in AI_SOURCE_TYPES for t in _source_types(child)):
                ingredient_ai.append(str(ingredient.get("title") or label))
            stack.append((child, depth + 1))
    signer = manifest.get("signature_info", {})
    state = report.get("validation_state")
    return {
        "checked": True,
        "present": True,
        "claim_generator": ", ".join(generators_) or manifest.get("claim_generator"),
        "digital_source_types": terms,
        "source_claims": [IPTC_SOURCE_TYPES.get(t, f"unknown ({t})") for t in terms],
        "ingredients_declaring_ai": ingredient_ai,
        "actions": [str(a.get("action")) for a in _actions(manifest) if a.get("action")],
        "software_agents": _agents(manifest),
        "declares_ai": any(t in AI_SOURCE_TYPES for t in terms) or bool(ingredient_ai),
        "trusted_capture": state == "Trusted"
        and any(t in ("digitalCapture", "computationalCapture") for t in terms),
        "signed_by": signer.get("issuer") or signer.get("common_name"),
        "validation_state": state,
        "validation_codes": [s.get("code") for s in report.get("validation_status", [])],
    }


def read_provenance(
    item: Any, trust_anchors: str | None = None, watermarks: bool = False
) -> dict[str, Any]:
    """C2PA, XMP, generator parameters, EXIF and (with ``watermarks``) invisible generator
    watermarks of an input (path, bytes or Pillow image), with a one-line summary (never raw
    JSON)."""
    data = _read_bytes(item)
    image = item if isinstance(item, Image.Image) else None
    if image is None and data is not None:
        try:
            image = Image.open(io.BytesIO(data))
        except Exception:
            image = None
    raw = _raw_exif(image) if image is not None else {}
    exif = read_exif(image, raw) if image is not None else {}
    xmp = read_xmp(image) if image is not None else {}
    try:
        params = generators.read(dict(image.info), raw) if image is not None else []
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
        "signals": _signals(c2pa_info, xmp, declared, marks, exif if ai_software else None),
        "c2pa": c2pa_info,
        "parameters": params,
        "xmp": xmp,
        "exif": exif,
        **({"watermark": marks} if marks is not None else {}),
    }
    result["declares_ai"] = declared_basis(result) is not None  # one rule for both
    result["summary"] = summary
    return result


def _signals(
    c2pa_info: dict[str, Any],
    xmp: dict[str, Any],
    declared: list[dict[str, Any]],
    marks: dict[str, Any] | None,
    exif_tool: dict[str, str] | None,
) -> list[dict[str, Any]]:
    """Every signal found, in one shape: source, claim, generator, details, verified (a valid
    signature: only C2PA can be), declares_ai."""
    out = []
    if c2pa_info.get("present"):
        ingredients = c2pa_info.get("ingredients_declaring_ai") or []
        out.append(
            {
                "source": "c2pa",
                "claim": ", ".join(dict.fromkeys(c2pa_info.get("source_claims") or []))
                or ("ingredient: generative AI" if ingredients else "no source type"),
                "generator": c2pa_info.get("claim_generator"),
                "details": {
                    k: v
                    for k, v in (
                        ("ingredients declaring AI", ingredients),
                        ("software agents", c2pa_info.get("software_agents")),
                    )
                    if v
                },
                "verified": c2pa_info.get("validation_state") in ("Valid", "Trusted"),
                "declares_ai": bool(c2pa_info.get("declares_ai")),
            }
        )
    if marks and marks.get("found"):
        out.append(
            {
                "source": "watermark",
                "claim": "generative AI",
                "generator": marks["generator"],
                "details": {"bit_match": round(marks["bit_match"], 3)},
                "verified": False,
                "declares_ai": True,
            }
        )
    if xmp.get("source_claim") or xmp.get("ai_system"):
        out.append(
            {
                "source": "xmp",
                "claim": xmp.get("source_claim") or "AI system named",
                "generator": xmp.get("ai_system") or xmp.get("creator_tool"),
                "details": {},
                "verified": False,
                "declares_ai": bool(xmp.get("declares_ai") or xmp.get("ai_system")),
            }
        )
    for found in declared:
        out.append(
            {
                "source": "parameters",
                "claim": "generative AI",
                "generator": found["tool"]
                + (f": {found['generator']}" if found["generator"] else ""),
                "details": {k: v for k, v in found.get("details", {}).items() if k != "prompt"},
                "verified": False,
                "declares_ai": True,
            }
        )
    if exif_tool:
        out.append(
            {
                "source": "exif",
                "claim": "generative tool named",
                "generator": exif_tool.get("software") or exif_tool.get("make"),
                "details": {},
                "verified": False,
                "declares_ai": True,
            }
        )
    return out


def _watermarks(item: Any, image: Image.Image | None) -> dict[str, Any]:
    from . import watermark
    from .data.dataset import ImageDecodeError, load_image

    try:
        pixels = load_image(item if isinstance(item, Image.Image) or image is None else image)
    except ImageDecodeError as exc:
        return {"checked": False, "reason": str(exc)}
    return watermark.read(pixels)


def declared_basis(provenance: dict[str, Any] | None) -> str | None:
    """Which declaration of generative AI the file holds, strongest first, or None:
    "declared (c2pa)", "declared (watermark)", "declared (xmp)", "declared (parameters)",
    "declared (exif)"."""
    if not provenance:
        return None
    xmp = provenance.get("xmp") or {}
    exif = provenance.get("exif") or {}
    checks = [
        ("c2pa", bool((provenance.get("c2pa") or {}).get("declares_ai"))),
        ("watermark", bool((provenance.get("watermark") or {}).get("found"))),
        ("xmp", bool(xmp.get("declares_ai"))),
        ("parameters", any(p.get("tool") for p in provenance.get("parameters") or [])),
        ("exif", ai_tool_in(" ".join(exif.get(k, "") for k in ("software", "make", "model")))),
        ("xmp", ai_tool_in(" ".join(xmp.get(k, "") for k in ("creator_tool", "ai_system")))),
    ]
    return next((f"declared ({name})" for name, hit in checks if hit), None)


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
