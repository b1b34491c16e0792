import pytest

from meddialog.evaluation.scoring import (
    repetition,
    rouge_l,
    score,
    sentence_bleu,
    tokenize,
)


@pytest.fixture(scope="module")
def embedder():
    from meddialog.evaluation.scoring import Embedder

    return Embedder()


def test_tokenisation_is_lowercase_words_and_punctuation():
    assert tokenize("Take 2 tablets, then REST.") == ["take", "2", "tablets", ",", "then", "rest", "."]


def test_identical_answers_score_one(embedder):
    text = "Drink plenty of fluids and rest for two days, then see your doctor if the fever persists."
    metrics = score([text, text], [text, text], embedder)
    for key in ("bleu", "sentence_bleu", "rouge1", "rouge2", "rougeL"):
        assert metrics[key] == pytest.approx(1.0), key
    assert metrics["empty_rate"] == 0.0 and metrics["repetition"] == 0.0
    assert metrics["similarity"] == pytest.approx(1.0, abs=1e-5)


def test_disjoint_answers_score_zero(embedder):
    metrics = score(["alpha beta gamma delta"], ["one two three four"], embedder)
    for key in ("bleu", "rouge1", "rouge2", "rougeL"):
        assert metrics[key] == pytest.approx(0.0, abs=1e-9), key


def test_known_pair_by_hand(embedder):
    # reference: the cat sat on the mat (6 tokens); prediction: the cat sat (3 tokens)
    # ROUGE-1: P = 3/3, R = 3/6 → F1 = 2·1·0.5 / 1.5 = 2/3; ROUGE-2: P = 2/2, R = 2/5 → F1 = 4/7
    # ROUGE-L: LCS = 3 → same as ROUGE-1 = 2/3
    metrics = score(["the cat sat"], ["the cat sat on the mat"], embedder)
    assert metrics["rouge1"] == pytest.approx(2 / 3, abs=1e-6)
    assert metrics["rouge2"] == pytest.approx(4 / 7, abs=1e-6)
    assert metrics["rougeL"] == pytest.approx(2 / 3, abs=1e-6)
    # BLEU: p1 = p2 = 1, p3 = 1/1, p4 = 0 → smoothed (method 1: 0.1/1); brevity penalty e^(1-6/3) = e^-1
    import math

    expected = math.exp(-1) * (1 * 1 * 1 * 0.1) ** 0.25
    assert metrics["bleu"] == pytest.approx(expected, rel=1e-6)
    assert sentence_bleu("the cat sat", "the cat sat on the mat") == pytest.approx(expected, rel=1e-6)
    assert rouge_l("the cat sat", "the cat sat on the mat") == pytest.approx(2 / 3, abs=1e-6)


def test_lengths_repetition_and_empty_rate(embedder):
    metrics = score(["", "a b c a b c"], ["x y", "x y"], embedder)
    assert metrics["empty_rate"] == 0.5
    assert metrics["answer_words_mean"] == 3.0 and metrics["answer_words_median"] == 3.0
    # "a b c a b c": 3-grams abc, bca, cab, abc → 1 of 4 repeats
    assert repetition("a b c a b c") == pytest.approx(0.25)
    assert metrics["repetition"] == pytest.approx(0.125)


def test_mismatched_lengths_raise(embedder):
    with pytest.raises(ValueError):
        score(["a"], ["a", "b"], embedder)


def test_minilm_similarity_from_the_embedded_wheel(embedder):
    close, far, empty = embedder.cosine(
        ["Chest pain needs urgent assessment.", "The capital of France is Paris.", ""],
        ["Pain in the chest should be checked urgently.", "Chest pain needs urgent assessment.", "Anything."])
    assert 0.6 < close <= 1.0 + 1e-6
    assert far < close and empty == 0.0
