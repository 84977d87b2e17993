import pytest
import torch

from conftest import VOCAB
from lqae_cli.lm import DEFAULT_LM, LanguageModel, LMError


def test_allowed_vocabulary_excludes_specials(tiny_lm):
    allowed = set(tiny_lm.tokens(tiny_lm.allowed_ids("all").tolist()))
    assert not any(t.startswith("[") for t in allowed)
    assert {"apple", "##ing", "42", ",", "über"} <= allowed


def test_whole_words_rule(tiny_lm):
    words = set(tiny_lm.tokens(tiny_lm.allowed_ids("words").tolist()))
    assert "apple" in words
    assert not words & {"##ing", "##ed", "1", "42", ",", ".", "!", "über", "[MASK]"}


def test_token_ids_through_vocabulary_not_tokenizer(tiny_lm):
    for i, tok in enumerate(VOCAB):
        assert tiny_lm.token_id(tok) == i
    assert tiny_lm.token_id("applepie") is None
    assert tiny_lm.mask_id == VOCAB.index("[MASK]")


def test_fingerprint_identifies_lm(tiny_lm, other_lm_dir):
    other = LanguageModel.load(str(other_lm_dir))
    assert len(tiny_lm.fingerprint) == 16
    assert tiny_lm.fingerprint == LanguageModel.load(str(tiny_lm.lm_dir)).fingerprint
    assert tiny_lm.fingerprint != other.fingerprint


def test_hidden_states_use_positions_and_no_word_lookup(tiny_lm):
    emb = tiny_lm.word_embeddings[[10, 11, 12]].unsqueeze(0)
    h = tiny_lm.hidden_states(emb)
    assert h.shape == (1, 3, tiny_lm.hidden_size)
    # the same word at two positions gives different states: position embeddings were added
    same = tiny_lm.word_embeddings[[10, 10]].unsqueeze(0)
    hs = tiny_lm.hidden_states(same)
    assert not torch.allclose(hs[0, 0], hs[0, 1])
    assert all(not p.requires_grad for p in tiny_lm.transformer.parameters())


def test_hidden_states_of_several_layers_end_with_the_last(tiny_lm):
    emb = tiny_lm.word_embeddings[[10, 11, 12]].unsqueeze(0)
    both = tiny_lm.hidden_states(emb, layers=2)
    D = tiny_lm.hidden_size
    assert tiny_lm.num_layers == 2 and both.shape == (1, 3, 2 * D)
    assert torch.allclose(both[..., D:], tiny_lm.hidden_states(emb), atol=1e-6)
    assert not torch.allclose(both[..., :D], both[..., D:])  # the first layer's output, not the last twice
    with pytest.raises(LMError, match="has 2"):
        tiny_lm.hidden_states(emb, layers=3)


def test_layer_count_without_a_known_config_key_is_one(tiny_lm_dir, tmp_path):
    import json
    import shutil

    odd = tmp_path / "odd_lm"
    shutil.copytree(tiny_lm_dir, odd)
    cfg = json.loads((odd / "config.json").read_text())
    cfg["n_layers"] = cfg.pop("num_hidden_layers")  # DistilBERT's spelling
    (odd / "config.json").write_text(json.dumps(cfg))
    assert LanguageModel.load(str(odd)).num_layers == 2
    del cfg["n_layers"]
    (odd / "config.json").write_text(json.dumps(cfg))
    assert LanguageModel.load(str(odd)).num_layers == 1  # unknown: the last layer is always readable


def test_packaged_minilm_loads_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    lm = LanguageModel.load(DEFAULT_LM)
    assert lm.word_embeddings.shape == (30522, 384)
    assert lm.vocab[lm.mask_id] == "[MASK]"
    words = lm.allowed_ids("words")
    assert 20000 < len(words) < len(lm.allowed_ids("all")) < 30522
    h = lm.hidden_states(lm.word_embeddings[words[:5]].unsqueeze(0))
    assert h.shape == (1, 5, 384) and torch.isfinite(h).all()


def _plain_sha1(lm) -> str:
    import hashlib

    h = hashlib.sha1("\n".join(lm.vocab).encode("utf-8"))
    h.update(lm.word_embeddings.contiguous().numpy().data)
    return h.hexdigest()[:16]


def test_fingerprint_cache_follows_the_files(tmp_path):
    """The fingerprint is cached per machine, keyed by the model files; a changed table hashes again,
    and an LM made in memory (not read from its files as they are) never uses the cache."""
    import json
    import os

    from conftest import make_tiny_lm
    from safetensors.torch import load_file, save_file

    from lqae_cli.lm import FINGERPRINT_CACHE
    from lqae_cli.runtime import cache_file

    d = make_tiny_lm(tmp_path / "lm")
    first = LanguageModel.load(str(d))
    assert first.fingerprint == _plain_sha1(first)
    assert first.fingerprint in json.loads(cache_file(FINGERPRINT_CACHE).read_text()).values()
    assert LanguageModel.load(str(d)).fingerprint == first.fingerprint          # from the cache now
    tensors = load_file(str(d / "model.safetensors"))
    key = next(k for k in tensors if k.endswith("word_embeddings.weight"))
    tensors[key] = tensors[key] + 1
    save_file(tensors, str(d / "model.safetensors"))
    os.utime(d / "model.safetensors", ns=(1, 1))                              # whatever the clock did
    changed = LanguageModel.load(str(d))
    assert changed.fingerprint == _plain_sha1(changed) != first.fingerprint
    made = LanguageModel(name="x", lm_dir=d, vocab=changed.vocab, word_embeddings=changed.word_embeddings * 2)
    assert made.fingerprint == _plain_sha1(made) != changed.fingerprint


