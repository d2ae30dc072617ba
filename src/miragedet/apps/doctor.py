"""`miragedet doctor`: what this machine can do for miragedet, and the line that fixes the rest.

Each check is a :class:`Check` (name, ok, what was found, the fix); ``required`` checks decide the
exit status (the main job can run: torch works and a backbone source is usable). Nothing is
downloaded; the hub is only asked whether it answers (one HEAD request, 3 s), and not at all when
``HF_HUB_OFFLINE=1``.
"""

from __future__ import annotations

import importlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

DEFAULT_BACKBONE = "openai/clip-vit-large-patch14"


@dataclass
class Check:
    group: str
    name: str
    ok: bool
    found: str
    fix: str = ""
    required: bool = False


def _module(name: str) -> tuple[bool, str]:
    try:
        module = importlib.import_module(name)
    except ImportError as exc:
        return False, f"not installed ({exc.__class__.__name__})"
    except Exception as exc:  # installed but broken (a missing system library, say)
        return False, f"fails to import: {type(exc).__name__}: {str(exc)[:80]}"
    return True, getattr(module, "__version__", "installed")


def _hub_reachable() -> tuple[bool | None, str]:
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return None, "not asked (HF_HUB_OFFLINE=1)"
    import urllib.request

    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    try:
        urllib.request.urlopen(urllib.request.Request(endpoint, method="HEAD"), timeout=3)
    except Exception as exc:
        return False, f"{endpoint} unreachable ({type(exc).__name__})"
    return True, f"{endpoint} answers"


def cached_backbones() -> list[str]:
    """CLIP repositories in the Hugging Face cache of this machine."""
    try:
        from huggingface_hub import scan_cache_dir

        info = scan_cache_dir()
    except Exception:
        return []
    return sorted(r.repo_id for r in info.repos if "clip" in r.repo_id.lower())


def backbone_check(source: str) -> Check:
    """Whether ``source`` (hub id, local folder or random:NAME) can be loaded here, offline."""
    fix = (
        f"on a machine with internet: huggingface-cli download {DEFAULT_BACKBONE} --local-dir "
        "./clip, copy ./clip here and pass --backbone ./clip"
    )
    if source.startswith("random:") or source == "tiny":
        return Check("backbone", source, True, "random weights (tests and demos only)")
    path = Path(source).expanduser()
    if path.exists():
        ok = (path / "config.json").is_file()
        found = "a local folder with config.json" if ok else "a folder without config.json"
        return Check("backbone", source, ok, found, "" if ok else fix, required=True)
    if source in cached_backbones():
        return Check("backbone", source, True, "in the Hugging Face cache", required=True)
    reachable, how = _hub_reachable()
    if reachable:
        return Check("backbone", source, True, f"not cached; downloadable ({how})", required=True)
    return Check("backbone", source, False, f"not cached and {how}", fix, required=True)


def engine_check(model: str | None = None) -> Check:
    """The default engine: for ``model``, the choice (measured now if never before); else the
    choices measured on this machine so far."""
    from ..inference.detector_config import BACKEND_ENV, default_backend
    from ..inference.engine import choose, measured_here
    from ..inference.user_cache import cache_dir

    backend = default_backend()
    source = f"${BACKEND_ENV}" if backend != "auto" else "default"
    if model is not None:
        from ..model.checkpoint import resolve

        try:
            choice = choose(resolve(model))
        except (OSError, ValueError) as exc:
            return Check("engine", f"--backend auto for {model}", False, str(exc), "")
        found = choice.describe() + (" (measured before)" if choice.cached else " (measured now)")
        return Check("engine", f"--backend auto for {model}", True, found)
    entries = measured_here()
    latest = "; ".join(
        f"{Path(e['about']['checkpoint']).name}: {e['backend']}"
        for e in entries[-3:]
        if "about" in e
    )
    found = (
        f"--backend {backend} ({source}); {len(entries)} choice(s) measured on this machine in "
        f"{cache_dir() / 'engines.json'}" + (f", latest {latest}" if latest else "")
    )
    return Check("engine", "engine", True, found, "miragedet doctor -m CHECKPOINT measures one")


def run_checks(backbone: str = DEFAULT_BACKBONE, model: str | None = None) -> list[Check]:
    import torch

    from ..data import formats
    from ..inference.precision import cpu_native, resolve

    build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU build"
    checks = [Check("torch", "PyTorch", True, f"{torch.__version__} ({build})", required=True)]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            name = torch.cuda.get_device_name(i)
            bf16 = torch.cuda.is_bf16_supported()
            checks.append(
                Check("torch", f"cuda:{i}", True, f"{name}, bf16 {'yes' if bf16 else 'no'}")
            )
    else:
        checks.append(
            Check(
                "torch",
                "GPU",
                False,
                "none visible: training runs on the CPU (slow; README 'Getting a real detector')",
                "a machine with an NVIDIA GPU and a CUDA build of torch",
            )
        )
    capability = torch.backends.cpu.get_cpu_capability()
    native = cpu_native("bf16")
    checks.append(
        Check(
            "torch",
            "CPU",
            True,
            f"{capability}, native bf16 {'yes' if native else 'no'}: --precision auto runs "
            f"{resolve('auto', 'cpu').precision} here",
        )
    )
    from ..inference.threads import available_cpus, configure_torch, decode_threads

    cpus = available_cpus()
    checks.append(
        Check(
            "torch",
            "threads",
            True,
            f"{cpus.describe()}: {configure_torch(cpus)} intra-op threads, "
            f"{decode_threads(cpus)} decode threads by default",
        )
    )
    checks.append(engine_check(model))
    checks.append(backbone_check(backbone))
    cached = cached_backbones()
    checks.append(
        Check(
            "backbone",
            "Hugging Face cache",
            bool(cached),
            ", ".join(cached) if cached else "no CLIP model cached",
            "" if cached else f"huggingface-cli download {DEFAULT_BACKBONE}",
        )
    )
    available = formats.available()
    for fmt in formats.FORMATS:
        missing = formats.missing_decoder(fmt.name)
        checks.append(
            Check(
                "formats",
                fmt.title,
                available.get(fmt.name, True),
                fmt.library if missing is None else missing.split(":")[0],
                (missing.split(": ", 1)[1] if missing and ": " in missing else missing) or "",
            )
        )
    optional = [
        ("c2pa", "C2PA provenance", "pip install c2pa-python"),
        ("defusedxml", "XMP provenance", "pip install defusedxml"),
        ("imwatermark", "invisible watermarks", "pip install 'miragedet[watermark]'"),
        ("onnxruntime", "ONNX Runtime backend", "pip install 'miragedet[onnx]'"),
        ("ray", "score-dataset on Ray", "pip install 'miragedet[ray]'"),
        ("art", "evaluate --attack, train --adv-train", "pip install 'miragedet[attacks]'"),
        ("playwright", "web page test driver", "pip install playwright"),
    ]
    for module, name, fix in optional:
        ok, found = _module(module)
        checks.append(Check("optional", name, ok, found, "" if ok else fix))
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    checks.append(
        Check(
            "optional",
            "Chromium (web page test)",
            bool(chromium),
            chromium or "not found",
            "" if chromium else "bash scripts/setup-browser.sh (Debian's chromium)",
        )
    )
    return checks


def can_run(checks: list[Check]) -> bool:
    return all(c.ok for c in checks if c.required)
