"""Inference requests: a table with a base64-encoded image column and a text column.

Every row is checked before any model work, and a bad row fails with its index, its
column and what to send instead (`RequestError`). Images go through the same
RGB conversion and resize as training images (`images.to_rgb_array`).

`RequestLimits` bound what one request may cost before anything is decoded: the rows,
each image's file size, and each image's pixel count read from its header (a 140 KB
PNG can hold 144 M black pixels, seconds of decoding).
"""

from __future__ import annotations

import base64
import binascii
import io
import warnings
from dataclasses import dataclass
from os import PathLike

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

from .images import to_rgb_array

IMAGE_COLUMN = "image"  # base64 of a PNG or JPEG file (a `data:image/...;base64,` prefix is allowed)
TEXT_COLUMN = "text"
REQUEST_COLUMNS = (IMAGE_COLUMN, TEXT_COLUMN)
IMAGE_FORMATS = ("PNG", "JPEG")


class RequestError(ValueError):
    """A request the model cannot answer; the message says which row and what to fix."""


@dataclass(frozen=True)
class RequestLimits:
    """What one request may ask of the server (`inference.limits`); 0 = no limit."""

    max_rows: int = 1024  # rows per request
    max_image_bytes: int = 16 * 2**20  # each image file, after base64 decoding
    max_image_pixels: int = 16_000_000  # each image's width x height, read from its header

    def __post_init__(self):
        if min(self.max_rows, self.max_image_bytes, self.max_image_pixels) < 0:
            raise ValueError(f"inference.limits {self}: every limit must be >= 0 (0 = none)")


NO_LIMITS = RequestLimits(0, 0, 0)


def encode_image(data: bytes) -> str:
    """Image file bytes -> the base64 text a request carries."""
    return base64.b64encode(data).decode("ascii")


def encode_image_file(path: str | PathLike) -> str:
    with open(path, "rb") as f:
        return encode_image(f.read())


def request_table(images_b64: list[str], texts: list[str]) -> pd.DataFrame:
    return pd.DataFrame({IMAGE_COLUMN: images_b64, TEXT_COLUMN: texts})


def _image_bytes(value, row, max_bytes: int = 0) -> bytes:
    if not isinstance(value, str):
        raise RequestError(
            f"row {row}: column {IMAGE_COLUMN!r} must be a base64 string, got {type(value).__name__}"
        )
    text = value.strip()
    if text.startswith("data:") and "," in text:  # data URL: data:image/png;base64,....
        text = text.split(",", 1)[1]
    text = "".join(text.split())  # base64 wrapped over lines (`base64` without -w0)
    if not text:
        raise RequestError(f"row {row}: column {IMAGE_COLUMN!r} is empty; send a base64 PNG or JPEG")
    if max_bytes and len(text) // 4 * 3 > max_bytes:  # checked before decoding
        raise RequestError(
            f"row {row}: column {IMAGE_COLUMN!r} holds a {len(text) // 4 * 3}-byte image, over the "
            f"limit of {max_bytes} bytes (inference.limits.max_image_bytes); send a smaller file"
        )
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise RequestError(
            f"row {row}: column {IMAGE_COLUMN!r} is not valid base64 ({exc}); "
            "send the image file's bytes base64-encoded, e.g. `base64 -w0 img.png`"
        ) from exc


def decode_base64_image(value, size: int, row=0, limits: RequestLimits = NO_LIMITS) -> np.ndarray:
    """A base64 PNG/JPEG -> RGB uint8 (size, size, 3), as training decodes image files."""
    data = _image_bytes(value, row, limits.max_image_bytes)
    try:
        with warnings.catch_warnings():  # our limit, below, decides (PIL warns from 89 M pixels)
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)  # reads the header only
        with im:
            width, height = im.size
            if limits.max_image_pixels and width * height > limits.max_image_pixels:
                raise RequestError(
                    f"row {row}: column {IMAGE_COLUMN!r} is a {width}x{height} image ({width * height} "
                    f"pixels), over the limit of {limits.max_image_pixels} pixels "
                    "(inference.limits.max_image_pixels); send a smaller image"
                )
            return to_rgb_array(im, size)
    except UnidentifiedImageError as exc:
        raise RequestError(
            f"row {row}: column {IMAGE_COLUMN!r} decodes to {len(data)} bytes that are not a "
            f"{' or '.join(IMAGE_FORMATS)} image"
        ) from exc
    except (OSError, Image.DecompressionBombError) as exc:  # truncated or oversized files
        raise RequestError(f"row {row}: column {IMAGE_COLUMN!r}: cannot decode the image ({exc})") from exc


def validate_text(value, row=0) -> str:
    if not isinstance(value, str):
        raise RequestError(
            f"row {row}: column {TEXT_COLUMN!r} must be a string, got {type(value).__name__}"
        )
    if not value.strip():
        raise RequestError(f"row {row}: column {TEXT_COLUMN!r} is empty; send a question")
    return value


def decode_requests(
    table: pd.DataFrame, image_size: int, limits: RequestLimits = NO_LIMITS
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Validate a request table. Returns the unique images as uint8 (M, S, S, 3), the
    image row of each request (N,) and the texts; identical images are decoded once."""
    if not isinstance(table, pd.DataFrame):
        raise RequestError(f"requests must be a pandas DataFrame, got {type(table).__name__}")
    missing = [c for c in REQUEST_COLUMNS if c not in table.columns]
    if missing:
        raise RequestError(
            f"requests lack column(s) {missing}; each row needs {list(REQUEST_COLUMNS)} "
            f"(got {[str(c) for c in table.columns]})"
        )
    if table.empty:
        raise RequestError(f"requests have no rows; send at least one ({', '.join(REQUEST_COLUMNS)}) row")
    if limits.max_rows and len(table) > limits.max_rows:
        raise RequestError(
            f"the request has {len(table)} rows, over the limit of {limits.max_rows} "
            "(inference.limits.max_rows); split it into smaller requests"
        )
    texts = [validate_text(v, row) for row, v in zip(table.index, table[TEXT_COLUMN], strict=True)]
    first_row: dict[str, int] = {}
    image_index = np.empty(len(table), dtype=np.int64)
    pixels = []
    for i, (row, value) in enumerate(zip(table.index, table[IMAGE_COLUMN], strict=True)):
        if not isinstance(value, str) or value not in first_row:
            pixels.append(decode_base64_image(value, image_size, row, limits))  # raises unless a str
            first_row[value] = len(pixels) - 1
        image_index[i] = first_row[value]
    return np.stack(pixels), image_index, texts
