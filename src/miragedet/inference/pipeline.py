"""The one scoring path from inputs to predictions: read and decode in a thread pool several
batches ahead of the model (bounded, so memory stays flat), view, batch, forward on the chosen
engine and device, assemble the rows.

Stages and where they run:

1. read + decode + view (+ provenance), per input, in the decode pool: a (3, S, S) tensor, the
   tiles of the crop/tiles views, a video's frames, or, when a GPU decodes, the JPEG's bytes and
   header (:mod:`miragedet.data.gpu_decode`); an unreadable input becomes its error text here.
2. batch (:func:`device_batch`), while the pool already works on the next ``ahead`` batches:
   the GPU decodes the batch's JPEGs (a file it fails on is decoded on the CPU instead: the same
   row as the CPU path gives), the CPU-decoded inputs are stacked in pinned memory and copied
   without blocking. When a GPU decodes, this stage runs for batch n + 1 in a side thread on a
   CUDA stream of its own while the caller's stream runs batch n's forward (:func:`overlap`):
   the decoder and the model no longer take turns on one stream.
3. forward on the engine (:meth:`Detector.forward_tensors` and friends; a CUDA out-of-memory
   error halves the batch and goes on, said once), then the rows (:class:`Prediction`, made by
   :mod:`miragedet.inference.outcomes` for every surface).

:class:`~miragedet.inference.detector.Detector` (and so ``detect``, score-dataset's workers and
the Python API) scores through :func:`score_stream`; the stability mode's per-image batches of
re-deliveries through :func:`~miragedet.inference.stability.score_stable` (the same pool);
evaluate's resize path and the server's model queue through :func:`device_batch`,
:func:`on_stream` and :func:`forward_batch` (the server stages a batch while the one before it
is in the model); the server prepares its uploads with :func:`prepare` (the request's view,
sampling and pixel limit).
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch

from ..data.dataset import MAX_PIXELS
from ..data.gpu_decode import JPEG_MAGIC, JpegJob, probe
from .compiled import CompiledForward
from .outcomes import failed, predicted, summarized
from .prediction import Prediction, describe
from .tiles import forward_tiles
from .videos import VideoInputs

#: A :class:`miragedet.inference.detector.Detector` (not imported here: it imports this module).
Detector = Any

#: Batches decoded ahead of the one in the model (our choice: two keep a GPU fed while the pool
#: works; the memory held is (ahead + 1) x batch size inputs, e.g. ~0.5 GB of fp32 224-px
#: inputs at batch 256).
AHEAD = 2
#: Files larger than this are left to the CPU path (which refuses absurd sizes with its own
#: error) rather than read whole into memory for the GPU decoder.
GPU_MAX_FILE_BYTES = 64 * 2**20


def error_text(exc: Exception) -> str:
    """An input's error row text: a decode error's own words, else the exception's type and
    words."""
    from ..data.dataset import ImageDecodeError

    return str(exc) if isinstance(exc, ImageDecodeError) else f"{type(exc).__name__}: {exc}"


def safe(fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``fn`` returning the error text instead of raising: one odd input must not take the batch
    down."""

    def call(item: Any) -> Any:
        try:
            return fn(item)
        except Exception as exc:
            return error_text(exc)

    return call


def chunks(iterable: Iterable[Any], size: int) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for item in iterable:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _encoded(item: Any) -> bytes | None:
    """The bytes of a file or bytes input for the GPU decoder, or None (other inputs, a file
    too large to read whole, unreadable: the CPU path then says why)."""
    if isinstance(item, bytes | bytearray):
        return bytes(item)
    if isinstance(item, str | os.PathLike):
        try:
            if os.path.getsize(item) > GPU_MAX_FILE_BYTES:
                return None
            with open(item, "rb") as handle:
                head = handle.read(len(JPEG_MAGIC))
                return head + handle.read() if head == JPEG_MAGIC else None  # JPEGs only
        except OSError:
            return None
    return None


