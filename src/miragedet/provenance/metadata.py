"""What EXIF, XMP and IPTC fields say of an image's origin: camera, software, a generative tool
named, the IPTC digital source type."""

from __future__ import annotations

import contextlib
import re
from typing import Any

from PIL import Image

from . import parameters

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


_AI_WORDS = re.compile(
    r"(?<![\w])(" + "|".join(re.escape(w) for w in AI_SOFTWARE) + r")(?![\w])", re.IGNORECASE
)


def ai_tool_in(text: str) -> str | None:
    """The generative tool named in ``text`` as a whole word ("Imagenomic" is not "imagen",
    "Influx" is not "flux"), or None."""
    match = _AI_WORDS.search(text)
    return match.group(1) if match else None


def raw_exif(image: Image.Image) -> dict[int, Any]:
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
    :mod:`miragedet.provenance.parameters`, never shown raw."""
    raw = raw_exif(image) if raw is None else raw
    out = {}
    for tag, name in _EXIF_TAGS.items():
        value = raw.get(tag)
        if value:
            text = str(value).strip("\x00 ").strip()
            if text and not parameters.is_blob(text):
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
    return parse_xmp(image.info.get("xmp") or image.info.get("XML:com.adobe.xmp"))


def parse_xmp(packet: bytes | str | None) -> dict[str, Any]:
    """:func:`read_xmp` of a packet found elsewhere (a video's ``uuid`` or ``XMP_`` box)."""
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
