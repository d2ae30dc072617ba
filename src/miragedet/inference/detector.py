"""A trained detector as a scorer: files, bytes, Pillow images or arrays in; verdicts out.

Errors are per item: an unreadable input becomes a :class:`Prediction` with ``error`` set, and the
rest of the batch is still scored.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import os
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from ..data.dataset import MAX_PIXELS
from ..data.video import Sampling, video_kind
from ..data.views import View
from ..model.mirage import MiraGe
from .detector_config import DetectorConfig, resolve_backend
from .onnx import OnnxNetwork
from .prediction import ImageInput, Prediction, describe, to_image

if TYPE_CHECKING:
    from .engine import EngineChoice

__all__ = ["Detector", "ImageInput", "Prediction", "describe", "load_detector", "to_image"]


class Detector:
    """Score images with a trained MiraGe checkpoint (scikit-learn-like ``predict`` API)."""

    #: PEM certificates of the C2PA signers the user trusts (``--trust-anchors``), used with
    #: ``provenance=True``: a valid capture claim by one of them may overrule a "fake" pixel label.
    trust_anchors: str | None = None
    #: How an image becomes model inputs (see :mod:`miragedet.data.views`); the constructor sets it.
    view: View = View()
    #: With ``provenance=True``, also look for the invisible watermarks open generators embed
    #: (:mod:`miragedet.provenance.watermark`; costs a full decode and tens of ms per megapixel).
    watermarks: bool = False
    #: Which frames of a video or animated image are scored (:class:`~miragedet.data.video.
    #: Sampling`: 16 evenly by default, ``fps``, guards).
    sampling: Sampling = Sampling()

    def __init__(
        self,
        model: MiraGe | OnnxNetwork,
        config: DetectorConfig | None = None,
        *,
        model_id: str | None = None,
        _owns_model: bool = False,
        **overrides: Any,
    ) -> None:
        """A detector for ``model`` (a MiraGe on PyTorch, or a checkpoint's graph on ONNX
        Runtime, :class:`~miragedet.inference.onnx.OnnxNetwork`) as ``config`` says
        (:class:`~miragedet.inference.detector_config.DetectorConfig`; ``overrides``: its
        fields, e.g. ``precision="fp32"``). :func:`load_detector` picks the engine for a
        checkpoint."""
        config = (config or DetectorConfig()).replace(**overrides)
        #: How this detector scores (threshold, view, provenance, ...): the options it was made
        #: with; ``provenance`` and ``stability`` are :meth:`score`'s defaults.
        self.config = config
        threshold, batch_size, device = config.threshold, config.batch_size, config.device
        decode_threads, draft, precision = config.threads, not config.exact_decode, config.precision
        view = config.view_request()
        self.trust_anchors = config.trust_anchor_pem()
        self.watermarks = config.watermarks
        from ..data.views import resolve as resolve_view
        from .precision import apply, resolve

        #: How an image becomes model inputs (:mod:`miragedet.data.views`): by default the view the
        #: checkpoint was trained with (resize; tiles for one trained on native crops).
        self.view = resolve_view(view, model.backbone.preprocess.view)
        temporal = getattr(model, "temporal", None)
        frames = model.config.temporal.get("frames") if temporal is not None else None
        self.sampling = config.sampling(frames)

        from ..model.device import enable_tf32, resolve_device

        if isinstance(model, OnnxNetwork):  # the graph's own precision, where its session runs
            if precision not in ("auto", model.precision):
                raise ValueError(f"this ONNX graph runs in {model.precision}, not {precision}")
            device, precision, reason = model.device, model.precision, model.precision_reason
        else:  # "auto" (or "cuda"...) as the commands say it; None: where the model already is
            device = resolve_device(device) if device is not None else model.clip.logit_scale.device
            choice = resolve(precision, device)
            precision, reason = choice.precision, choice.reason
            if precision != "fp32":  # a model handed in by the caller is copied, never changed
                model = apply(model if _owns_model else copy.deepcopy(model), precision)
        self.model = model.eval()
        self.device = device
        from .threads import configure_torch, decode_threads_for

        if self.device.type == "cpu":
            configure_torch()  # threads for the CPUs this process may use, not the host's
        #: "TF32 for fp32 matmuls" on GPUs that have it, when the network runs in fp32
        #: (:mod:`miragedet.model.device`; a process-wide torch setting).
        self.tf32 = enable_tf32(self.device) if precision == "fp32" else None
        self.model.to(self.device)
        self.threshold = float(model.threshold if threshold is None else threshold)
        self.preprocess = model.backbone.preprocess
        from .pipeline import default_batch_size, gpu_decoder_for

        #: Inputs per forward; None: 32 on a CPU, from the free memory on a GPU (a CUDA
        #: out-of-memory error halves it and goes on); ``batch_reason`` says which.
        self.batch_size, self.batch_reason = default_batch_size(self, batch_size)
        self.decode_threads = decode_threads or decode_threads_for(self.device)
        #: JPEGs decoded on the GPU in batches when one scores (``decode_reason`` says why not).
        self.gpu_decoder, self.decode_reason = gpu_decoder_for(self)
        self.draft = draft
        #: fp32, or the network in bf16/fp16 (bf16 on CPUs with AVX512-BF16/AMX, either on
        #: CUDA), as resolved from the requested one (default ``auto``: see
        #: :mod:`miragedet.inference.precision`); ``precision_reason`` says why.
        self.precision = precision
        self.precision_reason = reason
        self.classes = model.classes
        self.model_id = (
            model_id
            or getattr(model, "name", None)
            or (f"{model.config.method}@{model.backbone.source}")
        )
        #: The few-shot adaptations this checkpoint went through (docs/adapt.md), oldest first.
        self.lineage: list[dict[str, Any]] = getattr(model, "lineage", [])

    @classmethod
    def from_pretrained(
        cls, path_or_id: str | os.PathLike, config: DetectorConfig | None = None, **overrides: Any
    ) -> Detector:
        """:func:`load_detector`: a checkpoint (a folder written by ``miragedet train``, a
        training run's folder, a hub id) on the engine its ``backend`` picks (``auto``: the
        fastest that gives the same scores here), exactly as the commands load it."""
        return load_detector(path_or_id, config, detector_class=cls, **overrides)

    def info(self) -> dict[str, Any]:
        """What is being served: id, method, classes, threshold, backbone, preprocessing."""
        model = self.model
        return {
            "id": self.model_id,
            "method": model.config.method,
            "classes": self.classes,
            "threshold": self.threshold,
            "backbone": model.backbone.source,
            "backbone_description": model.backbone.describe(),
            "preprocess": self.preprocess.to_dict(),
            "precision": self.precision,
            "precision_reason": self.precision_reason,
            "view": asdict(self.view),
            "lineage": self.lineage,
            "video": {**asdict(self.sampling), "temporal_head": self.has_temporal},
            "threads": {"intra_op": torch.get_num_threads(), "decode": self.decode_threads},
            "device": str(self.device),
            "tf32": self.tf32 is not None,
            "batch_size": self.batch_size,
            "decode": self.decode_backend,
            "engine": self.engine_info(),
            "open_set": self.has_open_set,
        }

    #: With ``--backend auto``: the :class:`~miragedet.inference.engine.EngineChoice` made.
    engine: Any = None

    def engine_info(self) -> dict[str, Any]:
        """Which engine runs the network, and (``--backend auto``) why and its figures."""
        backend = getattr(self.model, "engine", "torch")
        from .compiled import CompiledForward

        if isinstance(self.model, CompiledForward):
            backend = "compile"
        if self.engine is None:
            return {"backend": backend, "reason": "as requested"}
        return {"backend": backend, "reason": self.engine.reason,
                "ms_per_image": self.engine.measured, "parity": self.engine.parity,
                "compile_s": self.engine.compile_s, "cached": self.engine.cached}  # fmt: skip

    def placement(self) -> str:
        """Where it scores, as the commands' headers say it: "on cuda:0 (NVIDIA H200, 139 GiB),
        TF32, batch 256 (from the GPU's free memory ...), JPEGs decoded on cuda:0 by ...";
        the batch when not as asked, the decoder on a GPU."""
        from ..model.device import describe

        parts = [f"on {describe(self.device)}"]
        if self.tf32:
            parts.append(self.tf32)
        if self.batch_reason != "as asked":
            parts.append(f"batch {self.batch_size} ({self.batch_reason})")
        if self.device.type == "cuda":
            parts.append(self.decode_reason)
        return ", ".join(parts)

    @property
    def decode_backend(self) -> str:
        """Which decoder reads the JPEGs: the GPU decoder's name, or "pillow (cpu)"."""
        decoder = getattr(self, "gpu_decoder", None)
        return decoder.name if decoder is not None else "pillow (cpu)"

    # -- core -----------------------------------------------------------------------------------

    @property
    def has_open_set(self) -> bool:
        """Whether the model tells unknown generators apart (resize view, PyTorch engine)."""
        return getattr(self.model, "open_set", None) is not None

    @property
    def draft_size(self) -> int | None:
        """JPEGs are decoded at 1/2, 1/4 or 1/8 scale when that still leaves at least twice
        the model's resize target (see docs/performance.md for speed and score tolerance).
        Never with the crop and tiles views: they need the native pixels."""
        if not self.draft or self.view.kind != "resize":
            return None
        return 2 * self.preprocess.resize_shortest

    @property
    def has_temporal(self) -> bool:
        """Whether clips get the checkpoint's temporal head (resize view, PyTorch engine)."""
        return getattr(self.model, "temporal", None) is not None and self.view.kind == "resize"

    @property
    def video_sampling(self) -> Sampling:
        """:attr:`sampling` with frames converted at :attr:`draft_size` (resize view), as
        JPEGs are drafted (docs/video.md)."""
        if self.sampling.draft_size is not None or self.draft_size is None:
            return self.sampling
        return dataclasses.replace(self.sampling, draft_size=self.draft_size)

    def _prepare(
        self,
        item: ImageInput,
        view: View | None = None,
        sampling: Sampling | None = None,
        max_pixels: int = MAX_PIXELS,
    ) -> Any:
        """A (3, S, S) tensor (resize view), the :class:`~miragedet.data.views.Tiles` of the crop
        and tiles views, or a clip's :class:`~miragedet.inference.videos.VideoInputs`; ``view``
        and ``sampling`` (None: the detector's) and ``max_pixels`` (a still image's decode limit)
        as one server request asks."""
        view = view or self.view
        if video_kind(item) is not None:
            from .videos import prepare_video

            return prepare_video(item, self.preprocess, view, sampling or self.video_sampling)
        draft = self.draft_size if view.kind == "resize" else None
        image = to_image(item, max_pixels, draft_size=draft)
        if view.kind == "resize":
            return self.preprocess(image)
        from ..data.views import inputs

        return inputs(image, self.preprocess, view)

    #: Told once when a CUDA out-of-memory error halves the batch (default: stderr).
    notify: Any = None

    @torch.inference_mode()
    def forward_tensors(self, pixels: torch.Tensor) -> np.ndarray:
        """Class probabilities (n, C) of an already preprocessed batch."""
        from .pipeline import in_parts

        def run(part: torch.Tensor) -> np.ndarray:
            return self.model(part.to(self.device)).probs.float().cpu().numpy()

        return np.concatenate(in_parts(run, pixels, self))

    @torch.inference_mode()
    def forward_open_set(self, pixels: torch.Tensor) -> tuple[np.ndarray, list[dict[str, Any]]]:
        """Class probabilities and each image's open-set outcome (models that have the test)."""
        from .pipeline import in_parts

        def run(part: torch.Tensor) -> tuple[np.ndarray, list[dict[str, Any]]]:
            out = self.model(part.to(self.device))
            threshold = float(out.distance_threshold)
            outcomes = [
                {"distance": float(d), "threshold": threshold, "unknown": bool(d > threshold)}
                for d in out.distance.float().cpu().tolist()
            ]
            return out.probs.float().cpu().numpy(), outcomes

        parts = in_parts(run, pixels, self)
        return np.concatenate([p for p, _ in parts]), [o for _, os in parts for o in os]

    @torch.inference_mode()
    def forward_embeds(self, pixels: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Class probabilities (n, C) and unit image embeddings (n, D) of a preprocessed batch."""
        from .pipeline import in_parts

        def run(part: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
            out = self.model(part.to(self.device))
            return out.probs.float().cpu().numpy(), out.image_embeds.float().cpu().numpy()

        parts = in_parts(run, pixels, self)
        return np.concatenate([p for p, _ in parts]), np.concatenate([e for _, e in parts])

    @torch.inference_mode()
    def temporal_probs(self, embeds: np.ndarray, frame_probs: np.ndarray) -> np.ndarray:
        """A clip's probabilities (C,) from its frames' embeddings (T, D), in order, and the
        probabilities the frames give by themselves (C,) (the temporal head, model/temporal.py)."""
        head = self.model.temporal
        device = next(head.parameters()).device
        x = torch.as_tensor(embeds, dtype=torch.float32, device=device)[None]
        prior = torch.as_tensor(np.log(np.clip(frame_probs, 1e-12, 1.0)), device=device)[None]
        return head(x, prior.float()).softmax(dim=-1)[0].cpu().numpy()

    def score_videos(self, prepared: list[Any]) -> list[tuple[np.ndarray, dict, list]]:
        """Clips' probabilities, descriptions and regions; their frames share forward batches
        (with a temporal head, each clip's embeddings go through it)."""
        from .tiles import aggregate, forward_tiles
        from .videos import summarize_video

        if not prepared:
            return []
        if not self.has_temporal:
            per_clip = forward_tiles(
                self.forward_tensors, [c.pixels for c in prepared], self.batch_size
            )
            pairs = zip(prepared, per_clip, strict=True)
            return [summarize_video(c, rows, self.view) for c, rows in pairs]
        flat = torch.cat([c.pixels for c in prepared])
        parts = [self.forward_embeds(flat[i : i + self.batch_size])
                 for i in range(0, len(flat), self.batch_size)]  # fmt: skip
        cuts = np.cumsum([len(c.pixels) for c in prepared])[:-1]
        rows = np.split(np.concatenate([p for p, _ in parts]), cuts)
        embeds = np.split(np.concatenate([e for _, e in parts]), cuts)
        out = []
        for clip, r, e in zip(prepared, rows, embeds, strict=True):
            temporal = self.temporal_probs(e, aggregate(r, self.view.aggregate))
            out.append(summarize_video(clip, r, self.view, temporal))
        return out

    def iter_score(
        self,
        inputs: Iterable[ImageInput],
        provenance: bool | None = None,
        stability: Any = None,
        read: Callable[[Any], ImageInput] | None = None,
    ) -> Iterator[Prediction]:
        """Score inputs lazily, batch by batch, through the scoring pipeline
        (:mod:`miragedet.inference.pipeline`): decoding runs ahead of the forward in threads
        (JPEGs on the GPU when one scores and a GPU decoder is installed).

        ``provenance``: also read the metadata (C2PA, XMP, parameters, EXIF) for the verdict;
        None: the detector's :attr:`config` (on, as on the command line).
        ``stability`` (a :class:`miragedet.inference.stability.Stability`; None: the config's,
        False: off): each readable input is also scored as re-delivered (resized, re-compressed,
        cropped) in one batch of k + 1, and labelled "uncertain" when the verdicts disagree or
        the score is near the threshold.
        ``read``: a function turning each input into what is scored (an :data:`ImageInput`), run
        in the decode threads (score-dataset fetches storage objects with it, so that several
        are fetched at once); an exception it raises is that input's error row.
        """
        from .pipeline import score_stream
        from .rows import columns_for, with_columns
        from .stability import score_stable

        if provenance is None:
            provenance = self.config.provenance
        if stability is None:
            stability = self.config.stability_check()
        names = columns_for(self, provenance, bool(stability))
        if stability:
            return with_columns(score_stable(self, inputs, provenance, stability, read), names)
        return with_columns(score_stream(self, inputs, provenance, read=read), names)

    # -- public API -----------------------------------------------------------------------------

    def score(
        self,
        inputs: ImageInput | Sequence[ImageInput],
        provenance: bool | None = None,
        stability: Any = None,
    ) -> list[Prediction]:
        """A :class:`Prediction` per input (a single input gives a list of one); see
        :meth:`iter_score` for ``provenance`` and ``stability``."""
        return list(self.iter_score(_as_list(inputs), provenance=provenance, stability=stability))

    def predict_proba(self, inputs: ImageInput | Sequence[ImageInput]) -> np.ndarray:
        """(n, C) class probabilities; a row of NaN for an input that could not be read."""
        predictions = self.score(inputs, provenance=False, stability=False)  # the pixels' own
        failed = sum(not p.ok for p in predictions)
        if failed:
            warnings.warn(
                f"{failed} of {len(predictions)} inputs could not be read (NaN rows); "
                "use Detector.score() for the reasons",
                stacklevel=2,
            )
        return np.array(
            [
                [p.probs[c] for c in self.classes] if p.ok else [np.nan] * len(self.classes)
                for p in predictions
            ]
        )

    def decision_function(self, inputs: ImageInput | Sequence[ImageInput]) -> np.ndarray:
        """p(fake) per input (NaN where unreadable)."""
        probs = self.predict_proba(inputs)
        return 1.0 - probs[:, 0]

    def predict(self, inputs: ImageInput | Sequence[ImageInput]) -> list[str | None]:
        """ "fake" or "real" per input at the detector's threshold (None where unreadable)."""
        return [p.label for p in self.score(inputs, provenance=False, stability=False)]


def _as_list(inputs: Any) -> list[Any]:
    if isinstance(inputs, str | os.PathLike | bytes | bytearray | Image.Image):
        return [inputs]
    if isinstance(inputs, np.ndarray) and inputs.ndim in (2, 3) and inputs.dtype != object:
        return [inputs]
    return list(inputs)


def load_detector(
    model: str | os.PathLike,
    config: DetectorConfig | str | None = None,
    *,
    notify: Callable[[str], None] | None = None,
    engine: EngineChoice | None = None,
    images: float = 0,
    detector_class: type[Detector] = Detector,
    **overrides: Any,
) -> Detector:
    """The one way to get a Detector for a checkpoint (a folder, a training run's folder, a hub
    id), exactly as the commands load it. ``config`` (a :class:`~miragedet.inference.
    detector_config.DetectorConfig`; ``overrides``: its fields, e.g. ``device="cpu"``) says how
    it scores; its ``backend`` picks the engine: PyTorch (``torch``), ONNX Runtime (``onnx``: the
    checkpoint's model.onnx, see `miragedet export`), PyTorch through torch.compile
    (``compile``), or the fastest of them that gives the same scores here (``auto``, the default,
    or ``$MIRAGEDET_BACKEND``: :mod:`miragedet.inference.engine`; torch.compile only competes for
    a job of ``images`` images large enough to earn its compile back, a server passing
    ``math.inf``). ``notify`` hears of a first-time export and measurement (default: stderr);
    ``engine``: a choice already made, e.g. by a driver for its workers;
    ``detector_class``: the Detector subclass to build (``Sub.from_pretrained`` passes it). The
    detector's ``engine`` says what was chosen and why."""
    from ..model.checkpoint import resolve

    if isinstance(config, str):  # before 0.2: load_detector(model, "torch")
        overrides.setdefault("backend", config)
        config = None
    config = (config or DetectorConfig()).replace(**overrides)
    backend = resolve_backend(config.backend)
    if notify is None:  # a first-time export can take minutes: say so rather than stall
        from .pipeline import to_stderr

        notify = to_stderr
    directory = resolve(model)
    if backend == "auto":
        from .engine import choose, graph_on_choice

        # no batch size given: the race's own default for the device (32 on a CPU, 64 on a GPU)
        choice = engine or choose(directory, view=config.view_request(),
                                  batch_size=config.batch_size,
                                  precision=config.precision, device=config.device, notify=notify,
                                  images=images)  # fmt: skip
        graph = None
        if choice.backend == "onnx":
            graph, choice = graph_on_choice(directory, choice, notify, config.precision)
        detector = (
            _on_torch(model, directory, config, detector_class)
            if graph is None
            else detector_class(graph, config)
        )
        if choice.backend == "compile":
            detector = _on_compile(detector, notify, choice.compile_s)
        detector.engine = choice
    elif backend == "onnx":
        from .engine import onnx_providers

        named = config.device not in (None, "auto")  # a GPU named without its provider: an error
        providers = onnx_providers(config.device, notify, strict=named)
        network = OnnxNetwork.from_pretrained(directory, config.precision, providers)
        detector = detector_class(network, config)
    elif backend == "compile":
        detector = _on_compile(_on_torch(model, directory, config, detector_class), notify)
    else:
        detector = _on_torch(model, directory, config, detector_class)
    detector.notify = notify  # e.g. a GPU out-of-memory error that halves the batch
    return detector


def _on_torch(
    name: str | os.PathLike, directory: Path, config: DetectorConfig, cls: type[Detector]
) -> Detector:
    """The checkpoint in ``directory`` on PyTorch, named ``name@<weights digest>``."""
    from ..model.checkpoint import WEIGHTS_NAME
    from ..model.device import resolve_device
    from ..model.mirage import load_pretrained

    device = resolve_device(config.device)  # auto: a CUDA GPU when present
    model = load_pretrained(directory, device=device)
    weights = directory / WEIGHTS_NAME
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()[:12] if weights.is_file() else ""
    model_id = f"{Path(str(name)).name}@{digest or model.config.method}"
    return cls(model, config.replace(device=str(device)), model_id=model_id, _owns_model=True)


def _on_compile(
    detector: Detector, notify: Callable[[str], None], compile_s: float | None = None
) -> Detector:
    """``detector`` with its network run through torch.compile at its batch size
    (:mod:`miragedet.inference.compiled`), ``notify`` told that its first batch compiles
    (``compile_s``: what the auto choice measured)."""
    from .compiled import CompiledForward

    how_long = "tens of seconds on a CPU" if compile_s is None else (
        f"{compile_s:.0f} s when measured here; less with inductor's cache warm")  # fmt: skip
    notify(f"torch.compile compiles the network on its first batch ({how_long})")
    detector.model = CompiledForward(detector.model, detector.batch_size)
    return detector