def prepare(
    detector: Detector,
    item: Any,
    view: Any = None,
    sampling: Any = None,
    max_pixels: int = MAX_PIXELS,
) -> Any:
    """Stage 1 for one input: what :meth:`Detector._prepare` gives, or a
    :class:`~miragedet.data.gpu_decode.JpegJob` when the detector's GPU decoder takes it (resize
    view, still JPEG with sRGB or no profile). ``view``, ``sampling`` (None: the detector's) and
    ``max_pixels``: as one server request asks."""
    view = view or detector.view
    decoder = getattr(detector, "gpu_decoder", None)
    job = gpu_job(decoder, item, max_pixels) if view.kind == "resize" else None
    return job if job is not None else detector._prepare(item, view, sampling, max_pixels)


def stack_on(tensors: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    """One batch on ``device`` from per-input tensors, some possibly there already; on a GPU the
    CPU ones go through pinned memory with a non-blocking copy (a plain copy when pinned memory
    cannot be allocated)."""
    on_cpu = [t for t in tensors if t.device.type == "cpu"]
    if device.type == "cpu" or not on_cpu:
        return torch.stack([t.to(device) for t in tensors])
    if len(on_cpu) == len(tensors):
        try:
            staged = torch.empty((len(tensors), *tensors[0].shape), dtype=tensors[0].dtype,
                                 pin_memory=True)  # fmt: skip
        except RuntimeError:  # no page-locked memory to be had: a plain (blocking) copy instead
            return torch.stack(tensors).to(device)
        torch.stack(tensors, out=staged)
        return staged.to(device, non_blocking=True)
    return torch.stack([t.to(device, non_blocking=True) for t in tensors])


def gpu_decode(
    decoder: Any, items: list[Any], prepared: list[Any], on_cpu: Callable[[Any], Any]
) -> None:
    """Stage 2's GPU part: the batch's JPEG jobs decoded by ``decoder`` in place; a file the GPU
    decoder fails on is prepared by ``on_cpu`` instead (the CPU's result, error or pixels)."""
    jobs = [i for i, r in enumerate(prepared) if isinstance(r, JpegJob)]
    if not jobs:
        return
    decoded = decoder([prepared[i] for i in jobs])
    cpu_prepare = safe(on_cpu)
    for i, pixels in zip(jobs, decoded, strict=True):
        prepared[i] = cpu_prepare(items[i]) if isinstance(pixels, str) else pixels


def gpu_job(decoder: Any, item: Any, max_pixels: int = MAX_PIXELS) -> JpegJob | None:
    """The :class:`JpegJob` for ``item`` when ``decoder`` (a GPU decoder, or None) takes it
    (JPEGs only: never a clip, so no clip test is needed)."""
    if decoder is None:
        return None
    data = _encoded(item)
    return probe(data, max_pixels) if data is not None else None


@dataclass
class Batch:
    """Stage 2's output for one batch: what each input became (a video's frames, tiles, its
    error text; None once stacked), the positions stacked into ``pixels`` (on the model's
    device, resize view), and, when a side stream made them, the CUDA event the forward must
    wait for."""

    prepared: list[Any]
    good: list[int] = field(default_factory=list)
    errors: dict[int, str] = field(default_factory=dict)
    pixels: torch.Tensor | None = None
    event: Any = None
    #: The GPU ran out of memory stacking the batch: ``pixels`` stayed in host memory, and the
    #: forward takes them to the GPU in parts (:func:`in_parts`), nothing lost.
    on_host: bool = False

    def ready(self, owner: Any) -> torch.Tensor | None:
        """``pixels`` for the caller's CUDA stream: it waits for the side stream's work, and the
        memory is marked as used there so the allocator does not hand it back to the side
        stream while the forward still reads it (PyTorch's CUDA semantics notes, "Stream
        semantics of backward passes" and ``Tensor.record_stream``). Pixels left on the host
        (:attr:`on_host`) are said once to ``owner`` (:func:`say_out_of_memory`)."""
        if self.on_host:
            say_out_of_memory(owner, "stacking a batch", "this batch goes to the GPU in parts")
        if self.event is not None and self.pixels is not None and self.pixels.is_cuda:
            stream = torch.cuda.current_stream(self.pixels.device)
            stream.wait_event(self.event)
            self.pixels.record_stream(stream)
        return self.pixels


def device_batch(
    decoder: Any,
    device: torch.device,
    items: list[Any],
    prepared: list[Any],
    on_cpu: Callable[[Any], Any],
    stackable: Callable[[Any], bool] = lambda r: True,
    owner: Any = None,
) -> Batch:
    """Stage 2 for a batch: the JPEG jobs among ``prepared`` decoded by the GPU ``decoder`` (a
    file it fails on prepared from ``items`` by ``on_cpu``), then the inputs ``stackable``
    accepts stacked on ``device`` (:func:`stack_or_keep`; ``owner`` remembers an out-of-memory
    error from one batch to the next)."""
    prepared = list(prepared)
    gpu_decode(decoder, items, prepared, on_cpu)
    errors = {i: r for i, r in enumerate(prepared) if isinstance(r, str)}
    good = [i for i, r in enumerate(prepared) if i not in errors and stackable(r)]
    pixels, on_host = None, False
    if good:
        pixels, on_host = stack_or_keep([prepared[i] for i in good], device, owner)
    for i in good:  # their pixels live on in the stack only: memory of one copy, not two
        prepared[i] = None
    return Batch(prepared, good, errors, pixels, on_host=on_host)


#: After the GPU ran out of memory stacking a batch, the next this-many batches stay in host
#: memory (no failed allocation each) before stacking on the GPU is tried again (our choice:
#: a memory peak from another job often passes; bounded by batches, not by time).
HOST_BATCHES_AFTER_OOM = 8


def stack_or_keep(tensors: list[torch.Tensor], device: torch.device, owner: Any = None
                  ) -> tuple[torch.Tensor, bool]:  # fmt: skip
    """The batch stacked on ``device``, and False; or, when the GPU's memory runs out doing it
    (or ran out within the last :data:`HOST_BATCHES_AFTER_OOM` batches of ``owner``), stacked in
    host memory, and True: the forward then takes it to the GPU in parts (:func:`in_parts`)."""
    left = getattr(owner, "_host_batches", 0) if owner is not None else 0
    if left > 0:
        owner._host_batches = left - 1
        return torch.stack([t.cpu() for t in tensors]), True
    try:
        return stack_on(tensors, device), False
    except torch.cuda.OutOfMemoryError:
        if device.type == "cuda":
            torch.cuda.empty_cache()
        if owner is not None:
            owner._host_batches = HOST_BATCHES_AFTER_OOM
        return torch.stack([t.cpu() for t in tensors]), True


def forward_batch(detector: Detector, batch: Batch) -> tuple[list[Any], list[Any]]:
    """Stage 3 for a batch: the probabilities and open-set outcomes (None without the test) of
    each input (None where nothing was stacked)."""
    probs: list[Any] = [None] * len(batch.prepared)
    outcomes: list[Any] = [None] * len(batch.prepared)
    pixels = batch.ready(detector)
    if pixels is not None:
        if detector.has_open_set:
            rows, found = detector.forward_open_set(pixels)
        else:
            rows, found = detector.forward_tensors(pixels), [None] * len(batch.good)
        for k, i in enumerate(batch.good):
            probs[i], outcomes[i] = rows[k], found[k]
    return probs, outcomes


Entry = TypeVar("Entry")


def side_stream(device: torch.device) -> Any:
    """A CUDA stream of its own for stage 2 on a GPU; None on a CPU."""
    return torch.cuda.Stream(device) if device.type == "cuda" else None


def on_stream(stream: Any, stage: Callable[[Entry], Batch], entry: Entry) -> Batch:
    """``stage(entry)`` with its GPU work queued on ``stream`` (None: as it is) and the event
    that :meth:`Batch.ready` makes the forward's stream wait for."""
    if stream is None:
        return stage(entry)
    with torch.cuda.stream(stream):
        batch = stage(entry)
        batch.event = torch.cuda.Event()
        batch.event.record(stream)
    return batch


def overlap(
    entries: Iterable[Entry], stage: Callable[[Entry], Batch], device: torch.device, side: bool
) -> Iterator[tuple[Entry, Batch]]:
    """``(entry, stage(entry))`` in order. With ``side``, ``stage`` runs one entry ahead in a
    side thread, on a CUDA stream of its own when ``device`` is a GPU, while the caller works on
    the entry before (the batch's :meth:`Batch.ready` makes the caller's stream wait for it).
    One batch more is held on the device than without."""
    if not side:
        for entry in entries:
            yield entry, stage(entry)
        return
    stream = side_stream(device)

    def run(entry: Entry) -> Batch:
        return on_stream(stream, stage, entry)

    pending: deque = deque()
    pool = ThreadPoolExecutor(1, thread_name_prefix="miragedet-device")
    try:
        for entry in entries:
            pending.append((entry, pool.submit(run, entry)))
            if len(pending) > 1:
                done, future = pending.popleft()
                yield done, future.result()
        while pending:
            done, future = pending.popleft()
            yield done, future.result()
    finally:  # closed early or failed: the batch queued behind is not staged for nothing
        pending.clear()
        pool.shutdown(cancel_futures=True)


def staged_batches(
    inputs: Iterable[Any],
    work: Callable[[Any], Any],
    batch_size: int,
    threads: int,
    ahead: int = AHEAD,
) -> Iterator[tuple[list[Any], list[Any]]]:
    """``(chunk, results)`` per batch of ``batch_size`` inputs, in order, ``work(input)`` run in a
    pool of ``threads`` for up to ``ahead`` batches in front of the one handed out (stage 1 of the
    module's docstring; memory stays at (ahead + 1) batches however slow the consumer is)."""
    pool = (
        ThreadPoolExecutor(threads, thread_name_prefix="miragedet-decode") if threads > 1 else None
    )
    queue: deque = deque()

    def results(entry: tuple[list[Any], list[Any]]) -> tuple[list[Any], list[Any]]:
        chunk, futures = entry
        return chunk, [f.result() for f in futures] if pool is not None else futures

    try:
        for chunk in chunks(inputs, batch_size):
            if pool is None:
                queue.append((chunk, [work(item) for item in chunk]))
            else:
                queue.append((chunk, [pool.submit(work, item) for item in chunk]))
            if len(queue) > ahead:
                yield results(queue.popleft())
        while queue:
            yield results(queue.popleft())
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)


