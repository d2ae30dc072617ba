"""The service's contract: response models, the one error model with its machine-readable codes,
and the request bodies of ``POST /v1/detect`` as the OpenAPI document declares them.

The handler reads its body itself (multipart files or base64 JSON, one endpoint), so the
request body is declared here through ``openapi_extra`` (FastAPI's documented way for a body
read by hand: https://fastapi.tiangolo.com/advanced/path-operation-advanced-configuration/
#custom-openapi-path-operation-schema). Multipart file parts are ``format: binary`` strings
(OpenAPI 3.1 keeps that 3.0 spelling valid; https://spec.openapis.org/oas/v3.1.0#considerations
-for-file-uploads) with the image types listed in the part's ``encoding.contentType``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from ...data import formats

#: Every error's ``code``: what a client program branches on (``detail`` is for people).
ErrorCode = Literal[
    "unauthorized",  # 401: no key, or not one of the server's keys
    "not_found",  # 404
    "method_not_allowed",  # 405
    "body_too_large",  # 413: the request body is over --max-body-mb / --max-video-mb
    "too_many_images",  # 413: more than --max-images in one request
    "image_too_large",  # 413: over --max-pixels (or a decompression bomb)
    "video_too_large",  # 413: one clip over --max-video-mb
    "video_too_long",  # 413: one clip over --max-video-seconds
    "unsupported_media_type",  # 415: the body is neither multipart nor JSON
    "unsupported_format",  # 415: an upload no decoder reads
    "corrupt_image",  # 422: a truncated or damaged file
    "no_image",  # 422: a request without images
    "invalid_request",  # 422: a parameter or JSON body out of its schema
    "unsupported_option",  # 422: an option the upload cannot take (stability on a clip)
    "rate_limited",  # 429: the key's request rate (Retry-After)
    "quota_exceeded",  # 429: the key's daily images (Retry-After)
    "model_loading",  # 503: not ready yet (Retry-After)
    "queue_full",  # 503: too many images waiting (Retry-After)
    "internal_error",  # 500: a bug; please report it
]


class ImageResult(BaseModel):
    name: str
    status: int = Field(description="200 if scored, else the HTTP status of this image's error")
    code: ErrorCode | None = Field(None, description="This image's error code (status != 200)")
    fake_prob: float | None = Field(None, description="p(AI-generated), 0..1")
    label: str | None = Field(
        None, description='"fake" or "real" at the threshold ("uncertain" with stability)'
    )
    threshold: float
    top_class: str | None = None
    probs: dict[str, float] = {}
    model_id: str
    provenance: dict[str, Any] | None = None
    verdict: str | None = Field(
        None,
        description='The label weighed with the metadata: "fake" when it declares generative AI',
    )
    basis: str | None = Field(
        None, description='"pixels", or "declared (c2pa|watermark|xmp|parameters|exif)"'
    )
    stability: dict[str, Any] | None = Field(
        None,
        description="With ?stability=true: scores of the re-deliveries and the reason "
        'for an "uncertain" label',
    )
    tiles: dict[str, Any] | None = Field(
        None,
        description="With the tiles or crop view: how the image was tiled (view, rule, its "
        "size as tiled, whether every pixel was covered, number of tiles)",
    )
    regions: list[dict[str, Any]] | None = Field(
        None,
        description='Where and when the evidence is: per tile {"box": [left, top, right, '
        'bottom], "p": p(fake)}; per scored frame of a clip {"t": seconds, "p": p(fake)} '
        "(docs/video.md)",
    )
    video: dict[str, Any] | None = Field(
        None,
        description="Videos and animated images: frames scored, duration, size, decoder, the "
        "frames' aggregate and (temporal head) the temporal p(fake)",
    )
    clip: dict[str, Any] | None = Field(
        None,
        description="The same as video, under its name before 0.2; goes in the next release",
        deprecated=True,
    )
    open_set: dict[str, Any] | None = Field(
        None,
        description="Adapted attribution models: the distance to the nearest known class, the "
        'threshold, and whether the image is an unknown generator (then top_class is "unknown '
        'generator")',
    )
    error: str | None = None


class DetectResponse(BaseModel):
    results: list[ImageResult] = Field(description="One per upload, in the order sent")


class Error(BaseModel):
    """Every error the service answers with."""

    detail: str = Field(description="What went wrong and what to do, for people")
    code: ErrorCode = Field(description="What went wrong, for programs")
    results: list[ImageResult] | None = Field(
        None, description="A request of one image that could not be scored: its result row"
    )


class Base64Image(BaseModel):
    data: str = Field(
        description="The image or video file's bytes, base64-encoded (RFC 4648, with padding)",
        json_schema_extra={"format": "byte", "contentEncoding": "base64"},
    )
    name: str | None = Field(None, description="Echoed back as the result's name")


class DetectJSON(BaseModel):
    images: list[Base64Image] = Field(min_length=1)


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    ready: bool
    error: str | None = Field(None, description="Why the model could not be loaded")


#: A 1x1 PNG: the examples that Swagger UI's "Try it out" sends as they are.
EXAMPLE_PNG_BASE64 = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4//8/AAX+Av4N70a4AAAAAElFTkSuQmCC"
)


#: The clips' containers (data/video.py reads them through PyAV).
VIDEO_TYPES = ("video/mp4", "video/quicktime", "video/webm", "video/x-matroska", "video/x-msvideo")


def image_media_types() -> str:
    """The image and video types the decoders read, as an ``encoding.contentType`` list."""
    images = [m for f in formats.FORMATS for m in f.mime]
    return ", ".join([*images, *VIDEO_TYPES])


def detect_request_body(max_images: int, max_body_mb: float, max_video_mb: float) -> dict:
    """``POST /v1/detect``'s request body: multipart files or JSON base64 images."""
    limits = (
        f"At most {max_images} images per request; a body of at most {max_body_mb:g} MB "
        f"(one video: {max_video_mb:g} MB)."
    )
    return {
        "required": True,
        "description": "Images or videos, as multipart files or base64 JSON. " + limits,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["files"],
                    "properties": {
                        "files": {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                            "minItems": 1,
                            "maxItems": max_images,
                            "description": "One part per image or video. " + limits,
                        }
                    },
                },
                "encoding": {"files": {"contentType": image_media_types()}},
            },
            "application/json": {
                "schema": {"$ref": "#/components/schemas/DetectJSON"},
                "example": {"images": [{"data": EXAMPLE_PNG_BASE64, "name": "pixel.png"}]},
            },
        },
    }


