from kedro.pipeline import Node, Pipeline

from .nodes import evaluate_model


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                evaluate_model,
                [
                    "trained_model",
                    "samples",
                    "images",
                    "encoded_texts",
                    "answer_vocab",
                    "params:training",
                    "tokenizer",
                    "params:tasks",
                ],
                ["metrics", "mlflow_metrics", "confusion_matrix", "caption_samples"],
                name="evaluate_model",
            )
        ]
    )