def score_stream(
    detector: Detector,
    inputs: Iterable[Any],
    provenance: bool = False,
    ahead: int = AHEAD,
    read: Callable[[Any], Any] | None = None,
) -> Iterator[Prediction]:
    """Score inputs lazily, batch by batch: decoding runs ``ahead`` batches in front of the
    forward in the detector's decode pool (see the module's docstring). ``read``: what each
    input is turned into first, in the pool too (score-dataset fetches storage objects with it;
    an error is the input's row)."""
    from ..provenance.verdict import read_provenance

    staged = safe(lambda item: prepare(detector, item))

    def work(pair: tuple[int, Any]) -> tuple[Any, dict[str, Any] | None]:
        try:
            item = pair[1] if read is None else read(pair[1])
        except Exception as exc:  # an object that cannot be fetched: its error row
            return error_text(exc), None
        prepared = staged(item)
        if not provenance or isinstance(prepared, str):
            return prepared, None
        source = prepared.data if isinstance(prepared, JpegJob) else item  # read once
        return prepared, read_provenance(source, detector.trust_anchors, detector.watermarks)

    resize = detector.view.kind == "resize"

    def stage(entry: tuple[list[Any], list[Any]]) -> Batch:
        prepared = [p for p, _ in entry[1]]
        if not resize:  # tiles and crops are stacked per forward by the tile path
            return Batch(
                prepared, errors={i: r for i, r in enumerate(prepared) if isinstance(r, str)}
            )
        return device_batch(detector.gpu_decoder, detector.device, prepared, prepared,
                            lambda job: detector._prepare(job.data),
                            lambda r: not isinstance(r, VideoInputs), detector)  # fmt: skip

    batches = staged_batches(
        enumerate(inputs), work, detector.batch_size, detector.decode_threads, ahead
    )
    side = detector.gpu_decoder is not None  # only a GPU decode is worth a side thread
    for (chunk, done), batch in overlap(batches, stage, detector.device, side):
        yield from _assemble(detector, chunk, done, batch)
        batch = None  # its pixels go while the next batch is staged


