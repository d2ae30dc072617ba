"""C2PA manifests (c2pa-python): whether one is present, valid and signed by a trusted signer,
and what it claims (AI generation, capture, the tools and actions)."""

from __future__ import annotations

import io
import json
import os
from typing import Any

from .metadata import AI_SOURCE_TYPES, IPTC_SOURCE_TYPES

_MIME = {
    "JPEG": "image/jpeg",
    "PNG": "image/png",
    "WEBP": "image/webp",
    "TIFF": "image/tiff",
    "GIF": "image/gif",
    "HEIF": "image/heif",
    "AVIF": "image/avif",
    "MP4": "video/mp4",
    "MOV": "video/quicktime",
    "M4V": "video/x-m4v",
    "AVI": "video/avi",
}


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
    data: bytes | Any, image_format: str | None, trust_anchors: str | None = None
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
        stream = io.BytesIO(data) if isinstance(data, bytes | bytearray) else data  # or a file
        reader = c2pa.Reader(mime, stream, context=_context(trust_anchors))
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
