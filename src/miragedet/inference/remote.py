"""A detector whose model runs on a miragedet server: ``Client(url).detect(...)`` returns the same
:class:`~miragedet.inference.detector.Prediction` objects as the local Detector.

Uploads go in batches up to the server's own limits (images and body size per request, read
from ``/v1/model``); 429 and 503 are retried after the server's ``Retry-After``, connection
errors after a growing pause; a file that cannot be read or a request the server refuses
becomes an error row, and the rest of the batch is still scored.
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

from ..data.transforms import Preprocess
from ..data.video import Sampling
from ..data.views import View
from .detector import Prediction, describe, to_image

#: The API's per-result fields that a Prediction holds under the same name.
_SAME = (
    "fake_prob",
    "label",
    "threshold",
    "top_class",
    "provenance",
    "stability",
    "verdict",
    "basis",
    "tiles",
    "regions",
    "open_set",
)
RETRY_STATUSES = (429, 503)


class RemoteError(RuntimeError):
    """The server could not be reached or refused the whole request (its ``code`` says why)."""

    def __init__(
        self,
        message: str,
        status: int | None = None,
        code: str | None = None,
        body: dict | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.body = status, code, body or {}


class Client:
    """Score images and videos on a ``miragedet serve`` server.

    ``view``/``max_tiles``/``aggregate``, ``threshold``, ``frames``/``fps``/``max_seconds`` are
    sent with every request (None: the server's). ``retries`` bounds the attempts per request
    (429/503/connection errors); ``timeout`` is per HTTP request, in seconds."""

    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        *,
        timeout: float = 300.0,
        retries: int = 5,
        batch_size: int = 32,
        view: str | None = None,
        max_tiles: int | None = None,
        aggregate: str | None = None,
        threshold: float | None = None,
        frames: int | None = None,
        fps: float | None = None,
        max_seconds: float | None = None,
        transport: Any = None,
    ) -> None:
        import httpx

        self.url = url.rstrip("/")
        headers = {"X-API-Key": api_key} if api_key else {}
        self.http = httpx.Client(
            base_url=self.url, headers=headers, timeout=timeout, transport=transport
        )
        self.retries, self.batch_size = max(1, retries), max(1, batch_size)
        self.params = {
            k: v
            for k, v in dict(
                view=view,
                max_tiles=max_tiles,
                aggregate=aggregate,
                threshold=threshold,
                frames=frames,
                fps=fps,
                max_seconds=max_seconds,
            ).items()
            if v is not None
        }
        self._info: dict[str, Any] | None = None

    # -- what is served -------------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        """The server's ``/v1/model``: model id, classes, threshold, view, engine, limits."""
        if self._info is None:
            self._info = self._request("GET", "/v1/model").json()
        return self._info

    @property
    def model_id(self) -> str:
        return self.info()["id"]

    @property
    def classes(self) -> list[str]:
        return list(self.info()["classes"])

    @property
    def threshold(self) -> float:
        return self.params.get("threshold", self.info()["threshold"])

    @property
    def view(self) -> View:
        served = View(**self.info().get("view", {}))  # a server that does not say: the default
        asked = {k: self.params[k] for k in ("max_tiles", "aggregate") if k in self.params}
        return View(**{**asdict(served), **asked, "kind": self.params.get("view", served.kind)})

    @property
    def precision(self) -> str:
        return self.info().get("precision", "unknown")

    @property
    def precision_reason(self) -> str:
        return f"on the server {self.url}, model {self.model_id}"

    @property
    def engine(self) -> dict[str, Any] | None:
        return self.info().get("engine")

    @property
    def has_open_set(self) -> bool:
        """Whether the server's model tells unknown generators apart."""
        return bool(self.info().get("open_set"))

    def engine_info(self) -> dict[str, Any]:
        return self.engine or {"backend": "unknown", "reason": "not reported"}

    @property
    def preprocess(self) -> Preprocess:
        return Preprocess.from_dict(self.info()["preprocess"])

    @property
    def video_sampling(self) -> Sampling:
        video = self.info()["video"]
        return Sampling(**{f.name: video[f.name] for f in fields(Sampling) if f.name in video})

    # -- scoring --------------------------------------------------------------------------------

    def score(
        self, inputs: Any, provenance: bool = True, stability: Any = None
    ) -> list[Prediction]:
        """Predictions for a path, bytes, a PIL image, or a list of them (in order), as
        :meth:`miragedet.Detector.score` gives them."""
        items = inputs if isinstance(inputs, (list, tuple)) else [inputs]
        return list(self.iter_score(items, provenance=provenance, stability=stability))

    detect = score  # the name before 0.2

    def iter_score(
        self, inputs: Iterable[Any], provenance: bool = True, stability: Any = None
    ) -> Iterator[Prediction]:
        """Predictions as each batch comes back (the Detector's ``iter_score``)."""
        limits = self.info().get("limits", {})
        per_request = min(self.batch_size, int(limits.get("max_images", 64)))
        max_bytes = int(float(limits.get("max_body_mb", 32)) * 2**20 * 0.9)  # room for framing
        params = dict(self.params, provenance=str(bool(provenance)).lower())
        if stability:  # a Stability (None or False: off)
            params.update(
                stability="true",
                stability_variants=",".join(stability.variants),
                stability_margin=stability.margin,
            )
        from .rows import columns_for, with_columns

        names = columns_for(self, provenance, bool(stability))
        yield from with_columns(self._scored(inputs, params, per_request, max_bytes), names)

    def _scored(
        self, inputs: Iterable[Any], params: dict, per_request: int, max_bytes: int
    ) -> Iterator[Prediction]:
        batch: list[tuple[str, bytes]] = []
        size = 0
        for index, item in enumerate(inputs):
            name, data, problem = _read(item, index)
            if problem is not None:
                yield from self._flush(batch, params)
                batch, size = [], 0
                yield self._failed(name, problem)
                continue
            if batch and (len(batch) >= per_request or size + len(data) > max_bytes):
                yield from self._flush(batch, params)
                batch, size = [], 0
            batch.append((name, data))
            size += len(data)
        yield from self._flush(batch, params)

    def _failed(self, source: str, error: str) -> Prediction:
        return Prediction(source, None, None, self.threshold, error=error)

    def _flush(self, batch: list[tuple[str, bytes]], params: dict) -> Iterator[Prediction]:
        if not batch:
            return
        files = [
            ("files", (f"{i}", data, "application/octet-stream"))
            for i, (_, data) in enumerate(batch)
        ]
        try:
            response = self._request("POST", "/v1/detect", files=files, params=params)
            results = response.json()["results"]
        except RemoteError as exc:
            if exc.code == "unauthorized" or exc.status is None:
                raise
            results = exc.body.get("results")
            if not results:  # the whole request was refused (e.g. too large): each says so
                for name, _ in batch:
                    yield self._failed(name, str(exc))
                return
        for (name, _), result in zip(batch, results, strict=True):
            yield self._prediction(name, result)

    def _prediction(self, source: str, result: dict[str, Any]) -> Prediction:
        out = Prediction(source, None, None, result["threshold"])
        for key in _SAME:
            setattr(out, key, result.get(key))
        out.probs = dict(result.get("probs") or {})
        out.video = result.get("video") or result.get("clip")  # a server before 0.2: "clip"
        if result.get("status", 200) != 200:
            out.error = result.get("error") or f"HTTP {result.get('status')}"
        return out

    def _request(self, method: str, path: str, **kwargs: Any):
        import httpx

        pause = 0.5
        for attempt in range(1, self.retries + 1):
            try:
                response = self.http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                if attempt == self.retries:
                    raise RemoteError(f"{self.url}: {exc}") from exc
                time.sleep(pause)
                pause *= 2
                continue
            if response.status_code in RETRY_STATUSES and attempt < self.retries:
                time.sleep(_retry_after(response, pause))
                pause *= 2
                continue
            if response.status_code >= 400:
                try:
                    body = response.json()
                except ValueError:
                    body = {"detail": response.text[:200]}
                raise RemoteError(
                    f"{self.url}{path}: {response.status_code} {body.get('detail', '')}",
                    response.status_code,
                    body.get("code"),
                    body,
                )
            return response
        raise AssertionError("unreachable")  # the loop returns or raises

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _retry_after(response: Any, fallback: float) -> float:
    """The server's Retry-After in seconds (bounded to 60), else ``fallback``."""
    value = response.headers.get("retry-after", "")
    return min(60.0, float(value)) if value.replace(".", "", 1).isdigit() else fallback


def _read(item: Any, index: int) -> tuple[str, bytes, str | None]:
    """(name, bytes, None) of an input, or (name, b"", why it cannot be sent). Names are the
    Detector's (a path as given, ``<bytes #i>``, ``<image #i>``, ``<array #i>``); files and bytes
    go as they are, decoded images and arrays losslessly as PNG."""
    name = describe(item, index)
    if isinstance(item, bytes | bytearray):
        return name, bytes(item), None
    if isinstance(item, str | os.PathLike):
        try:
            return name, Path(item).read_bytes(), None
        except OSError as exc:
            return name, b"", f"cannot read {name}: {exc.strerror or exc}"
    try:
        image = to_image(item)
    except Exception as exc:  # the Detector's own reasons (unsupported type, bad array)
        return name, b"", str(exc)
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return name, buf.getvalue(), None
