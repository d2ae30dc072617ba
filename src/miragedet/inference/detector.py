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
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..data.dataset import MAX_PIXELS, ImageDecodeError, load_image
from ..data.video import Sampling, clip_kind
from ..data.views import View
from ..model.adapters import UNKNOWN
from ..model.mirage import MiraGe
from .clips import ClipInputs

ImageInput = str | os.PathLike | bytes | Image.Image | np.ndarray


@dataclass
class Prediction:
    """The verdict on one input. ``fake_prob`` is p(not the real class); ``label`` is "fake" when
    it reaches ``threshold``, else "real"; ``top_class`` is the most likely class name."""

    source: str
    fake_prob: float | None
    label: str | None
    threshold: float
    top_class: str | None = None
    probs: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    provenance: dict[str, Any] | None = None
    #: With ``stability``: the scores of the re-deliveries, their spread and the reason for an
    #: "uncertain" label.
    stability: dict[str, Any] | None = None
    #: The pixel label weighed with the metadata (see :func:`miragedet.provenance.combine`), and
    #: what decided it: "pixels", or "declared (c2pa|watermark|xmp|parameters|exif)".
    verdict: str | None = None
    basis: str | None = None
    #: With the ``tiles``/``crop`` view: how the image was tiled (view, rule, size as tiled,
    #: whether every pixel was covered, number of tiles; :func:`miragedet.data.views.where_map`).
    tiles: dict[str, Any] | None = None
    #: Where and when the evidence is, one compact list for images and clips (docs/video.md):
    #: tiles ``{"box": [left, top, right, bottom], "p": p(fake)}``; a clip's frames ``{"t":
    #: seconds, "p": p(fake)}`` (plus the most suspicious tile's ``box`` with the tiles view).
    regions: list[dict[str, Any]] | None = None
    #: A video or animated image: frames scored, duration, size, decoder, the frames' own
    #: aggregate and, with a temporal head, its p(fake) (:mod:`miragedet.inference.clips`).
    clip: dict[str, Any] | None = None
    #: Attribution models adapted with an open-set test (docs/adapt.md): the distance to the
    #: nearest known class, the threshold, and whether the image is an unknown generator (then
    #: ``top_class`` is "unknown generator"; ``label`` stays the pixels' real/fake verdict).
    open_set: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.verdict is None and self.basis is None and self.label is not None:
            self.verdict, self.basis = self.label, "pixels"

    def set_provenance(self, provenance: dict[str, Any]) -> None:
        from ..provenance.verdict import combine

        self.provenance = provenance
        self.verdict, self.basis = combine(self.label, provenance)

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _describe(item: Any, index: int) -> str:
    if isinstance(item, str | os.PathLike):
        return str(item)
    if isinstance(item, bytes | bytearray):
        return f"<bytes #{index}>"
    if isinstance(item, Image.Image):
        return f"<image #{index}>"
    if isinstance(item, np.ndarray):
        return f"<array #{index}>"
    return f"<{type(item).__name__} #{index}>"


