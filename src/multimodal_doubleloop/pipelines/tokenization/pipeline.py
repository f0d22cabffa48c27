from kedro.pipeline import Node, Pipeline

from .nodes import build_answer_vocab, encode_texts, fit_tokenizer


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                fit_tokenizer, ["samples", "initial_weights", "params:tokenization"], "tokenizer", name="fit_tokenizer"
            ),
            Node(
                encode_texts,
                ["samples", "tokenizer", "params:tokenization"],
                "encoded_texts",
                name="encode_texts",
            ),
            Node(build_answer_vocab, "samples", "answer_vocab", name="build_answer_vocab"),
        ]
    )
