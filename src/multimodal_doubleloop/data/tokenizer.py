"""WordPiece tokenizer trained with Hugging Face `tokenizers`, and batch encoding."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[BOS]", "[EOS]"]
PAD_ID = 0  # "[PAD]" is trained first, so its id is 0


def train_tokenizer(texts: Iterable[str], vocab_size: int, min_frequency: int = 1) -> Tokenizer:
    """BERT-style WordPiece: lowercase + accent stripping, [CLS] text [SEP]."""
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=SPECIAL_TOKENS
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    if tokenizer.token_to_id("[PAD]") != PAD_ID:
        raise RuntimeError("tokenizer training did not put [PAD] at id 0")
    return tokenizer


def encode(tokenizer: Tokenizer, texts: Sequence[str], max_length: int) -> tuple[np.ndarray, np.ndarray]:
    """Encode to (N, max_length) int32 ids and attention mask, truncated and padded."""
    tokenizer = Tokenizer.from_str(tokenizer.to_str())  # copy: padding settings are global
    tokenizer.enable_truncation(max_length)
    tokenizer.enable_padding(pad_id=PAD_ID, pad_token="[PAD]", length=max_length)
    encodings = tokenizer.encode_batch(list(texts))
    ids = np.array([e.ids for e in encodings], dtype=np.int32).reshape(len(texts), max_length)
    mask = np.array([e.attention_mask for e in encodings], dtype=np.int8).reshape(len(texts), max_length)
    return ids, mask
