"""Few-shot prompting: golden prompt text, the permutation control, exact likelihood scoring."""
from __future__ import annotations

import pytest
import torch

from lqae_cli.errors import LQAEError
from lqae_cli.fewshot import (build_prompt, class_log_likelihoods, sample_episodes, vocabulary_permutation,
                              wilson_interval)

GOLDEN = """Classify each image into one of: bag, sneaker.

image: apple river
answer: bag

image: stone cloud
answer: sneaker

image: green light
answer:"""


def test_prompt_golden_text():
    p = build_prompt([("apple river", "bag"), ("stone cloud", "sneaker")], "green light", ["bag", "sneaker"])
    assert p == GOLDEN
    assert build_prompt([("a b", "x")], "c d") == "image: a b\nanswer: x\n\nimage: c d\nanswer:"


def test_permutation_is_a_bijection_applied_to_examples_and_query():
    allowed = list(range(100, 160))
    perm = vocabulary_permutation(allowed, seed=3)
    assert sorted(perm) == allowed and sorted(perm.values()) == allowed
    assert any(k != v for k, v in perm.items())
    assert perm == vocabulary_permutation(allowed, seed=3)
    vocab = {i: f"w{i}" for i in allowed}
    inv = {f"w{i}": i for i in allowed}
    words = ["w100 w101", "w102 w103", "w104 w105"]
    permuted = [" ".join(vocab[perm[inv[w]]] for w in line.split()) for line in words]
    prompt = build_prompt([(permuted[0], "a"), (permuted[1], "b")], permuted[2])
    for line in words:  # no original word survives unless the permutation fixed it
        for w in line.split():
            if perm[inv[w]] != inv[w]:
                assert f" {w} " not in f" {prompt} ".replace("\n", " ")
    back = {v: k for k, v in perm.items()}
    assert [" ".join(vocab[back[inv[w]]] for w in line.split()) for line in permuted] == words


@pytest.fixture(scope="module")
def tiny_causal_lm():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    words = ["image", ":", "answer", "classify", "each", "into", "one", "of", ",", ".", "apple", "river", "stone",
             "cloud", "bag", "sneaker", "ankle", "boot", "green", "light"]
    vocab = {"[UNK]": 0, **{w: i + 1 for i, w in enumerate(words)}}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]")
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(vocab), n_positions=128, n_embd=32, n_layer=2, n_head=2)).eval()
    return model, tok


def full_pass_log_likelihood(model, tok, prompt: str, name: str) -> float:
    """Independent recomputation: one forward over prompt + name, no cache."""
    p = tok(prompt, add_special_tokens=False).input_ids
    c = tok(" " + name, add_special_tokens=False).input_ids
    ids = torch.tensor([p + c])
    with torch.no_grad():
        logp = model(ids).logits[0].log_softmax(-1)
    return float(sum(logp[len(p) - 1 + j, t] for j, t in enumerate(c)))


def test_scoring_matches_full_likelihood_and_picks_max(tiny_causal_lm):
    model, tok = tiny_causal_lm
    prompt = build_prompt([("apple river", "bag"), ("stone cloud", "ankle boot")], "green light", ["bag", "ankle boot", "sneaker"])
    classes = ["bag", "ankle boot", "green light", "sneaker"]  # two multi-token names in a row: the cache is cropped between them
    scores = class_log_likelihoods(model, tok, prompt, classes)
    expected = [full_pass_log_likelihood(model, tok, prompt, c) for c in classes]
    assert scores == pytest.approx(expected, abs=1e-4)
    assert max(range(4), key=lambda i: scores[i]) == max(range(4), key=lambda i: expected[i])


def test_episodes_are_balanced_and_seeded():
    labels = ["a"] * 6 + ["b"] * 6 + ["c"] * 6
    eps = sample_episodes(labels, 2, 3, 20, seed=1)
    assert eps == sample_episodes(labels, 2, 3, 20, seed=1)
    for ep in eps:
        assert len(ep.support) == 6 and ep.answer in ep.classes
        assert ep.query not in [i for i, _ in ep.support] and labels[ep.query] == ep.answer
        assert all(labels[i] == l for i, l in ep.support)
    with pytest.raises(LQAEError):
        sample_episodes(labels, 4, 1, 1, seed=0)


def test_wilson_interval():
    lo, hi = wilson_interval(20, 40)
    assert lo < 0.5 < hi and 0.3 < lo and hi < 0.7
