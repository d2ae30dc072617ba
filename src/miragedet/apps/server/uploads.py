"""From request bytes to model inputs: the body-size guard, reading multipart or base64 JSON
uploads, and decoding each upload (image, tiles, re-deliveries or a clip's frames) with the
status and error code of why not."""

from __future__ import annotations

import base64
import binascii
import dataclasses
import io
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from fastapi import Request
from fastapi.responses import JSONResponse
from PIL import Image

from ...data import formats
from ...data.dataset import ImageDecodeError, load_image
from ...data.video import Sampling, video_kind
from ...data.views import Tiles, View
from ...inference import pipeline
from ...inference.detector import Detector
from ...inference.stability import Stability
from .contract import DetectJSON
from .settings import ServerSettings

ALLOWED_FORMATS = formats.ACCEPTED  # one table with the decoder and the web page
#: ImageDecodeError kinds: (status, code)
STATUS_OF_KIND = {
    "format": (415, "unsupported_format"),
    "size": (413, "image_too_large"),
    "corrupt": (422, "corrupt_image"),
    "missing": (422, "corrupt_image"),
}


def error(
    detail: str, status: int, code: str, headers: dict | None = None, **extra
) -> JSONResponse:
    """The service's one error shape: ``{"detail", "code"}`` (contract.Error)."""
    return JSONResponse({"detail": detail, "code": code, **extra}, status, headers=headers)


class _BodyTooLarge(Exception):
    pass


class BodyLimit:
    """ASGI middleware: refuse request bodies over ``limit`` bytes with 413, also when chunked."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            await self._refuse(send)
            return
        seen = 0
        started = False

        async def limited_receive() -> dict:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _BodyTooLarge
            return message

        async def tracking_send(message: dict) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _BodyTooLarge:
            if not started:
                await self._refuse(send)

    async def _refuse(self, send: Callable) -> None:
        mb = self.limit / 2**20
        response = error(f"request body over the {mb:g} MB limit", 413, "body_too_large")
        await response({"type": "http"}, None, send)


class Prepared(NamedTuple):
    """One upload made ready: its input tensors (None when it cannot be scored), the status and
    error code, the error, and what scoring needs back (Tiles, VideoInputs, or per re-delivery a
    list of Tiles)."""

    tensors: list[torch.Tensor] | None
    status: int
    error: str | None
    extra: Any = None
    code: str | None = None


def refused(status: int, code: str, detail: str) -> Prepared:
    """An upload refused with an HTTP status, an error code and the reason."""
    return Prepared(None, status, detail, None, code)


def _prepare_video(
    data: bytes, detector: Detector, view: View, limits: ServerSettings, sampling: Sampling
) -> Prepared:
    """A video or animated image: its frames' inputs, or the status of why not."""
    if len(data) > limits.max_video_mb * 2**20:
        return refused(413, "video_too_large", f"video over the {limits.max_video_mb:g} MB limit")
    sampling = dataclasses.replace(sampling, max_pixels=min(sampling.max_pixels, limits.max_pixels))
    prepared = pipeline.prepare(detector, data, view, sampling)
    duration = prepared.video.duration or 0.0
    if duration > limits.max_video_seconds:
        return refused(
            413,
            "video_too_long",
            f"clip of {duration:.0f} s is over this server's "
            f"limit of {limits.max_video_seconds:g} s",
        )
    return Prepared(list(prepared.pixels), 200, None, prepared)


