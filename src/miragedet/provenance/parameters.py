"""Generation parameters that image generators write into their files, parsed (never dumped).

Each reader follows one tool's own saving code:

- AUTOMATIC1111 / Forge (and Fooocus in its A1111-compatible mode): PNG text chunk
  ``parameters``; on JPEG/WebP the same text in EXIF UserComment. Written by ``modules/images.py``
  (save_image_with_geninfo); the text comes from ``modules/processing.py`` (create_infotext): the
  prompt, a ``Negative prompt: ...`` line, then one line ``Steps: 20, Sampler: ..., CFG scale: ...,
  Seed: ..., Size: ..., Model hash: ..., Model: ..., Version: ...``.
- ComfyUI: PNG text chunks ``prompt`` (the API graph as JSON: ``{node id: {"class_type",
  "inputs"}}``) and ``workflow`` (the UI graph); on WebP, EXIF Model (0x0110) holds
  ``prompt:{json}`` and Make (0x010F, then 0x010E...) ``workflow:{json}``. Written by
  ``comfy_api/latest/_ui.py`` (PNG metadata, animated WebP EXIF).
- Fooocus: PNG text ``parameters`` plus ``fooocus_scheme`` (``fooocus``: the parameters are a
  JSON object with ``base_model``, ``seed``, ``sampler``, ``steps``, ``version``; ``a1111``: A1111
  text). Written by its ``modules/private_logger.py`` with ``modules/meta_parser.py``.
- SwarmUI: PNG text ``parameters`` holding JSON ``{"sui_image_params": {"model", "seed",
  "steps", "sampler", "swarm_version", ...}}``.
- InvokeAI: PNG text ``invokeai_metadata`` (JSON: ``model`` {``name``, ``hash``}, ``seed``,
  ``steps``, ``scheduler``, ``positive_prompt``...) beside ``invokeai_graph``.
- NovelAI: PNG text ``Software`` = ``NovelAI``, ``Source`` (the model, e.g. "NovelAI Diffusion
  V4.5"), ``Description`` (the prompt) and ``Comment`` (JSON: ``steps``, ``sampler``, ``seed``,
  ``scale``...). Its older "stealth" metadata in the alpha channel's low bits is not read.
- Midjourney (web downloads): PNG text ``Description`` = the prompt and its ``--`` parameters
  followed by ``Job ID: <uuid>``, and ``Author`` = the user.

A value over :data:`MAX_TEXT` characters is not parsed (a 10 MB text chunk is a denial of service,
not metadata), and every reader is defensive: malformed JSON or odd types give no signal.
"""

from __future__ import annotations

import json
import re
from typing import Any

MAX_TEXT = 1_000_000
#: ComfyUI node types that load the generator's weights, and the input naming them.
_COMFY_LOADERS = {
    "ckpt_name": "checkpoint",
    "unet_name": "diffusion model",
    "model_name": "model",
    "lora_name": "LoRA",
}
_MODEL_FILES = (".safetensors", ".ckpt", ".gguf", ".pt", ".pth", ".bin")
_A1111_KEY = re.compile(r"(?:^|, )([A-Za-z][\w /-]*?): ")


def _json(text: Any) -> Any:
    if not isinstance(text, str) or len(text) > MAX_TEXT:
        return None
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return None


def _text(value: Any) -> str | None:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return value if isinstance(value, str) and len(value) <= MAX_TEXT else None


