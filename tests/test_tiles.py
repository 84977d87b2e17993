"""Images of any size: tiles of the checkpoint's size, grids of whole tiles in every format, stitched decodes."""
from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

import lqae_cli as lqae
from lqae_cli.tiles import tile_grid


@pytest.fixture()
def tok(tiny_ckpt):
    return lqae.load(tiny_ckpt, device="cpu")


@pytest.fixture()
def wide(tmp_path):
    """A 48x32 picture (3 x 2 tiles of the tiny checkpoint's 16 pixels)."""
    g = torch.Generator().manual_seed(0)
    arr = (torch.rand(32, 48, 3, generator=g) * 255).byte().numpy()
    path = tmp_path / "wide.png"
    Image.fromarray(arr).save(path)
    return path


def test_native_grid_is_the_tiles_side_by_side_and_each_tile_has_its_own_words(tok, wide):
    grid = tok.encode(wide, size="native")
    assert grid.shape == (8, 12) and grid.pixel_size == (48, 32)
    tiles, rows, cols = tile_grid(Image.open(wide).convert("RGB"), 16)
    alone = tok.encode_pixels(tiles)                                   # every tile encoded by itself
    assert (rows, cols) == (2, 3)
    for t in range(6):
        r, c = divmod(t, 3)
        assert [row[4 * c:4 * c + 4] for row in grid.ids[4 * r:4 * r + 4]] == alone[t].tolist()
    assert tok.encode(wide, size="native", batch_size=1).ids == grid.ids  # whatever the batch size
    assert tok.encode(wide, size=32).shape == (8, 8)                       # longer side 32: 32 x 21 pixels, 2 x 2 tiles
    assert tok.encode(wide).ids == grid.ids        # the default "auto": 48 px is a whole number of tiles, kept as it is
    assert tok.encode(wide, size=16).shape == (4, 4)                       # the checkpoint's size: squashed into one tile
    with pytest.raises(lqae.ConfigError, match="multiple"):
        tok.encode(wide, size=20)


def test_stitched_decode_has_the_image_size_and_is_deterministic(tok, wide):
    grid = tok.encode(wide, size="native")
    a, b = tok.decode(grid), tok.decode(grid, batch_size=2)
    assert a.size == (48, 32) and np.array_equal(np.asarray(a), np.asarray(b))
    odd = Image.open(wide).crop((0, 0, 40, 27))
    g = tok.encode(odd, size="native")
    assert g.shape == (8, 12) and tok.decode(g).size == (40, 27)   # padded to whole tiles, cropped back


@pytest.mark.parametrize("fmt", ["text", "json", "jsonl", "ids"])
def test_every_format_round_trips_a_non_square_image(run, wide, tmp_path, fmt):
    r = run("encode", wide, "--size", "native", "-f", fmt)
    assert r.exit_code == 0, r.stderr
    if fmt == "json":
        rec = json.loads(r.stdout)
        assert rec["grid"] == [8, 12] and rec["tile"] == 16 and rec["size"] == [48, 32]
    out = tmp_path / f"{fmt}.png"
    d = run("decode", "-", "-o", out, input=r.stdout)
    assert d.exit_code == 0, d.stderr
    assert Image.open(out).size == (48, 32)
    ref = tmp_path / "ref.png"
    run("decode", "-", "-o", ref, input=run("encode", wide, "--size", "native", "-f", "json").stdout)
    assert out.read_bytes() == ref.read_bytes()


def test_ragged_and_non_tile_grids_are_one_line_errors(run, wide):
    text = run("encode", wide, "--size", "native").stdout.splitlines()
    assert text[0] == "# size 48x32"
    text = text[1:]                                                   # a grid without its size line decodes too
    ragged = text[:]
    ragged[5] = " ".join(ragged[5].split()[:-1])
    r = run("decode", "-", "-o", "x.png", input="\n".join(ragged) + "\n")
    assert r.exit_code == 1 and r.stderr.count("\n") == 1 and "line 6" in r.stderr and "equally long" in r.stderr
    r = run("decode", "-", "-o", "x.png", input="\n".join(text[:6]) + "\n")       # 6 rows: not whole tiles
    assert r.exit_code == 1 and r.stderr.count("\n") == 1 and "whole 4x4 tiles" in r.stderr
    r = run("decode", "-", "-o", "x.png", input="\n".join(l.split(" ", 2)[2] for l in text) + "\n")  # 10 columns
    assert r.exit_code == 1 and "whole 4x4 tiles" in r.stderr


