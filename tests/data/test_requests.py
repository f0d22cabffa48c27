import base64
import io

import numpy as np
import pandas as pd
import pytest
from layouts import png_header
from PIL import Image

from multimodal_doubleloop.data.images import decode_image
from multimodal_doubleloop.data.requests import (
    RequestError,
    RequestLimits,
    decode_base64_image,
    decode_requests,
    encode_image,
    encode_image_file,
    request_table,
)


def _image_bytes(fmt: str, size=(40, 30), color=(200, 20, 20)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format=fmt)
    return buf.getvalue()


def test_png_file_decodes_exactly_as_training_decodes_it(samples, easy_vqa_raw):
    root, path = easy_vqa_raw[1], samples["image_path"].iloc[0]
    assert np.array_equal(decode_base64_image(encode_image_file(root.path(path)), 64), decode_image(root, path, 64))


def test_jpeg_is_resized_to_the_model_size():
    pixels = decode_base64_image(encode_image(_image_bytes("JPEG")), 64)
    assert pixels.shape == (64, 64, 3) and pixels.dtype == np.uint8
    assert abs(int(pixels[32, 32, 0]) - 200) < 8  # JPEG is lossy, the colour survives


def test_data_url_and_line_wrapped_base64_are_accepted():
    raw = _image_bytes("PNG")
    b64 = encode_image(raw)
    expected = decode_base64_image(b64, 16)
    wrapped = "\n".join(b64[i : i + 76] for i in range(0, len(b64), 76))  # `base64` default output
    assert np.array_equal(decode_base64_image(wrapped, 16), expected)
    assert np.array_equal(decode_base64_image("data:image/png;base64," + b64, 16), expected)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("@@@ not base64 @@@", "not valid base64"),
        ("iVBORw0KGgo", "not valid base64"),  # bad padding
        (base64.b64encode(b"just some text").decode(), "not a PNG or JPEG image"),
        (encode_image(_image_bytes("GIF")), "not a PNG or JPEG image"),
        (encode_image(_image_bytes("PNG")[:60]), "cannot decode the image"),  # truncated
        ("", "is empty"),
        (None, "must be a base64 string, got NoneType"),
    ],
)
def test_bad_images_say_what_is_wrong(value, message):
    with pytest.raises(RequestError, match=message):
        decode_base64_image(value, 64, row=3)


def test_decode_requests_dedupes_images_and_keeps_order():
    a, b = encode_image(_image_bytes("PNG", color=(0, 0, 255))), encode_image(_image_bytes("JPEG"))
    pixels, index, texts = decode_requests(request_table([a, b, a], ["q1", "q2", "q3"]), 32)
    assert pixels.shape == (2, 32, 32, 3)
    assert index.tolist() == [0, 1, 0] and texts == ["q1", "q2", "q3"]
    assert pixels[0, 16, 16].tolist() == [0, 0, 255]


@pytest.mark.parametrize(
    ("table", "message"),
    [
        (pd.DataFrame({"image": ["x"]}), r"lack column\(s\) \['text'\]"),
        (pd.DataFrame({"img": ["x"], "txt": ["q"]}), r"lack column\(s\) \['image', 'text'\]"),
        (request_table([], []), "no rows"),
        (request_table(["x"], ["   "]), "row 0: column 'text' is empty"),
        (request_table(["x"], [None]), "row 0: column 'text' must be a string"),
        (request_table(["x", "@@"], ["q", "q"]), "row 0: column 'image' is not valid base64"),
        ([{"image": "x", "text": "q"}], "must be a pandas DataFrame"),
    ],
)
def test_bad_tables_say_which_row_and_column(table, message):
    with pytest.raises(RequestError, match=message):
        decode_requests(table, 32)


def test_limits_refuse_a_request_before_decoding_it():
    limits = RequestLimits()
    bomb = encode_image(png_header(12000, 12000))  # 144 M pixels in 33 bytes
    with pytest.raises(RequestError, match=r"row 5: .* 12000x12000 image \(144000000 pixels\), over the limit of 16000000 pixels \(inference.limits.max_image_pixels\)"):  # fmt: skip
        decode_base64_image(bomb, 64, row=5, limits=limits)
    big = encode_image(b"\0" * (2**20 + 3))
    with pytest.raises(RequestError, match=r"over the limit of 1048576 bytes \(inference.limits.max_image_bytes\)"):
        decode_base64_image(big, 64, limits=RequestLimits(max_image_bytes=2**20))
    ok = encode_image(_image_bytes("PNG"))
    with pytest.raises(RequestError, match=r"3 rows, over the limit of 2 \(inference.limits.max_rows\)"):
        decode_requests(request_table([ok] * 3, ["q"] * 3), 32, RequestLimits(max_rows=2))
    assert decode_requests(request_table([ok] * 2, ["q"] * 2), 32, RequestLimits(max_rows=2))[0].shape == (1, 32, 32, 3)
    with pytest.raises(ValueError, match="must be >= 0"):
        RequestLimits(max_rows=-1)
