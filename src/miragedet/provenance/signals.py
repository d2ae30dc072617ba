"""Provenance signals in one shape, and which declaration of generative AI a file holds."""

from __future__ import annotations

from typing import Any

from .metadata import ai_tool_in


def signals_of(
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


def declared_basis(provenance: dict[str, Any] | None) -> str | None:
    """Which declaration of generative AI the file holds, strongest first, or None:
    "declared (c2pa)", "declared (watermark)", "declared (xmp)", "declared (parameters)",
    "declared (exif)", "declared (container)" (a video's tags name a generative tool)."""
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
        ("container", ai_tool_in(" ".join((provenance.get("container") or {}).values()))),
    ]
    return next((f"declared ({name})" for name, hit in checks if hit), None)
