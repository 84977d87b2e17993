import pytest
import torch

from lqae_cli.errors import LQAEError
from lqae_cli.quantizer import WordQuantizer, usage_stats


@pytest.fixture()
def quantizer(tiny_lm):
    return WordQuantizer(tiny_lm.word_embeddings, tiny_lm.allowed_ids("all"), match_dim=8)


def brute_force(q: WordQuantizer, u: torch.Tensor) -> torch.Tensor:
    """The definition: fp32 unit vectors, float64 dot products, ties to the lower id."""
    u = torch.nn.functional.normalize(u, dim=-1).double()
    scores = u @ q.match_codes.double().T
    best = scores.max(-1, keepdim=True).values
    rows = torch.where(scores == best, torch.arange(scores.shape[-1]), scores.shape[-1]).min(-1).values
    return q.allowed_ids[rows]


@pytest.mark.parametrize("method", ["auto", "dense", "kdtree", "faiss"])
def test_exact_nearest_matches_brute_force(quantizer, method):
    u = torch.randn(500, 8, generator=torch.Generator().manual_seed(1))
    assert torch.equal(quantizer.nearest_ids(u, method=method), brute_force(quantizer, u))


def test_every_search_agrees_on_exact_ties_and_borders(quantizer):
    """Queries exactly between two codes, on a code, and halfway to a code's antipode: the tree and the
    faiss lists cannot tell such rows apart by distance, hand them to the dense pass, and all three give
    the brute-force word."""
    g = torch.Generator().manual_seed(5)
    codes = quantizer.match_codes
    a, b = torch.randint(len(codes), (300,), generator=g), torch.randint(len(codes), (300,), generator=g)
    u = torch.cat([codes[a] + codes[b], codes[a], codes[a] - codes[b], torch.randn(3000, 8, generator=g)])
    ref = brute_force(quantizer, u)
    for method in ("kdtree", "faiss", "dense"):
        assert torch.equal(quantizer.nearest_ids(u, method=method), ref)
    assert torch.equal(quantizer.nearest_ids(u), ref)  # 3,900 rows: "auto" takes faiss


def test_near_ties_decided_exactly(quantizer):
    """Vectors halfway between two words, nudged by far less than bf16 can see: the float64
    re-scoring, not the bf16 pass, has to pick the winner."""
    g = torch.Generator().manual_seed(3)
    codes = quantizer.match_codes
    a, b = torch.randint(len(codes), (400,), generator=g), torch.randint(len(codes), (400,), generator=g)
    u = codes[a] + codes[b] + 1e-4 * torch.randn(400, codes.shape[1], generator=g)
    assert torch.equal(quantizer.nearest_ids(u), brute_force(quantizer, u))
    # the dense pass alone (what GPUs and small CPU batches use) gives the same words
    rows = quantizer._nearest_rows(torch.nn.functional.normalize(u, dim=-1))
    assert torch.equal(quantizer.allowed_ids[rows], brute_force(quantizer, u))
    assert int(quantizer.nearest_ids(torch.zeros(1, 8))[0]) == int(quantizer.allowed_ids.min())  # all tie: lowest id


def test_search_when_every_word_points_away(quantizer):
    """Codes in a narrow cone, queries from the opposite side: every score is negative, and the
    padding of the bf16 pass must not stand in for a word."""
    g = torch.Generator().manual_seed(4)
    axis = torch.zeros(8)
    axis[0] = 1
    cone = torch.nn.functional.normalize(axis + 0.1 * torch.randn(len(quantizer.match_codes), 8, generator=g), dim=-1)
    quantizer.match_codes.copy_(cone)
    quantizer.build_search_codes()
    u = -axis + 0.3 * torch.randn(200, 8, generator=g)
    for method in ("dense", "kdtree", "faiss"):
        assert torch.equal(quantizer.nearest_ids(u, method=method), brute_force(quantizer, u))
        with pytest.raises(LQAEError, match="non-finite"):
            quantizer.nearest_ids(torch.full((1, 8), float("nan")), method=method)


def test_nearest_independent_of_batch_and_chunk(quantizer):
    u = torch.randn(300, 8, generator=torch.Generator().manual_seed(2))
    full = quantizer.nearest_ids(u)
    assert torch.equal(torch.cat([quantizer.nearest_ids(c) for c in u.split(7)]), full)
    assert torch.equal(quantizer.nearest_ids(u, chunk=13), full)
    assert torch.equal(quantizer.nearest_ids(u[:1]), full[:1])


def test_ties_go_to_lower_id(tiny_lm):
    emb = tiny_lm.word_embeddings.clone()
    allowed = tiny_lm.allowed_ids("all")
    a, b = int(allowed[3]), int(allowed[7])
    emb[b] = emb[a]  # two words with identical embeddings
    q = WordQuantizer(emb, allowed, match_dim=8)
    code = q.match_codes[q.row_of_id[a]]
    for method in ("dense", "kdtree", "faiss"):
        assert int(q.nearest_ids(code.unsqueeze(0), method=method)[0]) == min(a, b)


