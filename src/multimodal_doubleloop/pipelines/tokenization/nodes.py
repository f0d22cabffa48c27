"""Tokenization nodes: WordPiece trained on training texts only."""

from __future__ import annotations

import logging

import pandas as pd
from tokenizers import Tokenizer

from ...data.tokenizer import TokenizationConfig, encode, train_tokenizer
from ...models.starting_point import StartingPoint

logger = logging.getLogger(__name__)


def fit_tokenizer(samples: pd.DataFrame, initial_weights: StartingPoint, params: dict) -> str:
    """Train on the `train` split's texts; returns the tokenizer as JSON text. A run
    that starts from pretrained weights (a BERT directory, a previous run) takes their
    tokenizer instead, so the text tower reads the tokens it was trained on."""
    if initial_weights.tokenizer is not None:
        source = initial_weights.sources.get("text") or initial_weights.sources.get("init_from")
        logger.info("Tokenizer from %s (not trained): %d tokens", source,
                    Tokenizer.from_str(initial_weights.tokenizer).get_vocab_size())
        return initial_weights.tokenizer
    texts = samples.loc[samples["split"] == "train", "text"].tolist()
    cfg = TokenizationConfig.from_dict(params)
    tokenizer = train_tokenizer(texts, cfg.vocab_size, cfg.min_frequency)
    logger.info("Trained WordPiece tokenizer: %d tokens", tokenizer.get_vocab_size())
    return tokenizer.to_str()


def encode_texts(samples: pd.DataFrame, tokenizer: str, params: dict) -> dict:
    """Token ids and attention masks for every row, aligned with `samples`."""
    max_length = TokenizationConfig.from_dict(params).max_length
    ids, mask = encode(Tokenizer.from_str(tokenizer), samples["text"].tolist(), max_length)
    truncated = int((mask.sum(1) == max_length).sum())
    if truncated:
        logger.warning("%d texts reach tokenization.max_length=%d and may be truncated", truncated, max_length)
    return {"sample_id": samples["sample_id"].to_numpy(dtype=str), "input_ids": ids, "attention_mask": mask}


def build_answer_vocab(samples: pd.DataFrame) -> list[str]:
    """Sorted answers seen in training; other answers score as wrong at evaluation."""
    answers = samples.loc[samples["split"] == "train", "answer"]
    return sorted(a for a in answers.unique() if a)
