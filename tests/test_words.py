"""Fewer words per image: `--words K|auto`, the mask mark in every format, the detail order."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import lqae_cli as lqae
from lqae_cli.keep import auto_candidates, detail_scores, keep_masks, keep_order
from lqae_cli.tokens import MASK_MARK

from conftest import write_images


@pytest.fixture()
def tok(tiny_ckpt):
    return lqae.load(tiny_ckpt, device="cpu")


@pytest.fixture()
def pictures(tmp_path):
    """Six 16x16 pictures: a flat background with a bright square in a different place in each."""
    paths = []
    for i in range(6):
        a = np.full((16, 16, 3), 230, np.uint8)
        y, x = divmod(i, 3)
        a[2 + 4 * y:8 + 4 * y, 2 + 3 * x:8 + 3 * x] = (200 * (i % 2), 40 * i, 255 - 30 * i)
        paths.append(tmp_path / f"p{i}.png")
        Image.fromarray(a).save(paths[-1])
    return paths


def test_detail_scores_rank_flat_patches_last_and_ties_in_position_order():
    x = torch.full((1, 3, 16, 16), 0.5)
    x[0, :, 4:8, 8:12] = 1.0                                  # one bright patch (row 1, column 2 of 4x4)
    s = detail_scores(x, 4)
    order = keep_order(s)[0].tolist()
    assert order[0] == 1 * 4 + 2                              # the patch unlike its neighbours comes first
    assert set(order[:5]) == {6, 2, 5, 7, 10}                 # then its neighbours (their neighbour differs)
    flat = [p for p in order if s[0, p] == 0]
    assert flat == sorted(flat) and len(flat) == 11           # equal scores: position order
    assert torch.equal(detail_scores(x.repeat(3, 1, 1, 1), 4)[2], s[0])   # per image, whatever the batch
    m = keep_masks(keep_order(s), torch.tensor([3]))
    assert m.sum() == 3 and m[0, 6]
    assert auto_candidates(16) == [4, 8, 12, 16]


def test_kept_words_are_the_full_grids_words_in_place(tok, pictures):
    full = tok.encode(pictures)
    for k in (0, 5, 16):
        part = tok.encode(pictures, words=k)
        for f, p in zip(full, part):
            assert p.kept == k and p.semantic_ids == f.semantic_ids
            for fr, pr, pw in zip(f.ids, p.ids, p.words):
                assert all(a == b or w == MASK_MARK for a, b, w in zip(fr, pr, pw))
    assert [g.text for g in tok.encode(pictures, words=16)] == [g.text for g in full]   # all of them: unchanged


def test_auto_keeps_what_each_image_needs_the_same_on_every_batch_size(tok, pictures):
    a = tok.encode(pictures, words="auto")
    b = tok.encode(pictures, words="auto", batch_size=1)
    assert [g.ids for g in a] == [g.ids for g in b]
    assert all(g.kept in auto_candidates(16) for g in a)
    full = tok.encode(pictures)
    for f, g in zip(full, a):                                 # within the target of the all-words decode
        x = np.asarray(Image.open(g.source if g.source else pictures[0]).convert("RGB"), dtype=np.float64)
        psnr = lambda d: 10 * np.log10(255 ** 2 / np.mean((np.asarray(d, dtype=np.float64) - x) ** 2))
        assert psnr(tok.decode(g, precision="fp32")) >= psnr(tok.decode(f, precision="fp32")) - 0.5 - 1e-6


@pytest.mark.parametrize("fmt", ["text", "ids", "json", "jsonl"])
def test_masked_grids_round_trip_through_every_format(run, pictures, tmp_path, fmt):
    r = run("encode", pictures[0], "--words", "6", "-f", fmt)
    assert r.exit_code == 0, r.stderr
    if fmt == "json":
        rec = json.loads(r.stdout)
        assert sum(w == MASK_MARK for row in rec["tokens"] for w in row) == 10
        assert {i for row, wrow in zip(rec["ids"], rec["tokens"]) for i, w in zip(row, wrow) if w == MASK_MARK} == {9}  # [MASK]
    elif fmt in ("text", "ids"):
        assert sum(line.split().count(MASK_MARK) for line in r.stdout.splitlines()) == 10
    out, ref = tmp_path / f"{fmt}.png", tmp_path / "ref.png"
    assert run("decode", "-", "-o", out, input=r.stdout).exit_code == 0
    run("decode", "-", "-o", ref, input=run("encode", pictures[0], "--words", "6").stdout)
    assert out.read_bytes() == ref.read_bytes()


def test_hand_edits_drop_words_and_an_all_masked_grid_decodes(tok, pictures):
    text = tok.encode(pictures[0]).text.splitlines()
    edited = [text[0].split()[0] + " " + " ".join([MASK_MARK] * 3)] + text[1:]   # three words dropped by hand
    grid = tok.parse("\n".join(edited) + "\n")[0]
    assert grid.kept == 13 and tok.decode(grid).size == (16, 16)
    nothing = tok.parse("\n".join(" ".join([MASK_MARK] * 4) for _ in range(4)) + "\n")[0]
    assert nothing.kept == 0
    img = np.asarray(tok.decode(nothing))
    assert img.shape == (16, 16, 3)
    assert np.array_equal(img, np.asarray(tok.decode(nothing, batch_size=1)))


def test_marks_where_a_format_cannot_hold_them_are_one_line_errors(run, tiny_ckpt):
    grid = "\n".join(" ".join(["apple"] * 4) for _ in range(4)) + "\n"
    r = run("decode", "-", "-o", "x.png", input="[apple _ river]\n" + grid)
    assert r.exit_code == 1 and r.stderr.count("\n") == 1 and "line 1" in r.stderr and "mask mark" in r.stderr
    rec = {"tokens": [["apple"] * 4] * 4, "semantic": ["apple", "_"]}
    r = run("decode", "-", "-o", "x.png", input=json.dumps(rec))
    assert r.exit_code == 1 and r.stderr.count("\n") == 1 and "mask mark" in r.stderr
    r = run("encode", "-", "--words", "17", input=b"")
    assert r.exit_code != 0 and "words 17" in r.stderr
    r = run("decode", "-", "-o", "x.png", input="# size 20x\n" + grid)
    assert r.exit_code == 1 and "line 1" in r.stderr and "size line" in r.stderr


def test_a_batch_folder_encodes_with_words(run, tmp_path):
    write_images(tmp_path / "in", 5)
    r = run("encode", tmp_path / "in", "-o", tmp_path / "out", "--words", "auto")
    assert r.exit_code == 0, r.stderr
    outs = sorted((tmp_path / "out").glob("*.txt"))
    assert len(outs) == 5
    for o in outs:
        assert run("decode", o, "-o", o.with_suffix(".png")).exit_code == 0


def test_training_with_detail_masks_drops_the_least_detailed_words(tiny_model):
    from dataclasses import replace

    tiny_model.cfg = replace(tiny_model.cfg, mask_policy="detail")
    tiny_model.train()
    x = torch.rand(8, 3, 16, 16)
    x[:, :, :8] = 0.5                                          # the top half flat: dropped first
    embeds = tiny_model.quantizer.codebook[tiny_model.encode(x).flatten(1)]
    torch.manual_seed(0)
    out = tiny_model.apply_mask(embeds, x)
    masked = (out == tiny_model.mask_embed).all(-1)            # (B, T)
    order = keep_order(detail_scores(x, 4))
    for b in range(8):
        n = int(masked[b].sum())
        assert set(order[b, 16 - n:].tolist()) == set(masked[b].nonzero().flatten().tolist())
    assert tiny_model(x)["loss"].isfinite()
