import warnings

import numpy as np
import pytest
import torch

from slimkit.errors import ConfigError
from slimkit.transformers import TruncationWarning, embed, tokenize


def test_embeddings_match_sentence_transformers(encoder, sentence_module, sentences):
    st = pytest.importorskip("sentence_transformers")
    ours = embed(sentence_module, encoder.tokenizer, sentences, max_length=encoder.max_length)
    assert ours.shape == (len(sentences), 384)
    torch.testing.assert_close(ours.norm(dim=1), torch.ones(len(sentences)), atol=1e-5, rtol=0)
    ref = st.SentenceTransformer(str(encoder.folder), device="cpu").encode(sentences)
    assert np.abs(ours.numpy() - ref).max() < 1e-4
    # Paraphrases are closer than unrelated pairs.
    sim = ours @ ours.T
    assert sim[0, 1] > sim[0, 2] + 0.2 and sim[2, 3] > sim[2, 4] + 0.2


def test_long_sentence_truncated_with_warning(encoder, sentence_module):
    long = " ".join(["word"] * 600)
    with pytest.warns(TruncationWarning, match="max length of 256 tokens"):
        emb = embed(
            sentence_module, encoder.tokenizer, [long, "short"], max_length=encoder.max_length
        )
    assert emb.shape == (2, 384) and torch.isfinite(emb).all()


def test_short_sentences_do_not_warn(encoder):
    with warnings.catch_warnings():
        warnings.simplefilter("error", TruncationWarning)
        batch = tokenize(encoder.tokenizer, ["a b c", "hello"], 256)
    assert batch["input_ids"].shape[0] == 2


def test_bad_sentences(encoder):
    with pytest.raises(ConfigError, match="non-empty"):
        tokenize(encoder.tokenizer, [], 256)
    with pytest.raises(ConfigError, match="must be strings"):
        tokenize(encoder.tokenizer, ["ok", 3], 256)