def parse_a1111(text: str) -> dict[str, Any] | None:
    """AUTOMATIC1111's infotext: the prompt lines, ``Negative prompt: ...``, then one line of
    ``Key: value`` pairs separated by ", " (values may be quoted)."""
    lines = text.strip().splitlines()
    if not lines or "Steps: " not in lines[-1]:
        return None
    settings = lines[-1]
    pairs: dict[str, str] = {}
    keys = list(_A1111_KEY.finditer(settings))
    for i, match in enumerate(keys):
        end = keys[i + 1].start() if i + 1 < len(keys) else len(settings)
        pairs[match.group(1)] = settings[match.end() : end].strip().strip('"')
    if "Steps" not in pairs:
        return None
    prompt = [line for line in lines[:-1] if not line.startswith("Negative prompt:")]
    version = pairs.get("Version", "")
    tool = "Fooocus" if "fooocus" in version.lower() else "AUTOMATIC1111/Forge"
    return {
        "tool": tool,
        "generator": pairs.get("Model")
        or (f"model hash {pairs['Model hash']}" if "Model hash" in pairs else None),
        "details": {
            k: pairs[k]
            for k in ("Model hash", "Sampler", "Steps", "CFG scale", "Seed", "Size", "Version")
            if k in pairs
        }
        | ({"prompt": " ".join(prompt)[:200]} if prompt else {}),
    }


def parse_comfy(prompt: Any, workflow: Any = None) -> dict[str, Any] | None:
    """ComfyUI's API graph (``{node id: {"class_type", "inputs"}}``): the model files its loader
    nodes name, the sampler settings of its sampler nodes. The UI ``workflow`` alone (no API
    graph) still names the tool."""
    graph = _json(prompt) if isinstance(prompt, str) else prompt
    ui = _json(workflow) if isinstance(workflow, str) else workflow
    if not isinstance(graph, dict) and not (isinstance(ui, dict) and "nodes" in ui):
        return None
    models: list[str] = []
    details: dict[str, Any] = {}
    for node in (graph or {}).values() if isinstance(graph, dict) else ():
        if not isinstance(node, dict) or not isinstance(node.get("inputs"), dict):
            continue
        inputs = node["inputs"]
        for key, what in _COMFY_LOADERS.items():
            if isinstance(inputs.get(key), str):
                models.append(inputs[key] if what == "checkpoint" else f"{inputs[key]} ({what})")
        if "sampler_name" in inputs and "sampler" not in details:
            for key, name in (("sampler_name", "sampler"), ("steps", "steps"), ("seed", "seed")):
                if isinstance(inputs.get(key), str | int | float):
                    details[name] = inputs[key]
            if isinstance(inputs.get("noise_seed"), int):
                details.setdefault("seed", inputs["noise_seed"])
    if not models and isinstance(ui, dict) and isinstance(ui.get("nodes"), list):
        for node in ui["nodes"]:  # the UI graph alone: loader nodes keep the file in a widget
            if not isinstance(node, dict) or "Loader" not in str(node.get("type", "")):
                continue
            values = node.get("widgets_values")
            first = values[0] if isinstance(values, list) and values else None
            if isinstance(first, str) and first.endswith(_MODEL_FILES):
                models.append(first)
    if not models and not details and not isinstance(ui, dict):
        return None
    return {
        "tool": "ComfyUI",
        "generator": ", ".join(dict.fromkeys(models)) or None,
        "details": details,
    }


