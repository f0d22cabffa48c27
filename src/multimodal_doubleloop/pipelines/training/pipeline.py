from kedro.pipeline import Node, Pipeline

from .nodes import plot_controller_decisions, train_model

# What a training run reads from the catalog (the controller study trains from the same).
TRAINING_INPUTS = [
    "samples",
    "images",
    "encoded_texts",
    "answer_vocab",
    "tokenizer",
    "params:model",
    "params:training",
]


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                train_model,
                [*TRAINING_INPUTS, "params:tasks", "initial_weights"],
                ["trained_model", "training_curves", "training_history"],
                name="train_model",
            ),
            Node(
                plot_controller_decisions,
                "training_curves",
                "controller_decisions_plot",
                name="plot_controller_decisions",
            ),
        ]
    )
