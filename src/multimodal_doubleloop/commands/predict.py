"""Answer a question about an image with a trained model.

    python -m multimodal_doubleloop.commands.predict --image img.png --text "what color is the shape?"
    python -m multimodal_doubleloop.commands.predict --image img.png --text "..." --model-uri runs:/<run_id>/model --top-k 5

Without `--model-uri`, the latest `trained_model`, `tokenizer` and `answer_vocab` in
the project's catalog go through the `inference` pipeline; with one, that MLflow model
(logged by `kedro run --pipeline=train`) answers. Prints the answer and the top-k
answers with their probabilities on stdout; logging goes to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from pathlib import Path

import pandas as pd

from ..data.requests import RequestError, encode_image_file, request_table

logger = logging.getLogger(__name__)


def run_inference(
    requests: pd.DataFrame, model: dict, tokenizer: str, answer_vocab: list[str], top_k: int
) -> pd.DataFrame:
    """The `inference` pipeline on in-memory inputs; returns its `predictions`."""
    from kedro.io import DataCatalog, MemoryDataset
    from kedro.runner import SequentialRunner

    from ..pipelines.inference import create_pipeline
    from ..pipelines.inference.nodes import package_for_serving

    model, tokenizer, answer_vocab = package_for_serving(model, tokenizer, answer_vocab)
    inputs = {
        "inference_requests": requests,
        "inference_model": model,
        "inference_tokenizer": tokenizer,
        "inference_answer_vocab": answer_vocab,
        "params:inference.top_k": top_k,
    }
    catalog = DataCatalog({k: MemoryDataset(v, copy_mode="assign") for k, v in inputs.items()})
    return SequentialRunner().run(create_pipeline(), catalog)["predictions"].load()


def predict_from_catalog(
    requests: pd.DataFrame, project_path: Path, env: str | None, top_k: int | None
) -> pd.DataFrame:
    """Latest versions of the trained artifacts in the project's catalog."""
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    bootstrap_project(project_path)
    with KedroSession.create(project_path=project_path, env=env) as session:
        context = session.load_context()
        catalog = context.catalog
        if top_k is None:
            top_k = context.params["inference"]["top_k"]
        artifacts = [catalog.load(name) for name in ("trained_model", "tokenizer", "answer_vocab")]
    return run_inference(requests, *artifacts, top_k=top_k)


def predict_from_mlflow(
    requests: pd.DataFrame, model_uri: str, tracking_uri: str, top_k: int | None
) -> pd.DataFrame:
    import mlflow

    from ..pipelines.inference.mlflow_model import TOP_K_PARAM

    mlflow.set_tracking_uri(tracking_uri)  # resolves runs:/ and models:/ URIs
    model = mlflow.pyfunc.load_model(model_uri)
    return model.predict(requests, params=None if top_k is None else {TOP_K_PARAM: top_k})


def format_prediction(row: pd.Series) -> str:
    """The answer and its top-k table, then one line per other head: a caption's text,
    a head's predicted class names, or its values (their count, for embeddings)."""
    lines = []
    if "answer" in row:
        lines.append(f"answer: {row['answer']}")
        width = max(len(a) for a in row["top_answers"])
        pairs = zip(row["top_answers"], row["top_probabilities"], strict=True)
        lines += [f"  {a:<{width}}  {p:.4f}" for a, p in pairs]
    for key, value in row.items():
        if key in {"answer", "probability", "top_answers", "top_probabilities"} or key.endswith("_probabilities"):
            continue
        if isinstance(value, str):
            lines.append(f"{key}: {value}")
        elif isinstance(value, float):  # a one-output regression head
            lines.append(f"{key}: {value:.4f}")
        elif all(isinstance(v, str) for v in value):  # predicted class names (multi-label: all above 0.5)
            lines.append(f"{key}: {', '.join(value) or '(none)'}")
        elif len(value) > 8:
            lines.append(f"{key}: {len(value)} values")
        else:
            lines.append(f"{key}: " + " ".join(f"{v:.4f}" for v in value))
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m multimodal_doubleloop.commands.predict", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--image", required=True, type=Path, help="a PNG or JPEG file")
    parser.add_argument("--text", required=True, help="the question")
    parser.add_argument("--model-uri", help="an MLflow model, e.g. runs:/<run_id>/model (default: the catalog's latest)")
    parser.add_argument("--top-k", type=int, help="answers to list (default: parameters inference.top_k; <= 0: all)")
    parser.add_argument("--project-path", type=Path, default=Path.cwd(), help="the Kedro project (default: .)")
    parser.add_argument("--env", help="Kedro environment, e.g. test (default: $KEDRO_ENV or local)")
    parser.add_argument(
        "--tracking-uri",
        default=os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db"),
        help="MLflow tracking URI for runs:/ and models:/ URIs (default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.image.is_file():
        raise SystemExit(f"--image {args.image}: no such file")
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    requests = request_table([encode_image_file(args.image)], [args.text])
    out = sys.stdout
    # Kedro's logging config (rich handler) and MLflow write to stdout: send all of it to
    # stderr, so stdout carries the answer alone.
    with contextlib.redirect_stdout(sys.stderr):
        try:
            if args.model_uri:
                predictions = predict_from_mlflow(requests, args.model_uri, args.tracking_uri, args.top_k)
            else:
                predictions = predict_from_catalog(requests, args.project_path.resolve(), args.env, args.top_k)
        except RequestError as exc:  # a bad image or an empty text: say so, no traceback
            raise SystemExit(f"cannot answer: {exc}") from exc
    out.write(format_prediction(predictions.iloc[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