def to_image(
    item: ImageInput, max_pixels: int = MAX_PIXELS, draft_size: int | None = None
) -> Image.Image:
    """Any supported input as an RGB Pillow image (arrays: HxW or HxWx3/4, uint8 or 0-1 float).
    ``draft_size``: let the JPEG decoder reduce scale, never below that size."""
    if isinstance(item, np.ndarray):
        array = item
        if array.ndim == 2:
            array = np.stack([array] * 3, axis=-1)
        if array.ndim != 3 or array.shape[-1] not in (3, 4):
            raise ImageDecodeError(f"array of shape {item.shape}: expected HxW or HxWx3/4")
        if array.dtype != np.uint8:
            if not np.issubdtype(array.dtype, np.floating):
                raise ImageDecodeError(f"array dtype {array.dtype}: expected uint8 or float")
            array = np.clip(np.round(array * 255.0), 0, 255).astype(np.uint8)
        return Image.fromarray(np.ascontiguousarray(array[..., :3]), "RGB")
    if isinstance(item, str | os.PathLike | bytes | bytearray | Image.Image):
        source = bytes(item) if isinstance(item, bytearray) else item
        return load_image(source, max_pixels, draft_size=draft_size)
    raise ImageDecodeError(f"unsupported input type {type(item).__name__}")


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
        model: MiraGe,
        threshold: float | None = None,
        batch_size: int = 32,
        device: str | torch.device | None = None,
        decode_threads: int | None = None,
        model_id: str | None = None,
        draft: bool = True,
        precision: str = "auto",
        view: View | str | dict[str, Any] | None = None,
        sampling: Sampling | None = None,
        _owns_model: bool = False,
    ) -> None:
        from ..data.views import resolve as resolve_view
        from .precision import apply, resolve

        #: How an image becomes model inputs (:mod:`miragedet.data.views`): by default the view the
        #: checkpoint was trained with (resize; tiles for one trained on native crops).
        self.view = resolve_view(view, model.backbone.preprocess.view)
        temporal = getattr(model, "temporal", None)
        frames = model.config.temporal.get("frames") if temporal is not None else None
        self.sampling = sampling or (Sampling(frames=frames) if frames else Sampling())

        choice = resolve(
            precision, torch.device(device) if device else model.clip.logit_scale.device
        )
        precision = choice.precision
        if precision != "fp32":  # a model handed in by the caller is copied, never changed
            model = apply(model if _owns_model else copy.deepcopy(model), precision)
        self.model = model.eval()
        self.device = torch.device(device) if device else model.clip.logit_scale.device
        from .threads import configure_torch
        from .threads import decode_threads as default_decode_threads

        if self.device.type == "cpu":
            configure_torch()  # threads for the CPUs this process may use, not the host's
        self.model.to(self.device)
        self.threshold = float(model.threshold if threshold is None else threshold)
        self.batch_size = batch_size
        self.decode_threads = decode_threads or default_decode_threads()
        self.preprocess = model.backbone.preprocess
        self.draft = draft
        #: fp32, or the network in bf16/fp16 (bf16 on CPUs with AVX512-BF16/AMX, either on
        #: CUDA), as resolved from the requested one (default ``auto``: see
        #: :mod:`miragedet.inference.precision`); ``precision_reason`` says why.
        self.precision = precision
        self.precision_reason = choice.reason
        self.classes = model.classes
        self.model_id = model_id or f"{model.config.method}@{model.backbone.source}"
        #: The few-shot adaptations this checkpoint went through (docs/adapt.md), oldest first.
        self.lineage: list[dict[str, Any]] = getattr(model, "lineage", [])

    @classmethod
    def from_pretrained(cls, path_or_id: str | os.PathLike, **kwargs: Any) -> Detector:
        """Load a checkpoint directory (or hub repository) written by ``miragedet train``."""
        from ..model.checkpoint import WEIGHTS_NAME
        from ..model.mirage import load_pretrained

        device = kwargs.pop("device", None)
        model = load_pretrained(path_or_id, device=device)
        weights = Path(path_or_id) / WEIGHTS_NAME
        digest = ""
        if weights.is_file():
            digest = hashlib.sha256(weights.read_bytes()).hexdigest()[:12]
        model_id = f"{Path(str(path_or_id)).name}@{digest or model.config.method}"
        return cls(model, device=device, model_id=model_id, _owns_model=True, **kwargs)

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
            "engine": self.engine_info(),
        }

    #: With ``--backend auto``: the :class:`~miragedet.inference.engine.EngineChoice` made.
    engine: Any = None

    def engine_info(self) -> dict[str, Any]:
        """Which engine runs the network, and (``--backend auto``) why and its figures."""
        backend = "onnx" if self.model is None else "torch"
        from .compiled import CompiledForward

        if isinstance(self.model, CompiledForward):
            backend = "compile"
        if self.engine is None:
            return {"backend": backend, "reason": "as requested"}
        return {"backend": backend, "reason": self.engine.reason,
                "ms_per_image": self.engine.measured, "parity": self.engine.parity,
                "compile_s": self.engine.compile_s, "cached": self.engine.cached}  # fmt: skip

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
    def clip_sampling(self) -> Sampling:
        """:attr:`sampling` with frames converted at :attr:`draft_size` (resize view), as
        JPEGs are drafted (docs/video.md)."""
        if self.sampling.draft_size is not None or self.draft_size is None:
            return self.sampling
        return dataclasses.replace(self.sampling, draft_size=self.draft_size)

    def _prepare(self, item: ImageInput) -> Any:
        """A (3, S, S) tensor (resize view), the :class:`~miragedet.data.views.Tiles` of the crop
        and tiles views, or a clip's :class:`~miragedet.inference.clips.ClipInputs`."""
        if clip_kind(item) is not None:
            from .clips import prepare_clip

            return prepare_clip(item, self.preprocess, self.view, self.clip_sampling)
        image = to_image(item, draft_size=self.draft_size)
        if self.view.kind == "resize":
            return self.preprocess(image)
        from ..data.views import inputs

        return inputs(image, self.preprocess, self.view)

    def score_pil(self, images: list[Image.Image]) -> np.ndarray:
        """Class probabilities (n, C) of decoded images, in one forward batch."""
        return self.forward_tensors(torch.stack([self.preprocess(im) for im in images]))

    @torch.inference_mode()
    def forward_tensors(self, pixels: torch.Tensor) -> np.ndarray:
        """Class probabilities (n, C) of an already preprocessed batch."""
        return self.model(pixels.to(self.device)).probs.float().cpu().numpy()

    @torch.inference_mode()
    def forward_open_set(self, pixels: torch.Tensor) -> tuple[np.ndarray, list[dict[str, Any]]]:
        """Class probabilities and each image's open-set outcome (models that have the test)."""
        out = self.model(pixels.to(self.device))
        threshold = float(out.distance_threshold)
        outcomes = [
            {"distance": float(d), "threshold": threshold, "unknown": bool(d > threshold)}
            for d in out.distance.float().cpu().tolist()
        ]
        return out.probs.float().cpu().numpy(), outcomes

    @torch.inference_mode()
    def forward_embeds(self, pixels: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Class probabilities (n, C) and unit image embeddings (n, D) of a preprocessed batch."""
        out = self.model(pixels.to(self.device))
        return out.probs.float().cpu().numpy(), out.image_embeds.float().cpu().numpy()

    @torch.inference_mode()
    def temporal_probs(self, embeds: np.ndarray, frame_probs: np.ndarray) -> np.ndarray:
        """A clip's probabilities (C,) from its frames' embeddings (T, D), in order, and the
        probabilities the frames give by themselves (C,) (the temporal head, model/temporal.py)."""
        head = self.model.temporal
        device = next(head.parameters()).device
        x = torch.as_tensor(embeds, dtype=torch.float32, device=device)[None]
        prior = torch.as_tensor(np.log(np.clip(frame_probs, 1e-12, 1.0)), device=device)[None]
        return head(x, prior.float()).softmax(dim=-1)[0].cpu().numpy()

    def score_clips(self, prepared: list[Any]) -> list[tuple[np.ndarray, dict, list]]:
        """Clips' probabilities, descriptions and regions; their frames share forward batches
        (with a temporal head, each clip's embeddings go through it)."""
        from ..data.views import aggregate, forward_tiles
        from .clips import summarize_clip

        if not prepared:
            return []
        if not self.has_temporal:
            per_clip = forward_tiles(
                self.forward_tensors, [c.pixels for c in prepared], self.batch_size
            )
            pairs = zip(prepared, per_clip, strict=True)
            return [summarize_clip(c, rows, self.view) for c, rows in pairs]
        flat = torch.cat([c.pixels for c in prepared])
        parts = [self.forward_embeds(flat[i : i + self.batch_size])
                 for i in range(0, len(flat), self.batch_size)]  # fmt: skip
        cuts = np.cumsum([len(c.pixels) for c in prepared])[:-1]
        rows = np.split(np.concatenate([p for p, _ in parts]), cuts)
        embeds = np.split(np.concatenate([e for _, e in parts]), cuts)
        out = []
        for clip, r, e in zip(prepared, rows, embeds, strict=True):
            temporal = self.temporal_probs(e, aggregate(r, self.view.aggregate))
            out.append(summarize_clip(clip, r, self.view, temporal))
        return out

    def _forward_tiles(self, sets: list[Any], positions: list[int]) -> tuple[np.ndarray, dict]:
        """Aggregated probabilities (n, C) of several images' tiles, forwarded together in
        batches of ``batch_size`` tiles, and each image's where-map."""
        from ..data.views import forward_tiles, summarize

        per_image = forward_tiles(self.forward_tensors, [t.pixels for t in sets], self.batch_size)
        out, maps = np.zeros((len(sets), len(self.classes))), {}
        for k, (tiles, rows, position) in enumerate(zip(sets, per_image, positions, strict=True)):
            out[k], maps[position] = summarize(tiles, rows, self.view)
        return out, maps

    def _predictions(
        self, sources: list[str], probs: np.ndarray, errors: dict[int, str]
    ) -> list[Prediction]:
        out = []
        for i, source in enumerate(sources):
            if i in errors:
                out.append(Prediction(source, None, None, self.threshold, error=errors[i]))
                continue
            p = probs[i]
            fake = float(1.0 - p[0])
            out.append(
                Prediction(
                    source,
                    fake,
                    "fake" if fake >= self.threshold else "real",
                    self.threshold,
                    top_class=self.classes[int(p.argmax())],
                    probs={c: float(v) for c, v in zip(self.classes, p, strict=True)},
                )
            )
        return out

    def iter_score(
        self, inputs: Iterable[ImageInput], provenance: bool = False, stability: Any = None
    ) -> Iterator[Prediction]:
        """Score inputs lazily, batch by batch, decoding in parallel threads.

        With ``stability`` (a :class:`miragedet.inference.stability.Stability`), each readable
        input is also scored as re-delivered (resized, re-compressed, cropped) in one batch of k +
        1, and labelled "uncertain" when the verdicts disagree or the score is near the threshold.
        """
        if stability is not None:
            yield from self._iter_stable(inputs, provenance, stability)
            return
        from ..provenance.verdict import read_provenance

        pool = ThreadPoolExecutor(self.decode_threads) if self.decode_threads > 1 else None
        prepare = _safe(self._prepare)

        def submit(chunk: list[Any] | None) -> Any:
            """Start decoding a batch (in the pool: it runs while the previous batch is in the
            model, so decode and forward overlap)."""
            if chunk is None:
                return None
            items = [item for _, item in chunk]
            futures = [pool.submit(prepare, item) for item in items] if pool else None
            return chunk, items, futures

        chunks = _chunks(enumerate(inputs), self.batch_size)
        job = submit(next(chunks, None))
        try:
            while job is not None:
                upcoming = submit(next(chunks, None))  # at most two batches in flight
                chunk, items, futures = job
                job = upcoming
                sources = [_describe(item, i) for i, item in chunk]
                if futures is None:
                    prepared = [prepare(item) for item in items]
                else:
                    prepared = [future.result() for future in futures]
                errors = {i: r for i, r in enumerate(prepared) if isinstance(r, str)}
                clips = [i for i, r in enumerate(prepared) if isinstance(r, ClipInputs)]
                good = [i for i in range(len(items)) if i not in errors and i not in clips]
                probs = np.zeros((len(items), len(self.classes)))
                scored_clips = self.score_clips([prepared[i] for i in clips])
                for i, (clip_probs, _, _) in zip(clips, scored_clips, strict=True):
                    probs[i] = clip_probs
                tiled: dict[int, Any] = {}
                open_sets: dict[int, dict[str, Any]] = {}
                if good and self.view.kind == "resize" and self.has_open_set:
                    pixels = torch.stack([prepared[i] for i in good])
                    probs[good], outcomes = self.forward_open_set(pixels)
                    open_sets = dict(zip(good, outcomes, strict=True))
                elif good and self.view.kind == "resize":
                    probs[good] = self.forward_tensors(torch.stack([prepared[i] for i in good]))
                elif good:  # the tiles of all the batch's images share forward batches
                    probs[good], tiled = self._forward_tiles([prepared[i] for i in good], good)
                predictions = self._predictions(sources, probs, errors)
                for i, where in tiled.items():
                    predictions[i].regions = where.pop("regions")
                    predictions[i].tiles = {**where, "count": len(predictions[i].regions)}
                for i, (_, info, regions) in zip(clips, scored_clips, strict=True):
                    predictions[i].clip, predictions[i].regions = info, regions
                for i, outcome in open_sets.items():
                    predictions[i].open_set = outcome
                    if outcome["unknown"]:
                        predictions[i].top_class = UNKNOWN
                if provenance:
                    for prediction, item in zip(predictions, items, strict=True):
                        if prediction.ok:
                            prediction.set_provenance(
                                read_provenance(item, self.trust_anchors, self.watermarks)
                            )
                yield from predictions
        finally:
            if pool is not None:
                pool.shutdown(cancel_futures=True)

    def _iter_stable(
        self, inputs: Iterable[ImageInput], provenance: bool, stability: Any
    ) -> Iterator[Prediction]:
        from ..provenance.verdict import read_provenance

        for i, item in enumerate(inputs):
            source = _describe(item, i)
            if clip_kind(item) is not None:  # as the server and evaluate's degradations say
                message = (
                    "stability applies to still images only (docs/video.md): score clips without it"
                )
                yield Prediction(source, None, None, self.threshold, error=message)
                continue
            image = _safe(to_image)(item)
            if isinstance(image, str):
                yield Prediction(source, None, None, self.threshold, error=image)
                continue
            deliveries = stability.redeliver(image)
            if self.view.kind == "resize":
                probs = self.score_pil([im for _, im in deliveries])  # one batch of k + 1 images
                prediction = self._predictions([source], probs[:1], {})[0]
            else:  # each re-delivery tiled and aggregated like the image as given
                from ..data.views import inputs

                sets = [inputs(im, self.preprocess, self.view) for _, im in deliveries]
                probs, maps = self._forward_tiles(sets, list(range(len(sets))))
                prediction = self._predictions([source], probs[:1], {})[0]
                prediction.regions = maps[0].pop("regions")
                prediction.tiles = {**maps[0], "count": len(prediction.regions)}
            report = stability.verdict(
                [n for n, _ in deliveries], 1.0 - probs[:, 0], self.threshold
            )
            prediction.stability = report
            if report["uncertain"]:
                prediction.label = prediction.verdict = "uncertain"
            if provenance:
                prediction.set_provenance(
                    read_provenance(item, self.trust_anchors, self.watermarks)
                )
            yield prediction

    # -- public API -----------------------------------------------------------------------------

    def score(
        self,
        inputs: ImageInput | Sequence[ImageInput],
        provenance: bool = False,
        stability: Any = None,
    ) -> list[Prediction]:
        """A :class:`Prediction` per input (a single input gives a list of one); see
        :meth:`iter_score` for ``provenance`` and ``stability``."""
        return list(self.iter_score(_as_list(inputs), provenance=provenance, stability=stability))

    def predict_proba(self, inputs: ImageInput | Sequence[ImageInput]) -> np.ndarray:
        """(n, C) class probabilities; a row of NaN for an input that could not be read."""
        predictions = self.score(inputs)
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
        return [p.label for p in self.score(inputs)]


def _as_list(inputs: Any) -> list[Any]:
    if isinstance(inputs, str | os.PathLike | bytes | bytearray | Image.Image):
        return [inputs]
    if isinstance(inputs, np.ndarray) and inputs.ndim in (2, 3) and inputs.dtype != object:
        return [inputs]
    return list(inputs)


def _safe(fn: Any) -> Any:
    def call(item: Any) -> Any:
        try:
            return fn(item)
        except ImageDecodeError as exc:
            return str(exc)
        except Exception as exc:  # one odd input must not take the batch down
            return f"{type(exc).__name__}: {exc}"

    return call


def _chunks(iterable: Iterable[Any], size: int) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for item in iterable:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
