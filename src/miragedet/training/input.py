"""The trainer's input path: a loader that keeps the accelerator fed, and the wait it measures."""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator
from typing import Any

import torch

#: Batches in flight over all workers, at least (each worker keeps ``prefetch_factor`` ready):
#: enough to ride out a slow image or two; more only costs shared memory (a float32 batch of
#: 128 images at 224 px is 77 MB).
MIN_IN_FLIGHT = 4


#: Loader workers on a CPU when ``--workers`` is not given (the forward and backward need the
#: cores; the long-standing default).
CPU_WORKERS = 2
#: At most this many loader workers on a GPU when ``--workers`` is not given (our choice: run 1
#: on an H200 fed 590-637 img/s of 224-px PNGs to a ViT-L/14 step with 12 workers, below the
#: step's ~900; each worker keeps its prefetched batches in shared memory).
GPU_WORKERS_MAX = 16


def usable_workers(asked: int | None, device: torch.device | None = None
                   ) -> tuple[int, str | None]:  # fmt: skip
    """The loader workers to start, with a one-line note to print or None.

    ``asked`` is capped by the CPUs this process may use (its affinity and cgroup quota,
    :func:`miragedet.inference.threads.available_cpus`): PyTorch warns for more workers than
    CPUs (twice per loader) and starts them anyway, and they then only take turns. None picks:
    :data:`CPU_WORKERS` on a CPU; on a GPU, where decoding must keep up with the device, those
    CPUs less one for the main process, shared among the ranks torchrun started on this machine
    (``LOCAL_WORLD_SIZE``), at most :data:`GPU_WORKERS_MAX`."""
    import os

    from ..inference.threads import available_cpus

    cpus = available_cpus()
    if asked is None and device is not None and device.type == "cuda":
        ranks = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
        chosen = max(1, min(GPU_WORKERS_MAX, cpus.count // ranks - 1))
        shared = f", shared by {ranks} ranks" if ranks > 1 else ""
        return chosen, (
            f"workers: {chosen} (on a GPU: {cpus.describe()} usable here, one kept for the "
            f"main process{shared}; --workers sets them)"
        )
    how = "by default" if asked is None else "asked"
    asked = CPU_WORKERS if asked is None else asked
    if asked <= cpus.count:
        return asked, None
    return cpus.count, f"workers: {asked} {how}, {cpus.describe()} usable here: using {cpus.count}"


def draft_size(transform: Any, align: str | None = None) -> int | None:
    """Decode JPEGs at reduced scale (Pillow's draft: 1/2, 1/4 or 1/8, never below this size)
    when training sees the image only through a resize, with the rule inference uses: twice the
    resize target (``Detector.draft_size``), so training and scoring decode alike.

    Not with the crop view (random crops of the native pixels), nor with ``align`` (the
    re-encoding must happen at every image's native scale: drafting only the JPEGs would make
    the scale it happens at depend on the file format, the shortcut align removes). The random
    resized crop is kept: its crop spans at least sqrt(min scale x 3/4) of the short side
    (aspect 3/4..4/3), so from a draft of 2 x resize_shortest it is still at least 1.22 x the
    model size (scale 0.5) and is still reduced, never enlarged, into the model's input; a
    preset whose crops could be enlarged because of the draft turns it off."""
    if transform.view != "resize" or align:
        return None
    preprocess, augment = transform.preprocess, transform.augment
    size = 2 * preprocess.resize_shortest
    if augment.p_resized_crop > 0:
        shortest_crop = size * math.sqrt(augment.crop_scale[0] * 3 / 4)
        if shortest_crop < preprocess.image_size:
            return None
    return size


class _EpochItems(torch.utils.data.Dataset):
    """Items keyed (epoch, index): the epoch travels with each index, so that persistent workers
    (each holding its own copy of the transform, made when they started) draw that epoch's
    augmentations (``TrainTransform.set_epoch``)."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        epoch, index = key
        set_epoch = getattr(self.dataset.transform, "set_epoch", None)
        if set_epoch is not None:
            set_epoch(epoch)
        return self.dataset[index]


class _Order(torch.utils.data.Sampler):
    """The (epoch, index) keys of the pass in progress; set anew before each pass."""

    def __init__(self) -> None:
        self.keys: list[tuple[int, int]] = []

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter(self.keys)

    def __len__(self) -> int:
        return len(self.keys)


class TrainInput:
    """One DataLoader for the whole run: workers started once (persistent) and kept fed
    (prefetch), batches in pinned memory on CUDA so that the copies to the GPU do not block,
    and the next epoch's first batches prepared while this one ends (and validation runs)."""

    def __init__(
        self, dataset: Any, batch_size: int, workers: int, device: torch.device, seed: int
    ) -> None:
        from ..data.dataset import collate

        self.order = _Order()
        self.batch_size, self.workers = batch_size, workers
        #: the keys of the pass the workers were already set on, and its iterator
        self.primed: tuple[list[tuple[int, int]], Iterator] | None = None
        options: dict[str, Any] = {}
        if workers > 0:
            options["persistent_workers"] = True
            options["prefetch_factor"] = max(2, math.ceil(MIN_IN_FLIGHT / workers))
        self.loader = torch.utils.data.DataLoader(
            _EpochItems(dataset),
            batch_size=batch_size,
            sampler=self.order,
            num_workers=workers,
            collate_fn=collate,
            drop_last=False,
            pin_memory=device.type == "cuda",
            # the workers' seeds come from here, not from the global RNG (which a resumed run
            # must find where the uninterrupted one had it)
            generator=torch.Generator().manual_seed(seed),
            **options,
        )

    def batches(
        self, indices: list[int], epoch: int, following: list[int] | None = None
    ) -> Iterator[dict[str, Any]]:
        """The collated batches of ``indices`` in order, augmented as in ``epoch``. With
        ``following`` (the indices of epoch + 1), the workers move on to that pass as soon as
        this one's last batch is in hand, so that its first batches are ready when it starts,
        instead of the whole pipeline filling up again then."""
        keys = [(epoch, i) for i in indices]
        if self.primed is not None and self.primed[0] == keys:
            iterator = self.primed[1]
        else:
            self.order.keys = keys
            iterator = iter(self.loader)
        self.primed = None
        count = math.ceil(len(keys) / self.batch_size)
        ahead = None
        if following is not None and self.workers > 0:  # one process: nothing runs ahead
            ahead = [(epoch + 1, i) for i in following]
        return self._stream(iterator, count, ahead)

    def _stream(
        self, iterator: Iterator, count: int, ahead: list[tuple[int, int]] | None
    ) -> Iterator[dict[str, Any]]:
        for k, batch in zip(range(count), iterator, strict=False):
            if k == count - 1 and ahead:
                # every batch of this pass is received: restarting the (persistent) workers on
                # the next pass drops nothing
                self.order.keys = ahead
                self.primed = (ahead, iter(self.loader))
            yield batch


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """The batch's tensors on ``device``; asynchronous from pinned memory."""
    moved = dict(batch)
    for key in ("pixel_values", "embeds", "labels"):
        if key in batch:
            moved[key] = batch[key].to(device, non_blocking=True)
    return moved


class Waited:
    """Batches on ``device``, adding up the time spent waiting for them: blocked on the
    loader (``next``), plus issuing their copies to the device."""

    def __init__(self, batches: Iterable[dict[str, Any]], device: torch.device) -> None:
        self.batches = iter(batches)
        self.device = device
        self.seconds = 0.0

    def __iter__(self) -> Waited:
        return self

    def __next__(self) -> dict[str, Any]:
        start = time.perf_counter()
        try:
            return to_device(next(self.batches), self.device)
        finally:
            self.seconds += time.perf_counter() - start


def share(part: float, whole: float) -> float:
    """``part / whole`` within 0..1 (0 for no time at all)."""
    return min(1.0, max(0.0, part / whole)) if whole > 0 else 0.0


def speed(images: int, seconds: float, waited: float) -> dict[str, float]:
    """Images per second over ``seconds`` of wall time, and the share of it spent waiting."""
    return {"images_per_s": images / max(seconds, 1e-9), "data_wait_share": share(waited, seconds)}
