from kedro.pipeline import Node, Pipeline

from .nodes import train_model


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                train_model,
                [
                    "samples",
                    "images",
                    "encoded_texts",
                    "answer_vocab",
                    "tokenizer",
                    "params:model",
                    "params:training",
                ],
                ["trained_model", "training_curves", "training_history"],
                name="train_model",
            )
        ]
    )
