"""Schemathesis hooks (SCHEMATHESIS_HOOKS=schemathesis_hooks): what a valid upload is.

The contract says an upload is an image or video file; random bytes are schema-valid strings but
not images, so the fuzzer is told how to make real ones: PNG and JPEG files of random noise and
size for the multipart parts (by their encoding's content type) and, base64-encoded, for the
JSON body's ``format: byte`` field (schemathesis.readthedocs.io, "Custom Media Types").
"""

import base64
import io

import schemathesis
from hypothesis import strategies as st
from PIL import Image


def _encode(size: tuple[int, int], sigma: int, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.effect_noise(size, sigma).convert("RGB").save(buf, fmt)
    return buf.getvalue()


_sizes = st.tuples(st.integers(8, 96), st.integers(8, 96))
PNG = st.builds(_encode, _sizes, st.integers(5, 80), st.just("PNG"))
JPEG = st.builds(_encode, _sizes, st.integers(5, 80), st.just("JPEG"))

schemathesis.openapi.media_type("image/png", PNG)
schemathesis.openapi.media_type("image/jpeg", JPEG)
BASE64 = st.one_of(PNG, JPEG).map(lambda b: base64.b64encode(b).decode())
schemathesis.openapi.format("byte", BASE64)
