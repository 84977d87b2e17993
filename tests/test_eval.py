"""`lqae eval` against an independent recomputation on a small fixed set."""
from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from conftest import write_images
from lqae_cli.checkpoint import load_model
from lqae_cli.cli import app


def independent(ckpt, files):
    from skimage.metrics import structural_similarity

    model = load_model(ckpt)
    psnrs, ssims, base_psnrs, ids = [], [], [], []
    for f in files:
        img = Image.open(f).convert("RGB").resize((16, 16), Image.BICUBIC)
        x = np.asarray(img, dtype=np.float64) / 255
        import torch

        t = torch.from_numpy(x).permute(2, 0, 1).float().unsqueeze(0)
        i = model.encode(t)
        ids += i.flatten().tolist()
        y = model.decode(i)[0].permute(1, 2, 0).double().numpy()
        psnrs.append(10 * np.log10(1 / np.mean((x - y) ** 2)))
        ssims.append(structural_similarity(x, y, channel_axis=2, data_range=1.0, gaussian_weights=True, sigma=1.5,
                                           use_sample_covariance=False))
        thumb = img.resize((4, 4), Image.BICUBIC).resize((16, 16), Image.BICUBIC)
        z = np.asarray(thumb, dtype=np.float64) / 255
        base_psnrs.append(10 * np.log10(1 / np.mean((x - z) ** 2)))
    counts = Counter(ids)
    return np.mean(psnrs), np.mean(ssims), np.mean(base_psnrs), len(counts), max(counts.values()) / len(ids)


def test_eval_matches_independent_recomputation(tiny_ckpt, tmp_path):
    files = write_images(tmp_path / "set" / "cats", 4, size=24) + write_images(tmp_path / "set" / "dogs", 4, size=24, seed=9)
    r = CliRunner().invoke(app, ["eval", str(tmp_path / "set"), "--weights", str(tiny_ckpt), "--format", "json",
                                 "--save-grid", str(tmp_path / "grid.png")], catch_exceptions=False)
    assert r.exit_code == 0, r.stderr
    rep = json.loads(r.stdout)
    psnr, ssim, base, distinct, top = independent(tiny_ckpt, sorted(files))
    assert rep["images"] == 8
    assert rep["reconstruction"]["psnr"] == pytest.approx(psnr, abs=0.05)
    assert rep["reconstruction"]["ssim"] == pytest.approx(ssim, abs=0.01)
    assert rep["reconstruction"]["thumbnail_psnr"] == pytest.approx(base, abs=0.05)
    assert rep["codebook"]["distinct"] == distinct
    assert rep["codebook"]["top_share"] == pytest.approx(top)
    assert rep["probe"]["classes"] == 2 and rep["probe"]["train_images"] + rep["probe"]["test_images"] == 8
    assert 0 <= rep["probe"]["lm_features_accuracy"] <= 1
    assert Image.open(tmp_path / "grid.png").size[0] == 3 * 16 * 2


def test_eval_without_classes_has_no_probe(tiny_ckpt, tmp_path):
    write_images(tmp_path / "flat", 3)
    r = CliRunner().invoke(app, ["eval", str(tmp_path / "flat"), "--weights", str(tiny_ckpt)], catch_exceptions=False)
    assert r.exit_code == 0 and "PSNR" in r.stdout and "linear probe" not in r.stdout


def test_linear_probe_learns_a_separable_problem():
    import torch

    from lqae_cli.evaluate import linear_probe

    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 3, (400,), generator=g)
    centres = torch.randn(3, 16, generator=g) * 2
    x = centres[y] + torch.randn(400, 16, generator=g)
    assert linear_probe(x[:300], y[:300], x[300:], y[300:], 3) > 0.95
    assert linear_probe(x[:300], y[torch.randperm(400, generator=g)][:300], x[300:], y[300:], 3) < 0.6
