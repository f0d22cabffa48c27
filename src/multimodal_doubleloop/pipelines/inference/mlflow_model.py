"""How `kedro run --pipeline train` logs the inference pipeline as one MLflow pyfunc model
(kedro-mlflow's `pipeline_ml_factory`): the signature is inferred from the run's
`inference_requests` and `params:inference.top_k` ("auto"); the input example is a
drawn shape with a question, so the logged model documents a request without data."""

from __future__ import annotations

import io
from importlib.metadata import version

import pandas as pd
from PIL import Image, ImageDraw

from ...data.requests import encode_image, request_table

MODEL_NAME = "model"  # the model's artifact path in its MLflow run: runs:/<run_id>/model
TOP_K_PARAM = "inference.top_k"  # per-request override: {"params": {"inference.top_k": 5}}
# What loading the model imports, pinned to this environment. Listed rather than inferred:
# MLflow's inference loads the model in a subprocess (~20 s per run) and misses torch.
# `multimodal-doubleloop` is this repository (`pip install .`), not a PyPI package.
SERVING_PACKAGES = (
    "multimodal-doubleloop",
    "mlflow",
    "kedro",
    "kedro-datasets",
    "kedro-mlflow",
    "torch",
    "tokenizers",
    "pillow",
    "pandas",
    "pyarrow",
    "numpy",
    "cloudpickle",
)


def example_request() -> pd.DataFrame:
    """One request: a red circle on white (PNG, base64) and an easy-VQA question."""
    im = Image.new("RGB", (64, 64), "white")
    ImageDraw.Draw(im).ellipse((14, 14, 50, 50), fill=(220, 30, 30))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return request_table([encode_image(buf.getvalue())], ["what color is the shape?"])


def log_model_kwargs() -> dict:
    return {
        "name": MODEL_NAME,
        "signature": "auto",
        "input_example": (example_request(), {TOP_K_PARAM: 3}),
        "pip_requirements": [f"{name}=={version(name)}" for name in SERVING_PACKAGES],
    }
