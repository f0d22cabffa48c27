from conftest import run_pipeline
from tokenizers import Tokenizer

from multimodal_doubleloop.data.tokenizer import PAD_ID, encode, train_tokenizer
from multimodal_doubleloop.models.starting_point import StartingPoint
from multimodal_doubleloop.pipelines.tokenization import create_pipeline


def test_tokenizer_round_trip():
    texts = ["what color is the shape?", "is there a red circle in the image?", "what shape is present?"]
    tok = train_tokenizer(texts, vocab_size=100)
    reloaded = Tokenizer.from_str(tok.to_str())
    for text in texts:
        ids = reloaded.encode(text).ids
        assert ids[0] == reloaded.token_to_id("[CLS]") and ids[-1] == reloaded.token_to_id("[SEP]")
        assert reloaded.decode(ids) == text


def test_encode_pads_truncates_and_masks():
    tok = train_tokenizer(["a b c d e f g"], vocab_size=60)
    ids, mask = encode(tok, ["a b", "a b c d e f g"], max_length=5)
    assert ids.shape == (2, 5) and mask.tolist() == [[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]]
    assert ids[0, -1] == PAD_ID
    # encoding does not change the tokenizer passed in (padding is applied to a copy)
    assert tok.padding is None and tok.truncation is None


def test_tokenizer_trained_on_train_split_only(samples, tokenized):
    vocab = Tokenizer.from_str(tokenized["tokenizer"]).get_vocab()
    assert "[PAD]" in vocab and vocab["[PAD]"] == PAD_ID
    assert tokenized["answer_vocab"] == sorted(samples.loc[samples.split == "train", "answer"].unique())


def test_tokenization_pipeline_on_memory_catalog(samples, tokenization_params):
    catalog = run_pipeline(create_pipeline(), {"samples": samples, "initial_weights": StartingPoint(), "params:tokenization": tokenization_params})
    encoded = catalog.load("encoded_texts")
    assert encoded["input_ids"].shape == (len(samples), tokenization_params["max_length"])
    assert (encoded["sample_id"] == samples["sample_id"].to_numpy()).all()
    assert encoded["attention_mask"][:, 0].all()


def test_tokenizer_training_is_reproducible_across_processes():
    """Token ids must not depend on hash seeds: a rerun's tokenizer must match the
    checkpoint it resumes from."""
    import os
    import subprocess
    import sys

    code = (
        "import easy_vqa; from multimodal_doubleloop.data.tokenizer import train_tokenizer, fingerprint;"
        "print(fingerprint(train_tokenizer(easy_vqa.get_train_questions()[0][:3000], 500).to_str()))"
    )
    prints = {
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                       env={**os.environ, "PYTHONHASHSEED": str(seed)}).stdout.strip().splitlines()[-1]
        for seed in (1, 2)
    }
    assert len(prints) == 1


def test_bad_tokenization_params_fail_with_key_path(samples):
    import pytest

    from multimodal_doubleloop.pipelines.tokenization.nodes import fit_tokenizer

    with pytest.raises(ValueError, match=r"unknown key\(s\) \['vocab'\] in tokenization"):
        fit_tokenizer(samples, StartingPoint(), {"vocab": 10})
    with pytest.raises(ValueError, match=r"tokenization.max_length='16' has type str"):
        fit_tokenizer(samples, StartingPoint(), {"max_length": "16"})


def test_word_set_matches_the_pre_tokenizer():
    from multimodal_doubleloop.data.tokenizer import _words

    texts = ["Héllo, WORLD!! a—b c's naïve café 東京 $5 <tag> x_y", "  tabs\tand\nnewlines ", "", "¿Qué? ¡Sí!"]
    tok = train_tokenizer(texts, vocab_size=80)
    expected = {
        w for t in texts for w, _ in tok.pre_tokenizer.pre_tokenize_str(tok.normalizer.normalize_str(t))
    }
    assert _words(tok, texts) == expected and "東" in expected and "hello" in expected
