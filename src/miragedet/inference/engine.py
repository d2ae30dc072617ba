"""``--backend auto``: the fastest engine that gives the same scores on this machine, measured once
per machine + model + view + batch size and cached.

Candidates: PyTorch at ``--precision`` (``auto``: the hardware's, docs/performance.md) and ONNX
Runtime running the checkpoint's exported graph in fp32 (with ``--precision int8``: PyTorch's
dynamic int8 against ONNX Runtime's quantised graph). ONNX Runtime is a candidate only when its
scores on the check images (a fixed, seeded batch at the model's input size) are within
:data:`PARITY` of PyTorch fp32's (int8: the stated int8 tolerance); then both run the same
batch (``batch_size`` images) a few times, alternating, and the faster median wins. The graph
is exported once (into the checkpoint directory when it is writable, else the user cache), with
a message the first time; the choice
and its figures are kept in ``<cache>/engines.json`` under a key of everything that decides them
(CPU, library versions, checkpoint weights, view, batch size, precision, threads). Anything that
stops ONNX Runtime (not installed, an export that fails; on a GPU: no onnxruntime-gpu)
is a reason shown with the choice, never an error.

On a GPU no CPU engine is exported or timed: the race is run on the GPU, between PyTorch at
``--precision`` (``auto``: bf16 where the GPU has it), torch.compile replayed as CUDA graphs
(for jobs large enough, as below) and, when onnxruntime-gpu is installed, ONNX Runtime's CUDA
execution provider on the fp32 graph, under the same parity rule against PyTorch fp32 on that
GPU (TF32 off for the reference). Without a candidate to race (a small job, no onnxruntime-gpu)
PyTorch runs with nothing measured. ONNX Runtime's TensorRT provider is not raced: it builds
an engine per input shape, minutes for ViT-L/14, which one measurement cannot weigh.

torch.compile is the third candidate, for jobs of at least :data:`COMPILE_MIN_IMAGES` images
(``images``: detect's inputs, score-dataset's per worker, evaluate's passes; a server counts as
unbounded): measured with the others (its compile time too, and its scores against PyTorch fp32's
within the precision's tolerance), then chosen for a job only when the time it saves over that
job's images exceeds the compile time measured, which every new process pays again
(:mod:`miragedet.inference.compiled`).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from .user_cache import cache_dir, ours_to_write

#: The largest difference of p(class) allowed between an engine and PyTorch fp32.
PARITY = 1e-4
#: Timed calls per engine (after one warm-up call each), alternating between engines.
REPEATS = 3
#: Seconds the timed calls may take together (our choice: a first use that stays short for the
#: large backbones too, e.g. ViT-L/14 on a CPU at over a second per image). Beyond it the
#: engines are timed on a smaller batch, which the reason names.
MEASURE_BUDGET_S = 30.0
#: The smallest job for which torch.compile is measured at all (our choice, from the ViT-B/32
#: figures in docs/performance.md: a 42 s compile paid back by ~9 ms/image after ~4,500 images).
COMPILE_MIN_IMAGES = 5000
#: How torch.compile's figures are named in ``measured`` ("torch.compile fp32", ...).
COMPILED = "torch.compile"
#: ONNX Runtime's execution provider raced on a GPU (see the module).
GPU_PROVIDER = "CUDAExecutionProvider"


#: The race's batch on a GPU when the job names none (the Detector's own then comes from free
#: memory, up to 256): large enough that the timing is not dominated by kernel launches, small
#: enough for three networks on a modest GPU (our choice).
GPU_RACE_BATCH = 64


def gpu_providers(index: int = 0) -> list[Any]:
    """ONNX Runtime's providers for a race on GPU ``index``: the CUDA one on that GPU in full
    fp32 (its ``use_tf32`` is on by default; the parity reference is not), then the CPU one for
    operators it lacks (ONNX Runtime's fallback order; its "CUDA Execution Provider" page
    lists the options); [] where onnxruntime-gpu is not installed."""
    try:
        import onnxruntime
    except ImportError:
        return []
    if GPU_PROVIDER not in onnxruntime.get_available_providers():
        return []
    return [(GPU_PROVIDER, {"device_id": index, "use_tf32": 0}), "CPUExecutionProvider"]


def onnx_providers(device: str | None, notify: Callable[[str], None] | None,
                   strict: bool) -> list[Any] | None:  # fmt: skip
    """ONNX Runtime's providers for a job on ``device`` that asks for ``--backend onnx``: None
    (its CPU provider) off a GPU; on a GPU its CUDA provider there (:func:`gpu_providers`).
    Without onnxruntime-gpu, an error when the GPU was named (``strict``), else the CPU, said
    through ``notify``: never a silent CPU engine beside the GPU."""
    gpu = scoring_gpu(device)
    if gpu is None:
        return None
    providers = gpu_providers(gpu.index)
    if providers:
        return providers
    why = "ONNX Runtime's CUDA provider is not installed (pip install onnxruntime-gpu)"
    if strict:
        raise ValueError(f"--backend onnx on {device}: {why}; or --backend torch, --device cpu")
    if notify is not None:
        notify(f"--backend onnx: {why}: the graph runs on the CPU beside the GPU")
    return None


@dataclass
class EngineChoice:
    backend: str  # "torch", "onnx" or "compile"
    reason: str
    measured: dict[str, float] = field(default_factory=dict)  # ms per image, by engine
    parity: float | None = None  # ONNX Runtime vs PyTorch fp32, max abs difference
    cached: bool = False  # read from the cache, not measured now
    #: torch.compile's first call (s) when it was measured, and why it is not a candidate when
    #: it was tried and failed (either: it was tried, so a job of any size is not measured again).
    compile_s: float | None = None
    compile_note: str | None = None
    #: Why ONNX Runtime was out of a race that still ran (torch.compile against PyTorch).
    onnx_note: str | None = None
    #: Where the race ran: "cpu", or the GPU ("cuda:0"), whose ONNX Runtime runs on its CUDA
    #: provider.
    device: str = "cpu"

    @property
    def compile_tried(self) -> bool:
        return self.compile_s is not None or self.compile_note is not None

    def describe(self) -> str:
        figures = _figures(self.measured)
        return f"{self.backend}: {self.reason}" + (f" ({figures})" if figures else "")


def _figures(measured: dict[str, float] | None) -> str:
    return ", ".join(f"{k} {v:.1f} ms/image" for k, v in (measured or {}).items())


def engine_text(backend: str, reason: str, measured: dict[str, float] | None = None) -> str:
    """``backend (reason; figures)``: how a command's header names the engine it runs."""
    figures = _figures(measured)
    return f"{backend} ({reason}{'; ' + figures if figures else ''})"


