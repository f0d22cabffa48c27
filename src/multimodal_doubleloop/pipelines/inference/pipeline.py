from kedro.pipeline import Node, Pipeline

from .nodes import (
    make_example_requests,
    package_for_serving,
    postprocess_predictions,
    predict,
    preprocess_requests,
    score_requests,
)


def create_pipeline(**kwargs) -> Pipeline:
    """requests (base64 image + text) -> answers with probabilities."""
    return Pipeline(
        [
            Node(
                preprocess_requests,
                ["inference_requests", "inference_model", "inference_tokenizer"],
                "inference_batch",
                name="preprocess_requests",
            ),
            Node(predict, ["inference_batch", "inference_model"], "inference_outputs", name="predict"),
            Node(
                postprocess_predictions,
                ["inference_outputs", "inference_tokenizer", "inference_answer_vocab", "params:inference.top_k"],
                "predictions",
                name="postprocess_predictions",
            ),
        ]
    )


def create_batch_pipeline(**kwargs) -> Pipeline:
    """A request table of any length, scored in batches (`batch_requests` ->
    `batch_predictions`, both read and written a batch at a time)."""
    return Pipeline(
        [
            Node(
                score_requests,
                ["batch_requests", "inference_model", "inference_tokenizer", "inference_answer_vocab", "params:inference.top_k"],  # fmt: skip
                "batch_predictions",
                name="score_requests",
            )
        ]
    )


def create_packaging_pipeline(**kwargs) -> Pipeline:
    """Runs with training: the unversioned artifacts the MLflow model packs, and example
    requests its signature is inferred from."""
    return Pipeline(
        [
            Node(
                package_for_serving,
                ["trained_model", "tokenizer", "answer_vocab", "params:inference.limits"],
                ["inference_model", "inference_tokenizer", "inference_answer_vocab"],
                name="package_for_serving",
            ),
            Node(
                make_example_requests,
                ["samples", "raw_images", "params:inference"],
                "inference_requests",
                name="make_example_requests",
            ),
        ]
    )