def test_default_size_keeps_the_aspect_and_a_small_square_image_stays_one_tile(run, wide, tmp_path):
    assert run("encode", wide).stdout == run("encode", wide, "--size", "native").stdout   # 48x32: 3 x 2 tiles
    square = tmp_path / "square.png"
    Image.open(wide).crop((0, 0, 20, 20)).save(square)            # 20 px: nearest whole number of tiles is one
    one = run("encode", square).stdout
    assert one == run("encode", square, "--size", "16").stdout and not one.startswith("#")
    rec = json.loads(run("encode", square, "-f", "json").stdout)
    assert set(rec) == {"source", "checkpoint", "lm_fingerprint", "grid", "ids", "tokens"}  # no tile or size keys
    tall = tmp_path / "tall.png"
    Image.open(wide).resize((20, 50)).save(tall)                  # 50 px: three tiles tall, aspect kept
    r = run("encode", tall, "-f", "json")
    assert json.loads(r.stdout)["size"] == [19, 48]    # 20 x 48 / 50, rounded
    d = run("decode", "-", "-o", tmp_path / "tall-out.png", input=run("encode", tall).stdout)
    assert d.exit_code == 0 and Image.open(tmp_path / "tall-out.png").size == (19, 48)


def test_png_to_stdout_of_a_tiled_image(run, wide):
    r = run("encode", wide, "--size", "native")
    d = run("decode", "-", "-o", "-", input=r.stdout)
    assert Image.open(io.BytesIO(d.stdout_bytes)).size == (48, 32)


def test_feathering_evens_out_a_step_at_a_tile_border_and_leaves_interiors():
    from lqae_cli.tiles import FEATHER, feather_seams

    img = torch.full((3, 32, 48), 0.3)
    img[:, :, 16:32] = 0.7                                     # two tile borders with a 0.4 step each
    out = feather_seams(img, 16)
    assert float((out[:, :, 16] - out[:, :, 15]).abs().max()) < 0.2 * 0.4
    assert torch.equal(out[:, :, :16 - FEATHER], img[:, :, :16 - FEATHER])   # far from any border: untouched
    assert torch.equal(feather_seams(torch.full((3, 32, 48), 0.5), 16), torch.full((3, 32, 48), 0.5))  # no step, no change


def test_eval_at_native_size_scores_the_stitched_decode_beside_the_codec(run, tok, wide, tmp_path):
    (tmp_path / "set").mkdir()
    Image.open(wide).save(tmp_path / "set" / "a.png")
    (tmp_path / "set" / "bad.png").write_bytes(b"nope")
    r = run("eval", tmp_path / "set", "--size", "native", "-f", "json")
    assert r.exit_code == 0 and "bad.png" in r.stderr
    rep = json.loads(r.stdout)
    x = np.asarray(Image.open(wide).convert("RGB"), dtype=np.float64)
    ours = np.asarray(tok.decode(tok.encode(wide, size="native")), dtype=np.float64)
    codec = np.asarray(Image.open(wide).convert("RGB").resize((12, 8), Image.BICUBIC).resize((48, 32), Image.BICUBIC), dtype=np.float64)
    db = lambda a, b: 10 * np.log10(255 ** 2 / np.mean((a - b) ** 2))
    assert rep["images"] == 1 and rep["failed"] == 1 and rep["size"] == "native"
    assert rep["psnr"] == pytest.approx(db(x, ours), abs=1e-6) and rep["codec_psnr"] == pytest.approx(db(x, codec), abs=1e-6)


def test_show_draws_a_legible_window_of_a_large_grid(run, tok, wide, tmp_path):
    from lqae_cli.show import contact_sheet

    out = tmp_path / "sheet.png"
    r = run("show", wide, "--size", "native", "--region", "0,1", "-o", out)
    assert r.exit_code == 0, r.stderr
    _, rows = contact_sheet(tok, [wide], size="native", region=(0, 1))
    assert rows == 1 and Image.open(out).size[0] > 0
    from lqae_cli.show import _region_row

    title, inp, rec, words, semantic = _region_row(tok, "w", Image.open(wide).convert("RGB"), (0, 1))
    grid = tok.encode(wide, size="native")
    assert words == [row[4:12] for row in grid.words[0:8]] and inp.size == rec.size == (32, 32)
    assert semantic == grid.semantic
    assert "tiles 0-1 x 1-2 of 2 x 3" in title
    assert run("show", wide, "--size", "native", "--region", "x", "-o", out).exit_code == 2


def test_the_size_line_round_trips_and_survives_hand_edits(tok, wide, tmp_path):
    g = tok.encode(Image.open(wide).crop((0, 0, 40, 27)), size="native")
    text = g.text
    assert text.splitlines()[0] == "# size 40x27"
    for fmt in ("text", "ids", "json", "jsonl"):
        assert tok.parse(tok.format(g, fmt))[0].pixel_size == (40, 27)
    lines = text.splitlines()
    lines[3] = " ".join(["apple"] + lines[3].split()[1:])          # a word changed by hand
    assert tok.decode("\n".join(lines) + "\n").size == (40, 27)
    assert tok.decode("\n".join(lines[1:]) + "\n").size == (48, 32)   # without the size line: the grid's size