def _plain(view: Any) -> Any:
    """A view as JSON can hold it (a View dataclass as its fields)."""
    return asdict(view) if hasattr(view, "__dataclass_fields__") else view


def _weights_digest(directory: Path) -> str:
    from ..model.checkpoint import CONFIG_NAME, WEIGHTS_NAME

    digest = hashlib.sha256()
    for name in (WEIGHTS_NAME, CONFIG_NAME):
        path = directory / name
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def cache_key(directory: Path, view: Any, batch_size: int, precision: str, gpu: Any = None) -> str:
    """What decides the choice: this machine (its GPU when ``gpu`` scores), the libraries, the
    checkpoint, view, batch size, precision and the threads available."""
    import torch

    from .threads import available_cpus

    try:
        import onnxruntime

        ort_version = onnxruntime.__version__
    except ImportError:
        ort_version = None
    parts = {
        "cpu": platform.processor() or platform.machine(),
        "capability": torch.backends.cpu.get_cpu_capability(),
        "cpus": available_cpus().count,
        "torch": torch.__version__,
        "onnxruntime": ort_version,
        "weights": _weights_digest(directory),
        "view": _plain(view),
        "batch_size": batch_size,
        "precision": precision,
    }
    if gpu is not None:
        parts["gpu"] = [torch.cuda.get_device_name(gpu), torch.version.cuda]
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _read_cache(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _write_cache(path: Path, key: str, choice: EngineChoice, about: dict[str, Any]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        entries = _read_cache(path)
        entries[key] = {k: v for k, v in asdict(choice).items() if k != "cached"}
        entries[key]["about"] = about  # what it was measured for (doctor lists these)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(entries, indent=1))
        os.replace(tmp, path)
    except OSError:
        pass  # an unwritable cache: measured again next time


def onnx_graph(directory: Path, notify: Callable[[str], None] | None = None) -> Path:
    """The checkpoint's ONNX graph: its model.onnx, else one exported now into the checkpoint
    directory (or, read-only, into the user cache), torch.onnx's own messages kept quiet."""
    from .onnx import ONNX_NAME, export_checkpoint

    existing = directory / ONNX_NAME
    if existing.is_file():
        return existing
    cached = cache_dir() / "onnx" / _weights_digest(directory) / ONNX_NAME
    if cached.is_file():
        return cached
    target = existing if ours_to_write(directory) else cached
    if notify is not None:
        notify(f"exporting the ONNX graph once, to {target} (for --backend auto)")
    target.parent.mkdir(parents=True, exist_ok=True)
    export_checkpoint(directory, target if target != existing else None)  # quietly
    return target


def _check_pixels(size: int, n: int) -> Any:
    import torch

    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(0)) * 4 - 2


def choose(
    directory: str | os.PathLike,
    view: Any = None,
    batch_size: int = 32,
    precision: str = "auto",
    device: str | None = None,
    notify: Callable[[str], None] | None = None,
    measure_batch: int | None = None,
    images: float = 0,
) -> EngineChoice:
    """The engine ``--backend auto`` runs for this checkpoint here, for a job of ``images``
    images (``math.inf``: a server; see the module)."""
    from .pipeline import CPU_BATCH

    directory = Path(directory)
    gpu = scoring_gpu(device)
    batch_size = batch_size or (CPU_BATCH if gpu is None else GPU_RACE_BATCH)  # None: a default
    on_gpu = "a GPU scores: no CPU engine is exported or timed"
    if precision not in ("auto", "fp32", "int8") and gpu is None:
        return EngineChoice("torch", f"--precision {precision} runs on PyTorch only")
    if precision == "int8" and gpu is not None:
        return EngineChoice("torch", f"{on_gpu}; --precision int8 is a CPU path")
    model_config = json.loads((directory / "config.json").read_text()).get("model", {})
    for part, what in (("open_set", "open-set test"), ("temporal", "temporal head")):
        if model_config.get(part):
            why = f"the checkpoint's {what} runs on PyTorch only"
            return EngineChoice("torch", f"{on_gpu}; {why}" if gpu is not None else why)
    with_compile = images >= COMPILE_MIN_IMAGES and precision != "int8"
    providers = None
    if gpu is not None:
        providers = gpu_providers(gpu.index or 0)
        no_onnx = None if providers else "onnxruntime-gpu is not installed"
        if providers and precision not in ("auto", "fp32"):
            providers, no_onnx = [], f"--precision {precision} runs on PyTorch only"
        if not providers and not with_compile:
            return EngineChoice("torch", f"{on_gpu}; PyTorch: nothing to race it against for "
                                f"{images:,.0f} images (torch.compile is weighed for "
                                f"{COMPILE_MIN_IMAGES:,}+; ONNX Runtime's CUDA provider: "
                                f"{no_onnx})")  # fmt: skip
    else:
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            no_onnx = "onnxruntime is not installed (pip install 'miragedet[onnx]')"
            if not with_compile:
                return EngineChoice("torch", no_onnx)
        else:
            no_onnx = None
    store = cache_dir() / "engines.json"
    key = cache_key(directory, view, batch_size, precision, gpu)
    entry = _read_cache(store).get(key)
    choice = None
    if entry:
        choice = EngineChoice(**{k: v for k, v in entry.items() if k != "about"}, cached=True)
    if choice is None or (with_compile and not choice.compile_tried):
        choice = _measure(directory, view, batch_size, precision, notify, measure_batch,
                          with_compile, no_onnx, gpu, providers)  # fmt: skip
        if gpu is not None:  # the race's networks are gone: their memory back for the job's
            import torch

            torch.cuda.empty_cache()
        about = {"checkpoint": str(directory), "batch_size": batch_size, "precision": precision,
                 "view": _plain(view), "device": str(gpu or "cpu")}  # fmt: skip
        _write_cache(store, key, choice, about)
    return weigh_compile(choice, images)


def scoring_gpu(device: str | None) -> Any:
    """The GPU a job on ``device`` scores on (``auto``/None: the first CUDA GPU when there is
    one), or None for a CPU job."""
    import torch

    if device is None or str(device) == "auto":
        return torch.device("cuda", 0) if torch.cuda.is_available() else None
    device = torch.device(device)
    if device.type != "cuda":  # the CPU (or a device only PyTorch runs: no race there either)
        return None
    return torch.device("cuda", device.index or 0)


def graph_on_choice(
    directory: Path, choice: EngineChoice, notify: Callable[[str], None] | None, precision: str
) -> tuple[Any, EngineChoice]:
    """For an ``auto`` choice of ONNX Runtime: the checkpoint's graph on it (the graph may live
    in the user cache), or None and the choice turned to PyTorch with the reason when the graph
    does not load now (e.g. damaged since it was measured)."""
    from ..model.checkpoint import read_config
    from .onnx import OnnxNetwork

    providers = None if choice.device == "cpu" else gpu_providers(scoring_gpu(choice.device).index)
    try:
        graph = onnx_graph(directory, notify)
        return OnnxNetwork(graph, read_config(directory), precision, providers), choice
    except Exception as exc:
        reason = f"ONNX Runtime could not run the graph now ({type(exc).__name__}: {exc})"
        return None, replace(choice, backend="torch", reason=reason[:300])


def weigh_compile(choice: EngineChoice, images: float) -> EngineChoice:
    """``choice`` turned to torch.compile when its measured gain over ``images`` images exceeds
    its measured compile time, else as it is (with the comparison named when it was made)."""
    name = next((k for k in choice.measured if k.startswith(COMPILED)), None)
    if name is None or choice.compile_s is None or images < COMPILE_MIN_IMAGES:
        return choice
    others = [v for k, v in choice.measured.items() if k != name]
    gain = min(others) - choice.measured[name]  # ms per image, over the fastest other engine
    saved = gain * images / 1000
    job = "a server" if images == float("inf") else f"{images:,.0f} images"
    if gain > 0 and saved > choice.compile_s:
        won = "" if images == float("inf") else f" ({saved:.0f} s over {job})"
        reason = (f"fastest here for {job}: torch.compile saves {gain:.2g} ms/image{won}, "
                  f"more than its {choice.compile_s:.0f} s compile")  # fmt: skip
        reason += f"; {choice.onnx_note}" if choice.onnx_note else ""
        return replace(choice, backend="compile", reason=reason)
    note = f"torch.compile not worth its {choice.compile_s:.0f} s compile for {job}"
    return replace(choice, reason=f"{choice.reason}; {note}")


def measured_here() -> list[dict[str, Any]]:
    """The choices cached on this machine, each with what it was measured for (``about``)."""
    return list(_read_cache(cache_dir() / "engines.json").values())


def _measure(
    directory: Path,
    view: Any,
    batch_size: int,
    precision: str,
    notify: Callable[[str], None] | None,
    measure_batch: int | None,
    with_compile: bool = False,
    no_onnx: str | None = None,
    gpu: Any = None,
    providers: list[str] | None = None,
) -> EngineChoice:
    """Time the candidates (see the module) on the CPU, or on ``gpu`` with ONNX Runtime on
    ``providers``; ``no_onnx``: why ONNX Runtime is out already."""
    import numpy as np

    from .onnx import OnnxNetwork
    from .precision import INT8_TOLERANCE, TOLERANCE

    graph = None
    if no_onnx is None:
        try:
            graph = onnx_graph(directory, notify)
        except Exception as exc:  # an export that fails for this model: the reason, shown
            no_onnx = f"the ONNX export failed ({type(exc).__name__}: {exc})"[:300]
    where = "cpu" if gpu is None else str(gpu)
    if no_onnx is not None and not with_compile:
        return EngineChoice("torch", no_onnx, device=where)
    if notify is not None:
        names = (
            ["PyTorch"] + ["ONNX Runtime"] * (graph is not None) + ["torch.compile"] * with_compile
        )
        also = " (torch.compile: for a job this size)" if with_compile else ""
        here = "this machine" if gpu is None else "this GPU"
        notify(f"measuring {' and '.join(names)} once on {here}{also} (--backend auto)")
    reference, candidate = _torch_networks(directory, precision, gpu)
    onnx = None
    if graph is not None:
        config = json.loads((directory / "config.json").read_text())
        try:
            network = OnnxNetwork(graph, config, "int8" if precision == "int8" else "fp32",
                                  providers)  # fmt: skip
        except Exception as exc:  # e.g. the quantiser failing on this graph
            no_onnx = f"ONNX Runtime could not load the graph ({exc})"[:300]
        else:
            onnx = _Network(network, network.precision)
            if gpu is not None and network.device.type != "cuda":  # its CUDA provider failed
                no_onnx, onnx = "ONNX Runtime's CUDA provider did not load here", None
    size = reference.model.backbone.preprocess.image_size
    check = _check_pixels(size, 8).to(gpu or "cpu")
    if gpu is not None:  # CUDA's first calls (kernels, cuBLAS) are not the forward's time
        reference.forward_tensors(check, exact=True)
    start = time.perf_counter()
    expected = reference.forward_tensors(check, exact=True)
    per_image = (time.perf_counter() - start) / len(check)  # PyTorch fp32: the slowest, usually
    parity = None
    if onnx is not None:
        parity = float(np.abs(onnx.forward_tensors(check) - expected).max())
        tolerance = INT8_TOLERANCE if precision == "int8" else PARITY  # int8: the stated one
        if not parity <= tolerance:
            no_onnx = (f"ONNX Runtime differs from PyTorch fp32 by {parity:.1e} "
                       f"(more than {tolerance:g})")  # fmt: skip
            onnx = None
    if onnx is None and not with_compile:
        return EngineChoice("torch", no_onnx or "", parity=parity, device=where)
    n = measure_batch or batch_size
    calls = (REPEATS + 1) * (2 + with_compile)  # a warm-up and REPEATS timed calls, each
    n = max(1, min(n, int(MEASURE_BUDGET_S / max(per_image * calls, 1e-9))))
    pixels = _check_pixels(size, n).to(gpu or "cpu")
    engines: dict[str, Any] = {f"torch {candidate.precision}": candidate}
    if onnx is not None:
        engines[f"onnx {onnx.precision}"] = onnx
    compile_s = compile_note = None
    if with_compile:
        import torch

        from . import compiled

        # fp32 on a GPU runs its matmuls in TF32 when the job does (model/device.enable_tf32)
        tf32 = gpu is not None and torch.backends.cuda.matmul.allow_tf32
        tolerance = PARITY if candidate.precision == "fp32" and not tf32 else TOLERANCE
        try:
            figures = compiled.measure(candidate.model, check, expected, pixels)
        except Exception as exc:  # no C++ compiler, an operator inductor cannot lower, ...
            compile_note = f"torch.compile failed ({type(exc).__name__}: {exc})"[:300]
        else:
            compile_s = figures.compile_s
            if figures.parity > tolerance:
                compile_note = f"torch.compile differs from PyTorch fp32 by {figures.parity:.1e}"
            else:
                engines[f"{COMPILED} {candidate.precision}"] = _Network(
                    figures.forward, candidate.precision
                )
    if len(engines) == 1:  # nothing to race
        reason = "; ".join(r for r in (no_onnx, compile_note) if r)
        return EngineChoice("torch", reason, parity=parity, compile_s=compile_s,
                            compile_note=compile_note, device=where)  # fmt: skip
    for engine in engines.values():
        engine.forward_tensors(pixels)  # warm-up
    times: dict[str, list[float]] = {name: [] for name in engines}
    for _ in range(REPEATS):  # alternating: a busy stretch of the machine hits all alike
        for name, engine in engines.items():
            start = time.perf_counter()
            engine.forward_tensors(pixels)
            times[name].append(1000 * (time.perf_counter() - start) / n)
    measured = {name: round(float(np.median(t)), 3) for name, t in times.items()}
    fastest = min((k for k in measured if not k.startswith(COMPILED)), key=measured.get)
    backend = "onnx" if fastest.startswith("onnx") else "torch"
    reason = f"fastest {'here' if gpu is None else 'on this GPU'}, batch {n}"
    if backend == "onnx":
        on = "" if gpu is None else " (CUDA provider)"
        reason += f"; ONNX Runtime{on} {onnx.precision} within {parity:.1e} of PyTorch fp32"
    if no_onnx:
        reason += f"; {no_onnx}"
    return EngineChoice(backend, reason, measured, parity, compile_s=compile_s,
                        compile_note=compile_note, onnx_note=no_onnx, device=where)  # fmt: skip


class _Network:
    """A network (or a compiled forward) timed and compared like the others:
    ``forward_tensors`` -> (n, C) numpy."""

    def __init__(self, model: Any, precision: str) -> None:
        self.model, self.precision = model, precision

    def forward_tensors(self, pixels: Any, exact: bool = False) -> Any:
        """(n, C) probabilities, copied to the host (which waits for a GPU's work); ``exact``:
        fp32 matmuls in full fp32 on a GPU (TF32 off), for the reference."""
        import torch

        with torch.inference_mode(), _full_fp32(exact and pixels.is_cuda):
            return self.model(pixels).probs.float().cpu().numpy()


@contextmanager
def _full_fp32(on: bool) -> Iterator[None]:
    """TF32 off for fp32 matmuls while ``on`` (PyTorch fp32 is the parity reference)."""
    import torch

    if not on:
        yield
        return
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


def _torch_networks(directory: Path, precision: str, gpu: Any = None) -> tuple[_Network, _Network]:
    """The checkpoint on PyTorch in fp32 (the reference) and in ``precision`` as resolved for
    the device (the candidate; the same network when that is fp32), on the CPU or ``gpu``."""
    import copy

    from ..model.mirage import load_pretrained
    from .precision import apply, resolve
    from .threads import configure_torch

    configure_torch()  # threads for the CPUs this process may use, as a Detector runs
    device = gpu or "cpu"
    model = load_pretrained(directory, device=device).eval()
    reference = _Network(model, "fp32")
    chosen = resolve(precision, device).precision
    if chosen == "fp32":
        return reference, reference
    return reference, _Network(apply(copy.deepcopy(model), chosen).eval(), chosen)