def _assemble(
    detector: Detector, chunk: list[Any], done: list[Any], batch: Batch
) -> list[Prediction]:
    """Stage 3 for one batch: forward, videos, tiles, rows (:mod:`.outcomes`)."""
    prepared, view = batch.prepared, detector.view
    classes, threshold = detector.classes, detector.threshold
    sources = [describe(item, i) for i, item in chunk]
    out: list[Any] = [None] * len(prepared)
    for i, error in batch.errors.items():
        out[i] = failed(sources[i], threshold, error)
    clips = [i for i, r in enumerate(prepared) if isinstance(r, VideoInputs)]
    for i, (p, info, regions) in zip(clips, detector.score_videos([prepared[i] for i in clips]),
                                     strict=True):  # fmt: skip
        out[i] = predicted(sources[i], p, classes, threshold, {"video": info, "regions": regions})
    if view.kind == "resize":
        rows, outcomes = forward_batch(detector, batch)
        for i in batch.good:
            out[i] = predicted(sources[i], rows[i], classes, threshold, None, outcomes[i])
    else:  # the tiles of all the batch's images share forward batches
        good = [i for i, r in enumerate(out) if r is None]
        if good:
            tile_sets = [prepared[i].pixels for i in good]
            per_image = forward_tiles(detector.forward_tensors, tile_sets, detector.batch_size)
            for i, rows in zip(good, per_image, strict=True):
                p, fields = summarized(prepared[i], rows, view)
                out[i] = predicted(sources[i], p, classes, threshold, fields)
    for prediction, (_, found) in zip(out, done, strict=True):
        if prediction.ok and found is not None:
            prediction.set_provenance(found)
    return out