def test_special_tokens_never_chosen(quantizer, tiny_lm):
    ids = quantizer.nearest_ids(torch.randn(2000, 8))
    assert set(ids.tolist()) <= set(tiny_lm.allowed_ids("all").tolist())
    specials = {tiny_lm.mask_id, tiny_lm.cls_id, tiny_lm.sep_id, tiny_lm.token_id("[PAD]"), tiny_lm.token_id("[unused0]")}
    assert not specials & set(ids.tolist())


def test_forward_passes_raw_embeddings_with_straight_through(quantizer):
    u = torch.randn(2, 64, 8, requires_grad=True)
    out = quantizer(u)
    assert torch.allclose(out.embeds, quantizer.codebook[out.ids], atol=1e-6)
    out.embeds.sum().backward()
    assert u.grad is not None and u.grad.abs().sum() > 0
    assert out.commit_loss.item() >= 0


def test_usage_stats():
    s = usage_stats(torch.tensor([1, 1, 2, 3]))
    assert s["distinct"] == 3 and abs(s["top_share"] - 0.5) < 1e-9
    assert 2.5 < s["perplexity"] < 3


def test_position_dither_spreads_a_flat_region(tiny_lm):
    plain = WordQuantizer(tiny_lm.word_embeddings, tiny_lm.allowed_ids("all"), match_dim=8, num_positions=16)
    dithered = WordQuantizer(tiny_lm.word_embeddings, tiny_lm.allowed_ids("all"), match_dim=8, num_positions=16,
                             position_dither=1.0)  # unit-variance vectors, as the encoder BatchNorm gives
    flat = torch.randn(1, 1, 8, generator=torch.Generator().manual_seed(0)).expand(3, 16, 8)  # the same vector at every position, 3 images
    assert len(set(plain.nearest_ids(plain.dithered(flat)).flatten().tolist())) == 1
    ids = dithered.nearest_ids(dithered.dithered(flat))
    assert len(set(ids[0].tolist())) > 4
    assert torch.equal(ids[0], ids[1])  # deterministic: same position, same word


def test_faiss_lists_are_cached_and_a_bad_cache_is_rebuilt(quantizer, monkeypatch, tmp_path):
    """The neighbour lists are built once per set of codes and read back after; a cache file that is
    truncated or of the wrong shape is rebuilt."""
    from lqae_cli import search

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    first = search.ListSearch(quantizer.match_codes)
    files = list((tmp_path / "lqae").glob("search-*.safetensors"))
    assert len(files) == 1
    u = torch.nn.functional.normalize(torch.randn(3000, 8, generator=torch.Generator().manual_seed(6)), dim=-1)
    ref_rows = quantizer.row_of_id[brute_force(quantizer, u)]

    def certified(s):
        rows, unsure = s.rows(u.numpy())
        keep = torch.ones(len(u), dtype=torch.bool)
        keep[torch.from_numpy(unsure)] = False
        return torch.from_numpy(rows)[keep], keep

    rows, keep = certified(first)
    assert keep.float().mean() > 0.5 and torch.equal(rows, ref_rows[keep])

    built = []
    monkeypatch.setattr(search.ListSearch, "build", lambda self: built.append(1) or (_ for _ in ()).throw(AssertionError))
    again = search.ListSearch(quantizer.match_codes)  # read from the cache: no build
    assert not built and torch.equal(certified(again)[0], rows)

    monkeypatch.undo()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    lists, reach = first.lists.copy(), first.reach.copy()
    reach[:, -1] = 10.0
    from safetensors.numpy import save

    files[0].write_bytes(save({"lists": lists[:, :4].copy(), "reach": reach}))
    assert torch.equal(certified(search.ListSearch(quantizer.match_codes))[0], rows)
    files[0].write_bytes(files[0].read_bytes()[:100])  # truncated
    assert torch.equal(certified(search.ListSearch(quantizer.match_codes))[0], rows)


def test_without_faiss_large_batches_take_the_tree_or_the_dense_pass(tiny_lm, monkeypatch):
    """faiss is optional: where it is missing, the first large CPU batch times the k-d tree against the
    dense pass and keeps the faster; the words are the same."""
    from lqae_cli import quantizer as qmod

    monkeypatch.setattr(qmod, "faiss_available", lambda: False)
    q = WordQuantizer(tiny_lm.word_embeddings, tiny_lm.allowed_ids("all"), match_dim=8)
    u = torch.randn(qmod.KDTREE_MIN_ROWS + 100, 8, generator=torch.Generator().manual_seed(8))
    assert torch.equal(q.nearest_ids(u), brute_force(q, u))
    assert q.cpu_search in ("kdtree", "dense") and q._lists is None
    assert "faiss is not installed" in qmod.describe_search(torch.device("cpu"))
