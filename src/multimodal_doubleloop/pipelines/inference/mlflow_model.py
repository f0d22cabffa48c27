"""How `kedro run --pipeline train` logs the inference pipeline as one MLflow pyfunc model
(kedro-mlflow's `pipeline_ml_factory`): the signature is inferred from the run's
`inference_requests` and `params:inference.top_k` ("auto"); the input example is a
drawn shape with a question, so the logged model documents a request without data."""

from __future__ import annotations

import io
from importlib.metadata import version
from pathlib import Path

import pandas as pd
from PIL import Image, ImageDraw

from ...data.requests import encode_image, request_table

MODEL_NAME = "model"  # the model's artifact path in its MLflow run: runs:/<run_id>/model
TOP_K_PARAM = "inference.top_k"  # per-request override: {"params": {"inference.top_k": 5}}
# What loading the model imports, pinned to this environment: packages an index has.
# Listed rather than inferred: MLflow's inference loads the model in a subprocess
# (~20 s per run) and misses torch. The project's own code is not a package on any
# index: the model carries it (`code_paths`, below).
SERVING_PACKAGES = (
    "mlflow",
    "kedro",
    "kedro-datasets",
    "kedro-mlflow",
    "torch",
    "torchvision",
    "tokenizers",
    "safetensors",  # models.pretrained (imported with the io package)
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
        # the package's source travels in the model (`code/multimodal_doubleloop/`, put on
        # sys.path when it loads), so its requirements.txt installs from PyPI alone
        "code_paths": [str(Path(__file__).resolve().parents[2])],
        "signature": "auto",
        "input_example": (example_request(), {TOP_K_PARAM: 3}),
        "pip_requirements": [f"{name}=={version(name)}" for name in SERVING_PACKAGES],
    }