def add_body_models(schema: dict, max_images: int) -> dict:
    """Put the JSON body's models (referenced by :func:`detect_request_body`) into the
    document's components, with the server's image limit."""
    models = schema.setdefault("components", {}).setdefault("schemas", {})
    body = DetectJSON.model_json_schema(ref_template="#/components/schemas/{model}")
    models.update(body.pop("$defs", {}))
    body["properties"]["images"]["maxItems"] = max_images
    models["DetectJSON"] = body
    return schema


def _error(description: str, headers: dict | None = None) -> dict:
    out: dict[str, Any] = {"model": Error, "description": description}
    if headers:
        out["headers"] = headers
    return out


RETRY_AFTER = {
    "Retry-After": {"description": "Seconds to wait before retrying", "schema": {"type": "integer"}}
}
WWW_AUTHENTICATE = {
    "WWW-Authenticate": {"description": "How to authenticate", "schema": {"type": "string"}}
}


def error_responses(*statuses: int) -> dict[int, dict]:
    """The documented error statuses of an operation, each with the error model."""
    table = {
        401: _error("API key missing or not one of the server's keys", WWW_AUTHENTICATE),
        413: _error("body, image count, image or video too large (code says which)"),
        415: _error("not multipart/JSON, or (one upload) no decoder reads it"),
        422: _error("a parameter or body out of its schema, no image, or (one upload) corrupt"),
        429: _error("the key's rate limit or daily image quota (code says which)", RETRY_AFTER),
        503: _error("model loading, or too many images waiting", RETRY_AFTER),
    }
    return {s: table[s] for s in statuses}