def in_parts(forward: Callable[[torch.Tensor], Any], pixels: torch.Tensor, owner: Any) -> list[Any]:
    """``forward`` over ``pixels`` in parts of at most ``owner.batch_size``; a CUDA out-of-memory
    error halves the part that failed and caps ``owner.batch_size`` there (for this batch and the
    ones after it) and goes on, with one note through ``owner.notify`` (nothing lost; a single
    input that does not fit raises)."""
    size = max(1, min(len(pixels), owner.batch_size))
    out: list[Any] = []
    start = 0
    while start < len(pixels):
        part = pixels[start : start + size]
        try:
            out.append(forward(part))
        except torch.cuda.OutOfMemoryError:
            if size == 1:
                raise
            if getattr(owner, "device", torch.device("cpu")).type == "cuda":
                torch.cuda.empty_cache()
            size = max(1, size // 2)
            owner.batch_size = min(owner.batch_size, size)
            compiled = getattr(owner, "model", None)
            if isinstance(compiled, CompiledForward):  # else it pads parts back up: OOM again
                compiled.batch_size = min(compiled.batch_size, size)
            say_out_of_memory(owner, f"at {len(part)} inputs per forward",
                              "going on with half as many (halved again if need be)")  # fmt: skip
            continue
        start += len(part)
    return out


def say_out_of_memory(owner: Any, where: str, what_now: str) -> None:
    """Tell ``owner.notify`` (else stderr), once per owner and remedy, that the GPU ran out of
    memory ``where`` and what happens instead (always: nothing is lost)."""
    said = getattr(owner, "_oom_said", None)
    if not isinstance(said, set):
        said = owner._oom_said = set()
    if what_now in said:  # each kind of back-off said once
        return
    said.add(what_now)
    note = getattr(owner, "notify", None) or to_stderr
    note(f"the GPU ran out of memory {where}: {what_now}, nothing lost")


def to_stderr(message: str) -> None:
    """What the library says when its caller gave nothing to say it through."""
    import sys

    print(f"miragedet: {message}", file=sys.stderr)


#: Batch size on a CPU when none is given (the commands' long-standing default).
CPU_BATCH = 32
#: The largest batch chosen on a GPU from its free memory (our choice: the ViT-L/14 forward on an
#: H200 gains nothing past 256 in bench_gpu.py; a larger one only holds more memory).
GPU_BATCH_MAX = 256


#: Batch size for ONNX Runtime on a GPU when none is given (inference/engine.GPU_RACE_BATCH:
#: what the race measured it at).
ONNX_GPU_BATCH = 64


def default_batch_size(detector: Detector, asked: int | None) -> tuple[int, str]:
    """The Detector's batch size and why (:func:`batch_for`; ONNX Runtime's memory on a GPU is
    not PyTorch's to measure: the GPU race's batch there)."""
    if (
        asked is None
        and detector.device.type == "cuda"
        and getattr(detector.model, "engine", "") == "onnx"
    ):
        return ONNX_GPU_BATCH, "ONNX Runtime on the GPU: its memory is not measured"
    return batch_for(detector.model, detector.device, detector.preprocess.image_size, asked)


def batch_for(
    model: Callable[[torch.Tensor], Any],
    device: torch.device,
    image_size: int,
    asked: int | None,
    cpu_default: int = CPU_BATCH,
) -> tuple[int, str]:
    """The batch size for ``model`` on ``device`` and why: as asked; else ``cpu_default`` off a
    GPU; else on a GPU the largest power of two up to :data:`GPU_BATCH_MAX` whose forward takes
    at most half the free memory, measured from one forward of 4 inputs."""
    if asked is not None:
        if asked < 1:
            raise ValueError(f"batch size must be at least 1, not {asked}")
        return int(asked), "as asked"
    if device.type != "cuda":
        return cpu_default, "default"
    free, _ = torch.cuda.mem_get_info(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    with torch.inference_mode():
        model(torch.zeros(4, 3, image_size, image_size, device=device))
    per_input = max(1, (torch.cuda.max_memory_allocated(device) - before) / 4)
    batch = 1
    while batch * 2 <= GPU_BATCH_MAX and batch * 2 * per_input <= free / 2:
        batch *= 2
    return (
        batch,
        f"from the GPU's free memory ({free / 2**30:.0f} GiB, "
        f"{per_input / 2**20:.0f} MiB per input)",
    )


def gpu_decoder_for(detector: Detector) -> tuple[Any, str]:
    """The detector's GPU JPEG decoder and why, or None and why not (a view that needs the
    native pixels, or what :func:`~miragedet.data.gpu_decode.gpu_decoder` refuses)."""
    from ..data.gpu_decode import gpu_decoder

    if detector.device.type == "cuda" and detector.view.kind != "resize":
        return None, f"the CPU decodes: the {detector.view.kind} view reads native pixels"
    return gpu_decoder(detector.device, detector.preprocess)
