"""Score a large image collection into Parquet shards, resumably (`miragedet score-dataset`).

The input (a folder, a manifest, a list of paths, or a storage URI such as ``s3://bucket/prefix``
that pyarrow can list) is listed once and cut into shards of ``shard_size`` paths, in a fixed
order recorded in ``OUTPUT/_plan.json``. Each finished shard is written as
``OUTPUT/part-NNNNN.parquet`` in one atomic rename, so a shard file is either whole or absent: a
run killed at any moment and started again scores only the shards that are missing, and no row is
lost or written twice.

Engines:

- ``ray``: Ray Data runs the detector as a callable class on a pool of actors
  (``map_batches`` with ``ActorPoolStrategy``, CPUs or GPUs per actor as asked) and streams the
  rows back to this process, which writes the shards. ``address`` joins an existing cluster
  (``ray://...`` or ``auto``); without one a local Ray runtime is started.
- ``local``: the same scorer in this process, no Ray needed.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..data.formats import (
    IMAGE_EXTENSIONS,
    NOT_IMAGE,
    VIDEO_EXTENSIONS,
    Found,
    ImageDecodeError,
    walk,
)
from .detector_config import DetectorConfig, resolve_backend
from .pipeline import CPU_BATCH, GPU_BATCH_MAX
from .rows import kind_of, row_of

PLAN_NAME = "_plan.json"
ENGINES = ("ray", "local")


class ScoringError(ValueError):
    """A bad input listing or an output folder that belongs to another job."""


def _is_uri(text: str) -> bool:
    return "://" in text and not text.startswith("file://")


def list_inputs(source: str) -> list[str]:
    """The image paths of :func:`discover_inputs` (without what it skipped)."""
    return discover_inputs(source).paths


def discover_inputs(source: str) -> Found:
    """The image paths of a folder (recursive, sorted, images found by content like `detect`),
    a manifest (.csv/.parquet/.jsonl with a ``path`` column; relative paths are relative to the
    manifest), a .txt list (one per line), or a storage URI that ``pyarrow.fs`` can list
    (``s3://``, ``gs://``, ``hdfs://``, ...; objects are judged by their names there, since
    reading the head of each would cost a request per object). What a folder or bucket holds
    besides images is in ``skipped``, with the reason."""
    if _is_uri(source):
        return _list_uri(source)
    path = Path(source).expanduser()
    if path.is_dir():
        return walk(path)
    if not path.is_file():
        raise ScoringError(f"{source}: no such folder or manifest")
    suffix = path.suffix.lower()
    if suffix == ".txt":
        entries = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    elif suffix in (".csv", ".parquet", ".jsonl"):
        entries = _manifest_paths(path)
    else:
        raise ScoringError(
            f"{source}: expected a folder, a .csv/.parquet/.jsonl manifest with a 'path' column, "
            "a .txt list of paths or a storage URI"
        )
    return Found([e if _is_uri(e) or os.path.isabs(e) else str(path.parent / e) for e in entries])


def _manifest_paths(path: Path) -> list[str]:
    import pyarrow.csv
    import pyarrow.json
    import pyarrow.parquet

    readers = {
        ".csv": pyarrow.csv.read_csv,
        ".parquet": pyarrow.parquet.read_table,
        ".jsonl": pyarrow.json.read_json,
    }
    try:
        table = readers[path.suffix.lower()](str(path))
    except Exception as exc:  # pyarrow raises several types for unreadable files
        raise ScoringError(f"{path}: cannot read the manifest ({exc})") from exc
    if "path" not in table.column_names:
        raise ScoringError(f"{path}: a manifest needs a 'path' column (has {table.column_names})")
    return [str(p) for p in table.column("path").to_pylist() if p]


def _list_uri(uri: str) -> Found:
    import pyarrow.fs

    fs, root = pyarrow.fs.FileSystem.from_uri(uri)
    scheme = uri.split("://", 1)[0]
    infos = fs.get_file_info(pyarrow.fs.FileSelector(root, recursive=True))
    files = sorted(f"{scheme}://{i.path}" for i in infos if i.type == pyarrow.fs.FileType.File)
    found = Found()
    for name in files:
        if Path(name).suffix.lower() in IMAGE_EXTENSIONS | VIDEO_EXTENSIONS:
            found.paths.append(name)
        else:
            found.skipped.append((name, NOT_IMAGE))
    return found


def read_input(path: str) -> Any:
    """What the detector gets for a path: the path itself when local, the bytes for a URI."""
    if not _is_uri(path):
        return path
    import pyarrow.fs

    fs, inner = pyarrow.fs.FileSystem.from_uri(path)
    with fs.open_input_stream(inner) as stream:
        return stream.read()


def fetch(path: str) -> Any:
    """:func:`read_input`, its failure (a missing object, a permission error) an error row's
    text: "cannot read: ..." """
    try:
        return read_input(path)
    except Exception as exc:
        raise ImageDecodeError(f"cannot read: {exc}", "missing") from exc


class Scorer:
    """The detector as a callable over batches of ``{"shard", "index", "path"}`` columns: what
    Ray Data runs in each actor (and the local engine runs in-process)."""

    def __init__(self, model: str, config: DetectorConfig, choice: Any = None) -> None:
        from .detector import load_detector
        from .rows import columns_for

        # the driver's --backend auto choice: workers do not measure again
        self.detector = load_detector(model, config, engine=choice)
        self.names = columns_for(self.detector, config.provenance, config.stability)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return next(self.stream([batch]))

    def stream(self, batches: Iterable[dict[str, np.ndarray]]) -> Iterator[dict[str, np.ndarray]]:
        """The rows of each batch of columns, in order, scored through one pipeline run
        (:mod:`miragedet.inference.pipeline`), so that decoding the next batches overlaps the
        forward of this one; a storage URI's object is fetched in the decode threads too
        (:func:`fetch`: several at once), its row named by the URI."""
        pending: deque = deque()  # [batch, paths, predictions] in input order

        def paths() -> Iterator[str]:
            for batch in batches:
                names = [str(p) for p in batch["path"]]
                pending.append((batch, names, []))
                yield from names

        for prediction in self.detector.iter_score(paths(), read=fetch):
            next(e for e in pending if len(e[2]) < len(e[1]))[2].append(prediction)
            while pending and len(pending[0][2]) == len(pending[0][1]):
                yield self._rows(*pending.popleft())
        while pending:  # batches without a path
            yield self._rows(*pending.popleft())

    def _rows(
        self, batch: dict[str, np.ndarray], paths: list[str], predictions: list[Any]
    ) -> dict[str, np.ndarray]:
        """What an engine sends back per input: its shard, its place, and its row as JSON (the
        columns of :mod:`miragedet.inference.rows` for the job's options)."""
        rows = []
        for path, p in zip(paths, predictions, strict=True):
            p.source = path  # a URI's bytes are named by the URI
            rows.append(json.dumps(row_of(p, self.names)))
        return {
            "shard": np.asarray(batch["shard"], dtype=np.int64),
            "index": np.asarray(batch["index"], dtype=np.int64),
            "row": np.array(rows, dtype=object),
        }


@dataclass
class ScoreReport:
    output: Path
    total: int
    shards: int
    shards_done_before: int
    scored: int = 0
    failed: int = 0
    seconds: float = 0.0
    written: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # not images, with the reason
    engine: str = ""  # the engine the workers run, and why (--backend auto: its figures)
    placement: str = ""  # where they score: the local detector's device..., or the Ray actors

    @property
    def images_per_s(self) -> float:
        return (self.scored + self.failed) / self.seconds if self.seconds else 0.0


def _plan(
    paths: list[str],
    shard_size: int,
    output: Path,
    model: str,
    view: Any = None,
    sampling: Any = None,
) -> dict[str, Any]:
    digest = hashlib.sha256("\n".join(paths).encode()).hexdigest()
    plan = {"n": len(paths), "shard_size": shard_size, "paths_sha256": digest, "model": model}
    if is_dataclass(view):
        view = asdict(view)
    plan["view"] = view  # None (the checkpoint's) is what plans written before views held
    if sampling is not None:  # clips sampled otherwise than by default score otherwise
        plan["sampling"] = asdict(sampling)
    existing = output / PLAN_NAME
    if existing.is_file():
        old = json.loads(existing.read_text())
        if {k: old.get(k) for k in plan} != plan:
            raise ScoringError(
                f"{output} holds shards of another job ({old.get('n')} inputs, shard size "
                f"{old.get('shard_size')}, model {old.get('model')}, view {old.get('view')}); "
                "use another OUTPUT or delete it"
            )
    else:
        output.mkdir(parents=True, exist_ok=True)
        tmp = output / f".{PLAN_NAME}.tmp"
        tmp.write_text(json.dumps(plan, indent=1))
        os.replace(tmp, existing)
    return plan


def _check_model(model: str, backend: str) -> None:
    """Refuse a checkpoint that cannot load before any worker starts (the workers would retry
    the failure on every actor, burying the reason under their logs)."""
    from ..model.checkpoint import read_config, resolve

    directory = resolve(model)  # a hub id is downloaded here once; the workers reuse the cache
    read_config(directory)
    if backend == "onnx":
        from ..inference.onnx import ONNX_NAME

        if not (directory / ONNX_NAME).is_file():
            raise ScoringError(
                f"{model} has no {ONNX_NAME}; run `miragedet export --model {model}` first"
            )


def shard_path(output: Path, shard: int) -> Path:
    return output / f"part-{shard:05d}.parquet"


#: Arrow types of the row's kinds (a "json" column is stored as JSON text).
ARROW_TYPES = {"string": "string", "float": "float64", "int": "int64", "bool": "bool_",
               "json": "string"}  # fmt: skip


def write_shard(output: Path, shard: int, rows: list[tuple[int, dict[str, Any]]]) -> Path:
    """Write one shard's rows (``(index, row)``, sorted here by input order) atomically: temp
    file, fsync, rename. The columns are the rows' own (:mod:`miragedet.inference.rows`)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    ordered = [row for _, row in sorted(rows, key=lambda pair: pair[0])]
    names = list(ordered[0]) if ordered else ["path"]
    arrays = {}
    for name in names:
        kind = kind_of(name)
        values = [row.get(name) for row in ordered]
        if kind == "json":
            values = [None if v is None else json.dumps(v) for v in values]
        arrays[name] = pa.array(values, getattr(pa, ARROW_TYPES[kind])())
    table = pa.table(arrays)
    final = shard_path(output, shard)
    tmp = output / f".{final.name}.{os.getpid()}.tmp"
    with tmp.open("wb") as handle:
        pq.write_table(table, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, final)
    return final


def read_scores(output: str | Path) -> Any:
    """All finished shards of OUTPUT as one pyarrow Table."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    parts = sorted(Path(output).glob("part-*.parquet"))
    if not parts:
        return pa.table({"path": pa.array([], pa.string())})
    # shards written by an older release may lack columns: filled with nulls
    return pa.concat_tables([pq.read_table(p) for p in parts], promote_options="default")


def score_dataset(
    source: str | os.PathLike,
    output: str | Path,
    model: str,
    config: DetectorConfig | None = None,
    engine: str = "ray",
    workers: int = 2,
    shard_size: int = 1000,
    cpus_per_worker: float = 1.0,
    gpus_per_worker: float | None = None,
    address: str | None = None,
    on_start: Callable[[ScoreReport, int], None] | None = None,
    on_rows: Callable[[int], None] | None = None,
    notify: Callable[[str], None] | None = None,
    **overrides: Any,
) -> ScoreReport:
    """Score every image of ``source`` into Parquet shards under ``output`` (see the module);
    ``config``/``overrides`` say how (:class:`~miragedet.inference.detector_config.
    DetectorConfig`), as for :func:`~miragedet.inference.detector.load_detector`."""
    config = (config or DetectorConfig()).replace(**overrides)
    if engine not in ENGINES:
        raise ScoringError(f"engine must be one of {', '.join(ENGINES)}, not {engine!r}")
    if shard_size < 1 or workers < 1:
        raise ScoringError("shard_size and workers must be at least 1")
    output = Path(output)
    try:  # refused here, not in every worker; the signers travel as text, not as a path
        config.check()
        config = config.replace(trust_anchors=config.trust_anchor_pem())
    except ValueError as exc:
        raise ScoringError(str(exc)) from exc
    backend = config.backend = resolve_backend(config.backend)
    _check_model(model, backend)
    found = discover_inputs(os.fspath(source))
    paths = list(dict.fromkeys(found.paths))
    view = config.view_request()
    asked = (config.frames, config.fps, config.max_seconds) != (None, None, None)
    sampling = config.sampling() if asked else None  # the plan records clips' sampling if asked
    _plan(paths, shard_size, output, model, view, sampling)
    for stale in output.glob(".part-*.tmp"):  # a kill between write and rename
        stale.unlink()
    n_shards = (len(paths) + shard_size - 1) // shard_size
    pending = [s for s in range(n_shards) if not shard_path(output, s).is_file()]
    expected = {s: min((s + 1) * shard_size, len(paths)) - s * shard_size for s in pending}
    choice = None
    if backend == "auto":  # chosen once here, not by every worker
        from ..model.checkpoint import resolve as resolve_checkpoint
        from .engine import choose, onnx_graph

        directory = resolve_checkpoint(model)
        left = sum(expected.values())  # what this run scores, shared by the workers
        choice = choose(directory, view=view, batch_size=config.batch_size,
                        precision=config.precision, device=config.device, notify=notify,
                        images=left / workers)  # fmt: skip
        if choice.backend == "onnx":
            onnx_graph(directory, notify)  # exported here (if ever), not by every worker
    report = ScoreReport(output, len(paths), n_shards, n_shards - len(pending))
    report.engine = choice.describe() if choice is not None else f"{backend}: as requested"
    report.skipped = found.skipped
    work = _work_table(paths, pending, shard_size)  # shard, index, path of what is left
    del paths  # the listing now lives in Arrow buffers (a few tens of bytes per input)
    start = time.perf_counter()
    if gpus_per_worker is None:  # Ray actors share the GPUs the driver's device asks for
        from ..model.device import gpu_share

        gpus_per_worker = gpu_share(config.device, workers)
    if engine == "ray":
        actor, batch = actor_plan(config, cpus_per_worker, gpus_per_worker)
        scorer = {"model": model, "config": actor, "choice": choice}
        actors = f"{workers} Ray actor{'s' * (workers != 1)}"
        each = f"{gpus_per_worker:g} GPU and {cpus_per_worker:g} CPU"
        feed = f"{actor.threads} decode threads, {batch} inputs a call"
        report.placement = f"{actors}, each {each}, {feed}"
        batches = _ray_batches(work, scorer, workers, batch, cpus_per_worker, gpus_per_worker,
                               address)  # fmt: skip
    else:
        scorer = Scorer(model, config, choice) if work.num_rows else None
        report.placement = scorer.detector.placement() if scorer is not None else ""
        batches = _local_batches(work, scorer)
    if on_start is not None:
        on_start(report, work.num_rows)
    buffers: dict[int, list[tuple[int, dict[str, Any]]]] = {}
    try:
        for batch in batches:
            for j in range(len(batch["row"])):
                shard, row = int(batch["shard"][j]), json.loads(batch["row"][j])
                buffer = buffers.setdefault(shard, [])
                buffer.append((int(batch["index"][j]), row))
                if row["error"] is None:
                    report.scored += 1
                else:
                    report.failed += 1
                if len(buffer) == expected[shard]:
                    report.written.append(str(write_shard(output, shard, buffers.pop(shard))))
            if on_rows is not None:
                on_rows(len(batch["row"]))
    finally:
        batches.close()  # stops the engine (and a Ray runtime started here) now, not at exit
    report.seconds = time.perf_counter() - start
    if buffers:  # cannot happen unless the engine dropped rows; never write a partial shard
        raise ScoringError(f"the engine returned incomplete shards {sorted(buffers)}")
    return report


#: Rows per Ray call to a GPU actor, in detector batches: its pipeline overlaps decoding with
#: the forward within one call only (Ray Data hands an actor one batch per call), so a call of a
#: single batch would decode and forward in turn; of 4, the first batch's decode and the last
#: one's forward go without overlap. Our choice: local files are read by the pipeline's decode
#: threads, but a storage URI's objects are read for the whole call first (4 x 256 objects).
RAY_GPU_BATCHES = 4


def actor_plan(config: DetectorConfig, cpus_per_worker: float, gpus_per_worker: float
               ) -> tuple[DetectorConfig, int]:  # fmt: skip
    """What each Ray actor runs with: its config (decode threads, unless ``threads`` is set)
    and the rows per call. A CPU actor decodes with the CPUs it asks Ray for (at least 2), a
    call of one batch (``batch_size``, else 32). A GPU actor decodes with its share of this
    machine's CPUs (that of the GPUs, ``gpus_per_worker`` of them: 16 CPUs, 1 GPU, 2 actors:
    8 threads each; 2 to 32), calls of :data:`RAY_GPU_BATCHES` batches (``batch_size``, else
    :data:`GPU_BATCH_MAX`)."""
    if not gpus_per_worker:
        threads = config.threads or max(2, math.ceil(cpus_per_worker))
        return config.replace(threads=threads), config.batch_size or CPU_BATCH
    import torch

    from .threads import available_cpus

    share = min(1.0, gpus_per_worker / max(1, torch.cuda.device_count()))
    threads = config.threads or max(2, min(32, round(available_cpus().count * share)))
    return config.replace(threads=threads), RAY_GPU_BATCHES * (config.batch_size or GPU_BATCH_MAX)


def _work_table(paths: list[str], pending: list[int], shard_size: int) -> Any:
    """The inputs of the pending shards as an Arrow table (shard, index, path)."""
    import pyarrow as pa

    spans = [np.arange(s * shard_size, min((s + 1) * shard_size, len(paths))) for s in pending]
    index = np.concatenate(spans) if spans else np.zeros(0, dtype=np.int64)
    return pa.table(
        {
            "shard": pa.array(index // shard_size, pa.int64()),
            "index": pa.array(index, pa.int64()),
            "path": pa.array(paths, pa.string()).take(pa.array(index, pa.int64())),
        }
    )


def _columns(table: Any) -> dict[str, np.ndarray]:
    return {name: table.column(name).to_numpy(zero_copy_only=False) for name in table.column_names}


def _local_batches(work: Any, scorer: Scorer | None) -> Iterator[dict[str, np.ndarray]]:
    if scorer is None:
        return
    size = scorer.detector.batch_size
    yield from scorer.stream(_columns(work.slice(i, size)) for i in range(0, work.num_rows, size))


def _ray_batches(
    work: Any,
    kwargs: dict[str, Any],
    workers: int,
    batch_size: int,
    cpus: float,
    gpus: float,
    address: str | None,
) -> Iterator[dict[str, np.ndarray]]:
    if not work.num_rows:
        return
    try:
        import ray
        import ray.data
    except ImportError as exc:
        raise ScoringError(
            "the ray engine needs Ray Data: pip install 'miragedet[ray]' (or use --engine local)"
        ) from exc
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    started = False
    if not ray.is_initialized():
        init: dict[str, Any] = {
            "include_dashboard": False,
            "log_to_driver": False,
            "logging_level": "WARNING",
        }
        if address:
            init["address"] = address
        ray.init(**init)
        started = True
    try:
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # ours counts rows as they come back
        import logging

        logging.getLogger("ray.data").setLevel(logging.WARNING)
        logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)
        # blocks small enough that every actor gets work, large enough to keep them few
        rows = max(batch_size, min(1024, -(-work.num_rows // (workers * 32))))
        blocks = [work.slice(i, rows) for i in range(0, work.num_rows, rows)]
        dataset = ray.data.from_arrow(blocks)
        scored = dataset.map_batches(
            Scorer,
            fn_constructor_kwargs=kwargs,
            batch_size=batch_size,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=workers),
            num_cpus=cpus,
            num_gpus=gpus,
        )
        yield from scored.iter_batches(batch_size=None, batch_format="numpy")
    finally:
        if started:
            ray.shutdown()
