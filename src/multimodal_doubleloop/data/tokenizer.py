"""WordPiece tokenizer trained with Hugging Face `tokenizers`, and batch encoding."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from tokenizers import (
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[BOS]", "[EOS]"]
PAD_ID = 0  # "[PAD]" is trained first, so its id is 0


def train_tokenizer(texts: Sequence[str], vocab_size: int, min_frequency: int = 1) -> Tokenizer:
    """BERT-style WordPiece: lowercase + accent stripping, [CLS] text [SEP].

    Reproducible: the trainer breaks ties between equally frequent merges in hash
    order, which changes from process to process, so the intermediate pieces it
    keeps vary. We keep only what does not depend on ties (special tokens, single
    characters and whole words) and number them in sorted order, so the same texts
    always give the same tokenizer and a rerun can resume its checkpoints.
    """
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=SPECIAL_TOKENS
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    words = _words(tokenizer, texts)
    learned = tokenizer.get_vocab()
    stable = {t for t in learned if t in words or len(t.removeprefix("##")) == 1}
    ordered = SPECIAL_TOKENS + sorted(stable - set(SPECIAL_TOKENS))
    tokenizer.model = models.WordPiece(
        {token: i for i, token in enumerate(ordered)}, unk_token="[UNK]"
    )
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    if tokenizer.token_to_id("[PAD]") != PAD_ID:
        raise RuntimeError("tokenizer training did not put [PAD] at id 0")
    return tokenizer


def bert_tokenizer(files: dict[str, str], where: str = "the BERT directory") -> str:
    """The tokenizer of a Hugging Face BERT directory, as JSON text: its `tokenizer.json`
    as it is, or a BERT WordPiece over `vocab.txt` (lower-cased unless
    `tokenizer_config.json` says `do_lower_case: false`), [CLS] text [SEP]. [PAD] must
    be id 0, as this project's encoding and attention masks assume."""
    if "tokenizer.json" in files:
        tokenizer = Tokenizer.from_str(files["tokenizer.json"])
    elif "vocab.txt" in files:
        vocab = {token: i for i, token in enumerate(files["vocab.txt"].splitlines())}
        lower = json.loads(files.get("tokenizer_config.json") or "{}").get("do_lower_case", True)
        tokenizer = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
        tokenizer.normalizer = normalizers.BertNormalizer(lowercase=lower, strip_accents=lower or None)
        tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tokenizer.decoder = decoders.WordPiece()
        cls_id, sep_id = vocab.get("[CLS]"), vocab.get("[SEP]")
        if cls_id is None or sep_id is None:
            raise ValueError(f"{where}: vocab.txt has no [CLS] or [SEP]")
        tokenizer.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
        )
    else:
        raise ValueError(f"{where} has neither tokenizer.json nor vocab.txt")
    if tokenizer.token_to_id("[PAD]") != PAD_ID:
        raise ValueError(f"{where}: [PAD] is id {tokenizer.token_to_id('[PAD]')}, this project needs it at 0")
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return tokenizer.to_str()


def _words(tokenizer: Tokenizer, texts: Sequence[str]) -> set[str]:
    """Every distinct word of `texts` after the tokenizer's normaliser and
    pre-tokenizer: the vocabulary a word-level trainer keeps with no frequency floor.
    Counted in Rust on all cores (a Python loop over pre_tokenize_str costs about as
    much as training itself at COCO scale)."""
    words = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    words.normalizer, words.pre_tokenizer = tokenizer.normalizer, tokenizer.pre_tokenizer
    trainer = trainers.WordLevelTrainer(
        vocab_size=2**31 - 1, min_frequency=0, special_tokens=[], show_progress=False
    )
    words.train_from_iterator(texts, trainer=trainer)
    return set(words.get_vocab())


def encode(
    tokenizer: Tokenizer, texts: Sequence[str], max_length: int, chunk: int = 16384
) -> tuple[np.ndarray, np.ndarray]:
    """Encode to (N, max_length) int32 ids and attention mask, truncated and padded.

    Works through `chunk` texts at a time into preallocated arrays, so the transient
    per-text encodings stay bounded however many texts there are (COCO: 590k)."""
    tokenizer = Tokenizer.from_str(tokenizer.to_str())  # copy: padding settings are global
    tokenizer.enable_truncation(max_length)
    tokenizer.enable_padding(pad_id=PAD_ID, pad_token="[PAD]", length=max_length)
    n = len(texts)
    ids = np.empty((n, max_length), dtype=np.int32)
    mask = np.empty((n, max_length), dtype=np.int8)
    for start in range(0, n, chunk):
        # no character offsets: faster, and only the ids are read
        encodings = tokenizer.encode_batch_fast(list(texts[start : start + chunk]))
        stop = start + len(encodings)
        ids[start:stop] = [e.ids for e in encodings]
    np.not_equal(ids, PAD_ID, out=mask, casting="unsafe")  # [PAD] only ever pads
    return ids, mask


def fingerprint(tokenizer_json: str) -> str:
    """SHA-256 of the tokenizer's content, independent of JSON key order."""
    canonical = json.dumps(json.loads(tokenizer_json), sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass
class TokenizationConfig:
    vocab_size: int = 1000  # WordPiece vocabulary cap
    min_frequency: int = 1
    max_length: int = 16  # tokens per text incl. [CLS]/[SEP]

    def __post_init__(self):
        if self.vocab_size < len(SPECIAL_TOKENS) + 1:
            raise ValueError(f"vocab_size={self.vocab_size} must exceed the {len(SPECIAL_TOKENS)} special tokens")
        if self.min_frequency < 1 or self.max_length < 3:
            raise ValueError(
                f"min_frequency={self.min_frequency} must be >= 1 and max_length={self.max_length} >= 3"
            )

    @classmethod
    def from_dict(cls, params: dict) -> TokenizationConfig:
        from ..config import build

        return build(cls, params, "tokenization")
