"""`lqae show`: sheet sizes, the words drawn are the words encode prints, hand edits change the picture."""
from __future__ import annotations

import json

import pytest
from PIL import Image

from conftest import write_images
from lqae_cli.show import PAD, PANEL, TITLE, font, layout_words, sheet


@pytest.mark.parametrize("n", [1, 3])
def test_sheet_size(run, tmp_path, n):
    imgs = write_images(tmp_path / "in", n)
    out = tmp_path / "card.png"
    r = run("show", *imgs, "-o", out)
    assert r.exit_code == 0, r.stderr
    assert r.stdout == ""
    assert Image.open(out).size == (3 * PANEL + 4 * PAD, n * (PANEL + TITLE + PAD) + PAD)


def test_words_drawn_are_encode_words(run, tmp_path):
    img = write_images(tmp_path / "in", 1)[0]
    tokens = json.loads(run("encode", img, "-f", "json").stdout)["tokens"]
    pil = Image.open(img).convert("RGB").resize((16, 16))
    _, cells = sheet([("x", pil, pil, tokens, None)])
    assert [[c.word for c in cells[0][r * 4:(r + 1) * 4]] for r in range(4)] == tokens
    for c in cells[0]:
        assert c.shown == c.word or (c.shown.endswith("…") and c.word.startswith(c.shown[:-1]))
        assert c.count == sum(row.count(c.word) for row in tokens)


def test_long_words_get_an_ellipsis():
    fnt = font(12)
    cells = layout_words([["internationalization", "a"]], 40, fnt)
    assert cells[0].shown.endswith("…") and fnt.getlength(cells[0].shown) <= 36
    assert cells[1].shown == "a"


def test_hand_edited_tokens_change_the_reconstruction(run, tmp_path):
    img = write_images(tmp_path / "in", 1)[0]
    text = run("encode", img).stdout
    first = text.split()[0]
    edited = text.replace(first, "apple" if first != "apple" else "river", 1)
    (tmp_path / "a.txt").write_text(text)
    (tmp_path / "b.txt").write_text(edited)
    assert run("show", "-t", tmp_path / "a.txt", "-o", tmp_path / "a.png").exit_code == 0
    assert run("show", "-t", tmp_path / "b.txt", "-o", tmp_path / "b.png").exit_code == 0
    a, b = Image.open(tmp_path / "a.png"), Image.open(tmp_path / "b.png")
    box = (PAD + PANEL + PAD, PAD + TITLE, PAD + 2 * PANEL + PAD, PAD + TITLE + PANEL)  # the reconstruction panel
    assert a.crop(box).tobytes() != b.crop(box).tobytes()