def prepare(
    data: bytes,
    detector: Detector,
    max_pixels: int,
    stability: Stability | None = None,
    view: View | None = None,
    limits: ServerSettings | None = None,
    sampling: Sampling | None = None,
) -> Prepared:
    """Decode and preprocess one upload.

    The tensors are the image's one input (resize view), its tiles (tiles/crop view: ``extra``
    holds their :class:`~miragedet.data.views.Tiles`), a clip's frames (``extra``: its
    VideoInputs), or, with ``stability``, the image as given and then each re-delivery, each
    prepared by the view (``extra``: the Tiles of each, or None with the resize view)."""
    view = view or detector.view
    limits = limits or ServerSettings(max_pixels=max_pixels)
    try:
        fmt = formats.sniff(formats.read_head(data))
        if fmt == "VIDEO" or (fmt in ("GIF", "WEBP", "PNG") and video_kind(data)):
            if stability is not None:
                return refused(422, "unsupported_option", "stability works with still images")
            return _prepare_video(data, detector, view, limits, sampling or detector.video_sampling)
        if len(data) > limits.max_body_mb * 2**20:
            return refused(
                413,
                "image_too_large",
                f"upload over the {limits.max_body_mb:g} MB limit for images",
            )
        if fmt is None:  # no signature we know: ask Pillow what it is (TGA, PPM, ...)
            with Image.open(io.BytesIO(data)) as probe:
                fmt = probe.format
        if fmt not in ALLOWED_FORMATS:
            return refused(
                415,
                "unsupported_format",
                f"unsupported image format {fmt}; send "
                "one of " + ", ".join(f.title for f in formats.FORMATS),
            )
        if stability is not None:  # re-deliveries start from the exact decode
            image = load_image(data, max_pixels=max_pixels)
            pixels, tiled = stability.inputs(image, detector.preprocess, view)
            return Prepared(pixels, 200, None, tiled)
        # the scoring pipeline's own stage 1: a JPEG for the GPU decoder, the view's input(s)
        prepared = pipeline.prepare(detector, data, view, max_pixels=max_pixels)
        if isinstance(prepared, Tiles):
            return Prepared(list(prepared.pixels), 200, None, prepared)
        return Prepared([prepared], 200, None, None)
    except ImageDecodeError as exc:
        status, code = STATUS_OF_KIND.get(exc.kind, (422, "corrupt_image"))
        return refused(status, code, str(exc))
    except Image.DecompressionBombError as exc:
        return refused(413, "image_too_large", f"decompression bomb refused: {exc}")
    except Image.UnidentifiedImageError:
        return refused(415, "unsupported_format", "not a recognised image format")
    except Exception as exc:
        return refused(
            422, "corrupt_image", f"could not read the image: {type(exc).__name__}: {exc}"
        )


async def _multipart(
    request: Request, content_type: str, max_images: int
) -> list[tuple[str, bytes]]:
    """The parts of a multipart body as raw bytes (python-multipart's streaming parser): every
    part with a filename, and parts named ``files`` without one (RFC 7578 makes the filename
    optional), which starlette's form would decode as text."""
    from python_multipart.multipart import MultipartParser, parse_options_header

    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary:
        raise ValueError("no boundary in the Content-Type")
    parts: list[dict] = []
    header: dict[str, bytes] = {"field": b"", "value": b""}

    def begin() -> None:
        parts.append({"headers": {}, "data": bytearray()})
        if len(parts) > max_images + 1:
            raise ValueError(f"more than {max_images} parts")

    def field(data: bytes, start: int, end: int) -> None:
        header["field"] += data[start:end]

    def value(data: bytes, start: int, end: int) -> None:
        header["value"] += data[start:end]

    def header_end() -> None:
        parts[-1]["headers"][header["field"].lower()] = header["value"]
        header["field"], header["value"] = b"", b""

    def data(chunk: bytes, start: int, end: int) -> None:
        parts[-1]["data"] += chunk[start:end]

    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": begin,
            "on_header_field": field,
            "on_header_value": value,
            "on_header_end": header_end,
            "on_part_data": data,
        },
    )
    async for chunk in request.stream():
        parser.write(chunk)
    parser.finalize()
    uploads = []
    for part in parts:
        _, options = parse_options_header(part["headers"].get(b"content-disposition", b""))
        name = options.get(b"name", b"").decode("utf-8", "replace")
        filename = options.get(b"filename")
        if filename is not None or name == "files":
            label = filename.decode("utf-8", "replace") if filename else name
            uploads.append((label or name, bytes(part["data"])))
    return uploads


async def read_uploads(request: Request, max_images: int) -> list[tuple[str, bytes]] | JSONResponse:
    """The (name, bytes) of each upload: multipart file parts (any field name) or the JSON
    body's base64 images."""
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        try:
            return await _multipart(request, content_type, max_images)
        except ValueError as exc:
            return error(f"invalid multipart body: {exc}", 422, "invalid_request")
    if content_type.startswith("application/json"):
        try:
            payload = DetectJSON.model_validate_json(await request.body())
            return [
                (img.name or f"image-{i}", base64.b64decode(img.data, validate=True))
                for i, img in enumerate(payload.images)
            ]
        except (ValueError, binascii.Error) as exc:
            return error(f"invalid JSON body: {exc}", 422, "invalid_request")
    return error(
        "send multipart/form-data files or application/json "
        f"base64 images, not {content_type or 'no content type'}",
        415,
        "unsupported_media_type",
    )