def test_whole_words_rule_matches_the_plain_definition(tmp_path):
    """The vectorised rule keeps exactly the tokens matching ^[a-z]+$ (first id of a repeated token)."""
    from lqae_cli.lm import _WHOLE_WORD

    vocab = ["[PAD]", "", "a", "cat", "Cat", "cat", "##s", "über", "naïve", "zz", "x1", "a b", "z", "ab\u0000", "é", "q"]
    lm = LanguageModel(name="x", lm_dir=tmp_path, vocab=vocab, word_embeddings=torch.zeros(len(vocab), 4))
    seen, want = set(), []
    for i, t in enumerate(vocab):
        if _WHOLE_WORD.match(t) and t not in seen:
            seen.add(t)
            want.append(i)
    assert lm.allowed_ids("words").tolist() == want == [2, 3, 9, 12, 15]


def _transformers_states(lm_dir, embeds, layers):
    from transformers import AutoModel

    hf = AutoModel.from_pretrained(str(lm_dir), use_safetensors=True).eval().requires_grad_(False)
    out = hf(inputs_embeds=embeds, attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long), output_hidden_states=True)
    return out.last_hidden_state if layers == 1 else torch.cat(out.hidden_states[-layers:], dim=-1)


@pytest.mark.parametrize("mode", ["inference", "autograd", "bf16"])
def test_native_bert_gives_the_numbers_of_transformers(tiny_lm_dir, mode):
    """bert.py computes BERT without importing transformers; its outputs (and the gradients reaching the
    input embeddings) are the very numbers transformers' BertModel gives."""
    from lqae_cli.bert import Bert

    lm = LanguageModel.load(str(tiny_lm_dir))
    assert isinstance(lm.transformer, Bert)
    g = torch.Generator().manual_seed(0)
    for batch, layers in ((1, 1), (5, 2)):
        embeds = lm.word_embeddings[torch.randint(0, len(VOCAB), (batch, 9), generator=g)] * 3
        if mode == "autograd":
            mine, theirs = embeds.clone().requires_grad_(True), embeds.clone().requires_grad_(True)
            a, b = lm.hidden_states(mine, layers), _transformers_states(tiny_lm_dir, theirs, layers)
            a.square().sum().backward()
            b.square().sum().backward()
            assert torch.equal(mine.grad, theirs.grad)
        else:
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode == "bf16"):
                a, b = lm.hidden_states(embeds, layers), _transformers_states(tiny_lm_dir, embeds, layers)
        assert a.dtype == b.dtype and torch.equal(a, b)


def test_packaged_minilm_runs_natively_with_the_numbers_of_transformers():
    from lqae_cli.bert import Bert

    lm = LanguageModel.load(DEFAULT_LM)
    embeds = lm.word_embeddings[lm.allowed_ids("words")[:132]].view(2, 66, -1)
    with torch.inference_mode():
        ours = lm.hidden_states(embeds, layers=6)
        assert isinstance(lm.transformer, Bert)
        assert torch.equal(ours, _transformers_states(lm.lm_dir, embeds, 6))


@pytest.mark.parametrize("change", [{"position_embedding_type": "relative_key"}, {"hidden_act": "gelu_new"},
                                    {"is_decoder": True}, "no weights", "half weights"])
def test_anything_but_a_plain_bert_goes_to_transformers(tiny_lm_dir, tmp_path, change):
    """Configurations bert.py does not compute exactly as transformers does, and weights it does not
    recognise, are left to transformers (which then runs them, or says what is wrong)."""
    import json
    import shutil

    from safetensors.torch import load_file, save_file

    from lqae_cli.bert import Bert, load_bert

    d = tmp_path / "lm"
    shutil.copytree(tiny_lm_dir, d)
    if isinstance(change, dict):
        (d / "config.json").write_text(json.dumps({**json.loads((d / "config.json").read_text()), **change}))
    else:
        tensors = load_file(str(d / "model.safetensors"))
        if change == "no weights":
            tensors = {k: v for k, v in tensors.items() if "layer.1.output.dense" not in k}
        else:
            tensors = {k: v.half() for k, v in tensors.items()}
        save_file(tensors, str(d / "model.safetensors"))
    assert load_bert(d) is None
    if change == {"position_embedding_type": "relative_key"}:
        lm = LanguageModel.load(str(d))
        assert not isinstance(lm.transformer, Bert) and lm.hidden_states(lm.word_embeddings[:3][None]).shape == (1, 3, 32)