def read(info: dict[str, Any], exif: dict[int, Any] | None = None) -> list[dict[str, Any]]:
    """Generator-parameter signals in an image's text chunks (``Image.info``) and EXIF (tag id ->
    value): each ``{"source": "parameters", "tool", "generator", "details", "field"}``."""
    found: list[dict[str, Any]] = []

    def add(result: dict[str, Any] | None, field: str) -> None:
        if result is not None:
            found.append({"source": "parameters", "field": field, **result})

    text = {k: t for k, v in info.items() if isinstance(k, str) and (t := _text(v)) is not None}
    if "prompt" in text or "workflow" in text:
        add(parse_comfy(text.get("prompt"), text.get("workflow")), "PNG text prompt/workflow")
    params = text.get("parameters")
    if params is not None:
        data = _json(params) if params.lstrip().startswith("{") else None
        if isinstance(data, dict) and isinstance(data.get("sui_image_params"), dict):
            fields = data["sui_image_params"]
            add(
                _tool("SwarmUI", fields.get("model"), fields, ("sampler", "steps", "seed")),
                "PNG text parameters",
            )
        elif isinstance(data, dict) and "fooocus_scheme" in text:
            lower = {str(k).lower().replace(" ", "_"): v for k, v in data.items()}
            add(
                _tool("Fooocus", lower.get("base_model"), lower, ("sampler", "steps", "seed")),
                "PNG text parameters (fooocus_scheme)",
            )
        else:
            add(parse_a1111(params), "PNG text parameters")
    invoke = _json(text.get("invokeai_metadata"))
    if isinstance(invoke, dict):
        model = invoke.get("model")
        name = model.get("name") if isinstance(model, dict) else model
        add(_tool("InvokeAI", name, invoke, ("scheduler", "steps", "seed")), "PNG text invokeai")
    if str(text.get("Software", "")).strip().lower() == "novelai":
        comment = _json(text.get("Comment"))
        fields = comment if isinstance(comment, dict) else {}
        add(
            _tool("NovelAI", text.get("Source"), fields, ("sampler", "steps", "seed")),
            "PNG text Software/Source/Comment",
        )
    description = text.get("Description", "")
    job = re.search(r"Job ID: ([0-9a-f-]{36})", description[:20_000])
    if job:
        version = re.search(r"--(v|niji) ([\d.]+)", description[:20_000])
        add(
            {
                "tool": "Midjourney",
                "generator": f"Midjourney {version.group(1)} {version.group(2)}"
                if version
                else "Midjourney",
                "details": {"job id": job.group(1)}
                | ({"author": text["Author"][:80]} if text.get("Author") else {}),
            },
            "PNG text Description",
        )
    if exif:
        # ComfyUI's WebP: Model = "prompt:{json}", Make (and downwards) = "workflow:{json}"
        blobs = {}
        for tag in (0x0110, 0x010F, 0x010E, 0x010D):
            value = _text(exif.get(tag))
            if value and ":" in value[:20]:
                key, _, rest = value.partition(":")
                blobs[key] = rest
        if "prompt" in blobs or "workflow" in blobs:
            add(parse_comfy(blobs.get("prompt"), blobs.get("workflow")), "EXIF Make/Model")
        comment = user_comment(exif.get(0x9286))  # UserComment: A1111 on JPEG/WebP
        if comment:
            add(parse_a1111(comment), "EXIF UserComment")
    return found


def _tool(tool: str, generator: Any, fields: dict, keys: tuple[str, ...]) -> dict[str, Any]:
    return {
        "tool": tool,
        "generator": generator[:200] if isinstance(generator, str) and generator else None,
        "details": {k: fields[k] for k in keys if isinstance(fields.get(k), str | int | float)},
    }


def user_comment(value: Any) -> str | None:
    """EXIF UserComment as text: an 8-byte character code (``UNICODE``: UTF-16, big-endian
    unless a byte-order mark or the text says otherwise; ``ASCII``; undefined) then the text
    (EXIF 2.32, 4.6.5, table 9)."""
    if isinstance(value, str):
        return value if len(value) <= MAX_TEXT else None
    if not isinstance(value, bytes) or len(value) > 2 * MAX_TEXT:
        return None
    code, body = value[:8], value[8:]
    if code.startswith(b"UNICODE"):
        if body[:2] in (b"\xff\xfe", b"\xfe\xff"):
            return body.decode("utf-16", "replace")
        little = body[1:2] == b"\0" and body[:1] != b"\0"
        return body.decode("utf-16-le" if little else "utf-16-be", "replace")
    return body.decode("utf-8", "replace").rstrip("\0 ")


def is_blob(value: str) -> bool:
    """An EXIF text field that holds a generator's JSON (ComfyUI's ``prompt:{...}``), not a name."""
    head = value[:40].lstrip()
    return head.startswith("{") or bool(re.match(r"^\w+:\s*[\[{]", head))
