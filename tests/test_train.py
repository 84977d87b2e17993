"""`lqae train`: a real (tiny) run to a checkpoint that encode/decode load; exact resume; two gloo ranks."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from typer.testing import CliRunner

from conftest import run_main, write_images
from lqae_cli.cli import app


def train_args(data: Path, out: Path, lm_dir: Path, steps: int, *extra) -> list[str]:
    return ["train", str(data), "--out", str(out), "--preset", "tiny", "--steps", str(steps), "--batch-size", "8",
            "--image-size", "16", "--patch-size", "4", "--lm", str(lm_dir), "--vocab-rule", "all", "--workers", "0",
            "--warmup", "2", "--save-every", "2", "--sample-every", "2", "--log-every", "1", "--quiet", *extra]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("train_imgs")
    write_images(root / "a", 100, size=24)
    write_images(root / "b", 100, size=18, seed=5)
    (root / "b" / "broken.png").write_bytes(b"not a png")
    return root


@pytest.mark.slow
def test_train_to_checkpoint_that_encode_and_decode_load(folder, tiny_lm_dir, tmp_path):
    out = tmp_path / "run" / "model.safetensors"
    runner = CliRunner()
    # --epochs 2.2 overrides --steps: round(2.2 * 201 / 8) = 55 steps, every image seen twice or more
    r = runner.invoke(app, train_args(folder, out, tiny_lm_dir, 6, "--epochs", "2.2"), catch_exceptions=False)
    assert r.exit_code == 0, r.stderr
    assert r.stdout == ""  # training prints nothing on stdout
    assert r.stderr.count("broken.png") == 1  # reported once, not fatal
    assert out.exists() and (tmp_path / "run" / "model.state.safetensors").exists()
    metrics = [json.loads(l) for l in (tmp_path / "run" / "model.metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == list(range(1, 56))
    assert list((tmp_path / "run" / "model.samples").glob("step_*.png"))
    assert Image.open(tmp_path / "run" / "model.curves.png").size == (1260, 260)
    assert not list((tmp_path / "run").glob(".*tmp"))
    enc = runner.invoke(app, ["encode", str(folder / "a" / "img000.png"), "--weights", str(out), "--size", "16"],
                        catch_exceptions=False)
    assert enc.exit_code == 0 and len(enc.stdout.split()) == 16          # one tile of the checkpoint's 16 pixels
    dec = runner.invoke(app, ["decode", "-", "-o", str(tmp_path / "x.png"), "--weights", str(out)], input=enc.stdout)
    assert dec.exit_code == 0 and (tmp_path / "x.png").exists()


@pytest.mark.slow
@pytest.mark.parametrize("recon_loss,smooth_share", [("mse", 0.0), ("log_mse", 0.25)])
def test_training_lowers_reconstruction_loss(folder, tiny_lm_dir, tmp_path, recon_loss, smooth_share):
    out = tmp_path / "model.safetensors"
    r = CliRunner().invoke(app, train_args(folder, out, tiny_lm_dir, 40, "--lr", "3e-3", "--recon-loss", recon_loss,
                                           "--smooth-share", str(smooth_share)), catch_exceptions=False)
    assert r.exit_code == 0, r.stderr
    mse = [json.loads(l)["mse"] for l in (tmp_path / "model.metrics.jsonl").read_text().splitlines()]
    assert sum(mse[-5:]) / 5 < 0.8 * sum(mse[:5]) / 5
    card = json.loads(CliRunner().invoke(app, ["info", "--weights", str(out), "--format", "json"]).stdout)
    assert card["config"]["recon_loss"] == recon_loss and card["training"]["smooth_share"] == smooth_share


def test_resume_continues_exactly(folder, tiny_lm_dir, tmp_path):
    runner = CliRunner()
    straight = tmp_path / "straight.safetensors"
    assert runner.invoke(app, train_args(folder, straight, tiny_lm_dir, 4)).exit_code == 0
    split = tmp_path / "split.safetensors"
    assert runner.invoke(app, train_args(folder, split, tiny_lm_dir, 2)).exit_code == 0
    r = runner.invoke(app, train_args(folder, split, tiny_lm_dir, 4, "--resume"), catch_exceptions=False)
    assert r.exit_code == 0, r.stderr
    a, b = load_file(str(straight)), load_file(str(split))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.slow
def test_two_gloo_processes_end_identical(folder, tiny_lm_dir, tmp_path):
    out = tmp_path / "ddp.safetensors"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "lqae_cli",
           *train_args(folder, out, tiny_lm_dir, 3, "--device", "cpu")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for attempt in range(2):
        p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
        # One more try only for a rank killed by SIGABRT: seen once in about 30 runs here, its message
        # not captured; gloo TCP aborts of this kind are reported upstream (e.g. pytorch/pytorch#188266).
        # Any other failure, or a second abort, fails the test.
        if p.returncode == 0 or "SIGABRT" not in p.stderr:
            break
    why = [l for l in p.stderr.splitlines() if "terminate" in l or "what()" in l or "Error" in l]
    assert p.returncode == 0, "\n".join(why[:10]) + "\n" + p.stderr[-1500:]
    from lqae_cli.checkpoint import read_card

    card = read_card(out)
    assert card["training"]["world_size"] == 2
    assert card["training"]["ranks_identical"] is True
    assert card["training"]["batch_size"] == 16


@pytest.mark.slow
def test_decoder_phase_keeps_the_words_and_lowers_the_loss(folder, tiny_lm_dir, tmp_path):
    """--init CKPT --freeze-encoder: the encoder (and so every word) stays bit for bit, the decoder learns
    (here also reading one more LM layer, --decoder-lm-layers 2)."""
    runner = CliRunner()
    first = tmp_path / "first.safetensors"
    r = runner.invoke(app, train_args(folder, first, tiny_lm_dir, 10, "--lr", "3e-3"), catch_exceptions=False)
    assert r.exit_code == 0, r.stderr
    second = tmp_path / "second.safetensors"
    r = runner.invoke(app, train_args(folder, second, tiny_lm_dir, 30, "--lr", "3e-3", "--mask-ratio", "0",
                                      "--init", str(first), "--freeze-encoder", "--decoder-lm-layers", "2"),
                      catch_exceptions=False)
    assert r.exit_code == 0, r.stderr
    a, b = load_file(str(first)), load_file(str(second))
    assert a.keys() == b.keys()
    changed = {k for k in a if not torch.equal(a[k], b[k])}
    assert changed and all(k.startswith("decoder.") for k in changed)  # encoder, BatchNorm statistics, matching space untouched
    img = str(folder / "a" / "img003.png")
    words = [runner.invoke(app, ["encode", img, "--weights", str(w)]).stdout for w in (first, second)]
    assert words[0] == words[1] and words[0].strip()
    mse = [json.loads(l)["mse"] for l in (tmp_path / "second.metrics.jsonl").read_text().splitlines()]
    assert sum(mse[-5:]) / 5 < sum(mse[:5]) / 5
    card = json.loads(runner.invoke(app, ["info", "--weights", str(second), "--format", "json"]).stdout)
    assert card["training"]["trained"] == "decoder only (encoder frozen)"
    assert card["training"]["init"]["steps"] == 10 and card["config"]["mask_ratio"] == 0
    assert card["config"]["decoder_lm_layers"] == 2 and b["decoder.inp.weight"].shape[1] == 2 * a["decoder.inp.weight"].shape[1]


def test_more_lm_layers_than_the_lm_has_is_one_line(folder, tiny_lm_dir, tmp_path):
    code, _, err = run_main(*train_args(folder, tmp_path / "m.safetensors", tiny_lm_dir, 2, "--decoder-lm-layers", "3"))
    assert code == 1 and err == "Error: decoder_lm_layers 3: the language model has 2 layers\n"
    assert not (tmp_path / "m.safetensors").exists()


def test_unknown_recon_loss_is_a_usage_error(folder, tiny_lm_dir, tmp_path):
    code, _, err = run_main(*train_args(folder, tmp_path / "m.safetensors", tiny_lm_dir, 2, "--recon-loss", "l1"))
    assert code == 2 and "--recon-loss" in err and "log_mse" in err and err.count("\n") == 1
    assert not (tmp_path / "m.safetensors").exists()


def test_freeze_encoder_needs_init(folder, tiny_lm_dir, tmp_path):
    code, _, err = run_main(*train_args(folder, tmp_path / "m.safetensors", tiny_lm_dir, 2, "--freeze-encoder"))
    assert code == 2 and "--init" in err and err.count("\n") == 1
    assert not (tmp_path / "m.safetensors").exists()


def test_smooth_share_replaces_that_share_by_smooth_copies(folder):
    """--smooth-share: a share of the training images becomes a shrunk-and-enlarged copy of itself,
    smoother than any noise image, with about the same mean colour; seeded, so a resume sees the same."""
    from lqae_cli.data import TrainImages, list_images

    files = list_images(folder / "a")[:40]
    tv = lambda t: (t[:, 1:] - t[:, :-1]).abs().mean() + (t[:, :, 1:] - t[:, :, :-1]).abs().mean()
    plain = [TrainImages(files, 16, seed=1)[i] for i in range(40)]
    every = [TrainImages(files, 16, seed=1, smooth_share=1.0)[i] for i in range(40)]
    assert max(tv(t) for t in every) < 0.5 * min(tv(t) for t in plain)
    assert all(torch.allclose(s.mean((1, 2)), p.mean((1, 2)), atol=0.05) for s, p in zip(every, plain))
    half = TrainImages(files, 16, seed=1, smooth_share=0.5)
    smooth = [tv(half[i]) < 0.5 * tv(plain[i]) for i in range(40)]
    assert 8 <= sum(smooth) <= 32
    assert all(torch.equal(half[i], TrainImages(files, 16, seed=1, smooth_share=0.5)[i]) for i in range(40))
