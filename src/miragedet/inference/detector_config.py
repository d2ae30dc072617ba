"""DetectorConfig: how a detector scores, the one source of detect's, score-dataset's and serve's
options, of the server's detector settings and of the Python API's ``load_detector``.

Each field carries its help text and the surfaces it applies to in its ``metadata``; the
command line builds its options from them (:mod:`miragedet.apps.cli.options`, the way
transformers' ``HfArgumentParser`` builds a parser from a dataclass), so a field added here
reaches every command it applies to without editing them.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

BACKENDS = ("auto", "torch", "onnx", "compile")
#: Names the engine when a caller gives none (a fleet's pin: ``MIRAGEDET_BACKEND=torch``).
BACKEND_ENV = "MIRAGEDET_BACKEND"


def default_backend() -> str:
    """``$MIRAGEDET_BACKEND`` when set, else ``auto``."""
    return os.environ.get(BACKEND_ENV) or "auto"


def resolve_backend(backend: str | None) -> str:
    """``backend``, else ``$MIRAGEDET_BACKEND``, else ``auto``; one of :data:`BACKENDS`."""
    backend = backend or default_backend()
    if backend not in BACKENDS:
        given = "" if backend != os.environ.get(BACKEND_ENV) else f" (from ${BACKEND_ENV})"
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, not {backend!r}{given}")
    return backend


#: The surfaces a field may apply to.
DETECT, SCORE_DATASET, SERVE = "detect", "score-dataset", "serve"
EVERYWHERE = frozenset({DETECT, SCORE_DATASET, SERVE})
#: Per-request choices on the server (query parameters), not its settings.
NOT_SERVED = frozenset({DETECT, SCORE_DATASET})


def option(default: Any, help: str, surfaces: frozenset[str] = EVERYWHERE, **extra: Any) -> Any:
    """A config field with its command-line help and the surfaces it applies to (``extra``:
    ``cli_type`` when the Python type is wider than what a command line gives, ``aliases`` per
    surface): what :mod:`miragedet.apps.cli.options` reads, for this config and TrainConfig."""
    return field(default=default, metadata={"help": help, "surfaces": surfaces, **extra})


def fields_for(config_type: type, surface: str) -> list[dataclasses.Field]:
    """The fields of a config dataclass that apply to ``surface``, in order."""
    return [f for f in fields(config_type) if surface in f.metadata.get("surfaces", ())]


@dataclass
class DetectorConfig:
    """How a detector scores. ``None`` means "the checkpoint's or the machine's default", as
    each field says; every default is the command line's default."""

    threshold: float | None = option(
        None, "p(fake) at which an image is labelled fake. Default: the checkpoint's threshold."
    )
    batch_size: int | None = option(
        None,
        "Images per forward. Default: 32 on a CPU; on a GPU the largest that fits half its "
        "free memory (up to 256). A GPU out-of-memory error halves it and goes on.",
        aliases={SERVE: ("--max-batch",)},  # serve's name before 0.2
    )
    device: str = option(
        "auto",
        "auto (a CUDA GPU when one is present, else the CPU), cpu, cuda or cuda:N. On a GPU, "
        "fp32 matmuls use TF32 ($MIRAGEDET_TF32=0 turns that off).",
    )
    precision: str = option(
        "auto",
        "auto (bf16 where the hardware computes it natively, else fp32), fp32, bf16, fp16, "
        "int8 (CPU).",
    )
    backend: str | None = option(
        None,
        "auto (default, or $MIRAGEDET_BACKEND): the fastest engine that gives the same scores "
        "on this machine, measured once and cached (docs/performance.md); torch; onnx (the "
        "checkpoint's model.onnx on ONNX Runtime, see `miragedet export`); or compile (PyTorch "
        "through torch.compile: the first batch compiles, for tens of seconds).",
    )
    view: Any = option(  # noqa: RUF009 (a field(): option returns dataclasses.field)
        None,
        "resize (CLIP's, the paper's), crop (native-resolution centre crop) or tiles "
        "(native-resolution tiles covering the image; a where-map per image). Default: the "
        "checkpoint's (tiles for one trained with --view crop). See docs/views.md.",
        cli_type=str | None,  # Python also takes a View or a dict of its options
    )
    max_tiles: int | None = option(
        None, "With --view tiles: at most this many per image (thinned evenly). Default 16."
    )
    aggregate: str | None = option(
        None,
        "With --view tiles: top-k (default: the most suspicious quarter of the tiles), "
        "mean-logit (every tile) or max (the most suspicious tile). See docs/views.md.",
    )
    frames: int | None = option(
        None, "Videos and animated images: frames scored per clip, evenly spread. Default 16."
    )
    fps: float | None = option(
        None, "Videos: sample this many frames per second of the clip instead (at most 256)."
    )
    max_seconds: float | None = option(
        None, "Videos: only the first this many seconds are sampled."
    )
    provenance: bool = option(
        True,
        "Also read C2PA, XMP, generator parameters and EXIF; a declaration of generative AI "
        "decides the verdict (basis column).",
    )
    trust_anchors: str | os.PathLike | None = option(  # noqa: RUF009 (as above)
        None,
        "PEM file of C2PA signers you trust: their valid camera-capture claims may overrule a "
        "'fake' pixel label.",
        cli_type=Path | None,
    )
    watermarks: bool = option(
        False, "Also look for generators' invisible watermarks (SDXL, SD 1.x; slower)."
    )
    stability: bool = option(
        False,
        "Also score re-deliveries (thumbnails, JPEG re-save, crop); label 'uncertain' when they "
        "disagree or the score is near the threshold.",
        surfaces=NOT_SERVED,
    )
    stability_variants: str | None = option(
        None,
        "With --stability: comma-separated re-deliveries. Default "
        "downscale:512,downscale:256,jpeg:75,crop:0.8.",
        surfaces=NOT_SERVED,
    )
    stability_margin: float | None = option(
        None, "With --stability: 'uncertain' this close to the threshold. Default 0.05.",
        surfaces=NOT_SERVED,
    )  # fmt: skip
    threads: int | None = option(
        None,
        "Decode threads. Default: the CPUs this process may use, 2 to 8 (up to 32 beside a GPU).",
    )
    exact_decode: bool = option(
        False, "Decode JPEGs at full size (default: reduced scale when far larger)."
    )

    # -- what the fields mean together ----------------------------------------------------------

    def replace(self, **overrides: Any) -> DetectorConfig:
        """A copy with ``overrides`` (field names; the pre-0.2 keyword names ``decode_threads``,
        ``draft`` and ``sampling`` still work for one release, with a DeprecationWarning)."""
        overrides = _renamed(overrides)
        unknown = sorted(set(overrides) - {f.name for f in fields(self)})
        if unknown:
            raise TypeError(
                f"unknown detector option(s) {', '.join(unknown)}; "
                f"the options are {', '.join(f.name for f in fields(self))}"
            )
        return dataclasses.replace(self, **overrides)

    def view_request(self) -> Any:
        """What :func:`miragedet.data.views.resolve` gets: a View, or the view options asked
        for (a missing kind: the checkpoint's), or None (the checkpoint's view)."""
        from ..data.views import View

        if isinstance(self.view, View):
            changes = {"max_tiles": self.max_tiles, "aggregate": self.aggregate}
            changes = {k: v for k, v in changes.items() if v is not None}
            return dataclasses.replace(self.view, **changes) if changes else self.view
        options = dict(self.view) if isinstance(self.view, dict) else {"kind": self.view}
        for name in ("max_tiles", "aggregate"):  # the separate options win over the dict's
            if getattr(self, name) is not None:
                options[name] = getattr(self, name)
        return options if any(v is not None for v in options.values()) else None

    def sampling(self, checkpoint_frames: int | None = None) -> Any:
        """The clip sampling (:class:`miragedet.data.video.Sampling`): the frames asked for, else
        a temporal head's own count (``checkpoint_frames``), else 16."""
        from ..data.video import DEFAULT_FRAMES, Sampling

        if isinstance(self.frames, Sampling):  # the pre-0.2 ``sampling=`` keyword
            return self.frames
        frames = self.frames or checkpoint_frames or DEFAULT_FRAMES
        return Sampling(frames=frames, fps=self.fps, max_seconds=self.max_seconds)

    def stability_check(self) -> Any:
        """The re-delivery check asked for (:class:`~miragedet.inference.stability.Stability`),
        or None."""
        if not self.stability:
            return None
        from .stability import Stability

        return Stability.parse(self.stability_variants, self.stability_margin)

    def trust_anchor_pem(self) -> str | None:
        """The trusted signers' PEM text (``trust_anchors`` may be a file or PEM text)."""
        if self.trust_anchors is None:
            return None
        text = os.fspath(self.trust_anchors)
        if "-----BEGIN" in text:
            return text
        from ..provenance.c2pa_manifest import load_trust_anchors

        return load_trust_anchors(Path(text))

    def check(self) -> None:
        """Refuse what cannot work before a model loads: a ValueError (or OSError for an
        unreadable trust-anchor file) that names the option."""
        from ..data.views import resolve

        resolve_backend(self.backend)
        resolve(self.view_request(), "resize")
        self.sampling()
        self.stability_check()
        self.trust_anchor_pem()
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError("batch size must be at least 1")
        if self.threads is not None and self.threads < 1:
            raise ValueError("threads must be at least 1")

    @classmethod
    def fields_for(cls, surface: str) -> list[dataclasses.Field]:
        """The fields that apply to ``surface`` (detect, score-dataset or serve), in order."""
        return fields_for(cls, surface)


#: Pre-0.2 keyword names: (new name, how the old value becomes the new one).
_OLD_NAMES = {
    "decode_threads": ("threads", lambda v: v),
    "draft": ("exact_decode", lambda v: not v),
    "sampling": ("frames", lambda v: v),  # a Sampling object, kept whole (see sampling())
}


def _renamed(overrides: dict[str, Any]) -> dict[str, Any]:
    out = dict(overrides)
    for old, (new, convert) in _OLD_NAMES.items():
        if old in out:
            warnings.warn(
                f"the detector option {old!r} is now {new!r}; {old!r} goes in the next release",
                DeprecationWarning,
                stacklevel=4,
            )
            value = out.pop(old)
            if value is not None:
                out[new] = convert(value)
    return out
