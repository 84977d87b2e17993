"""Fixtures: a tiny random BERT built here (no package needed) and tiny LQAE models on it."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")
if "XDG_CACHE_HOME" not in os.environ:  # the tests' bf16 timing cache (lqae_cli/precision.py) stays out of the user's home
    import tempfile

    os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="lqae-test-cache-")
# In-process models here are tiny: one torch thread runs them faster than two, and many times faster when
# other work shares the cores (every operation would wait for the other thread). Tests that are about
# threads set their own count (test_in_lanes_...); subprocesses keep torch's default.
torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "weights" / "lqae-base.safetensors"

WORDS = ["apple", "river", "stone", "cloud", "green", "light", "music", "house", "paper", "glass", "night", "water",
         "storm", "tiger", "olive", "piano", "sugar", "metal", "ocean", "amber", "maple", "candle", "violet", "forest",
         "silver", "winter", "garden", "pepper", "rocket", "saddle", "basket", "bridge"]
VOCAB = (["[PAD]"] + [f"[unused{i}]" for i in range(5)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
         + WORDS + ["##ing", "##ed", "1", "42", ",", ".", "!", "über"])


def make_tiny_lm(path: Path, seed: int = 0, hidden: int = 32) -> Path:
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=len(VOCAB), hidden_size=hidden, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=128)
    BertModel(cfg).save_pretrained(path, safe_serialization=True)
    (path / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    return path


@pytest.fixture(scope="session")
def tiny_lm_dir(tmp_path_factory) -> Path:
    return make_tiny_lm(tmp_path_factory.mktemp("tiny_bert"))


@pytest.fixture(scope="session")
def other_lm_dir(tmp_path_factory) -> Path:
    return make_tiny_lm(tmp_path_factory.mktemp("other_bert"), seed=1)


@pytest.fixture(scope="session")
def tiny_lm(tiny_lm_dir):
    from lqae_cli.lm import LanguageModel

    return LanguageModel.load(str(tiny_lm_dir))


def tiny_config(lm, **kw):
    from lqae_cli.config import preset

    base = dict(image_size=16, patch_size=4, match_dim=8, lm_name=str(lm.lm_dir), lm_fingerprint=lm.fingerprint,
                vocab_rule="all", entropy_tokens=32)
    return preset("tiny", **{**base, **kw})


@pytest.fixture()
def tiny_model(tiny_lm):
    from lqae_cli.model import LQAE

    torch.manual_seed(0)
    return LQAE(tiny_config(tiny_lm), tiny_lm).eval()


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory, tiny_lm) -> Path:
    """A tiny checkpoint with a few real training steps behind it."""
    from lqae_cli.checkpoint import save_model
    from lqae_cli.model import LQAE

    torch.manual_seed(0)
    model = LQAE(tiny_config(tiny_lm), tiny_lm)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.rand(8, 3, 16, 16)
    for _ in range(3):
        opt.zero_grad()
        model(x)["loss"].backward()
        opt.step()
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    save_model(model.eval(), path, training={"steps": 3})
    return path


def run_main(*args) -> tuple[int, str, str]:
    """`lqae ARGS` in-process through the program's entry point (`lqae_cli.cli.main`, which the `lqae` script
    and `python -m lqae_cli` run): (exit status, stdout, stderr), without a new interpreter's start."""
    import contextlib
    import io
    import sys

    from lqae_cli.cli import main

    out, err, argv = io.StringIO(), io.StringIO(), sys.argv
    sys.argv = ["lqae", *map(str, args)]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    finally:
        sys.argv = argv
    return code, out.getvalue(), err.getvalue()


def write_images(folder: Path, n: int, size: int = 20, seed: int = 0) -> list[Path]:
    g = torch.Generator().manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        arr = (torch.rand(size, size, 3, generator=g) * 255).byte().numpy()
        p = folder / f"img{i:03d}.png"
        Image.fromarray(arr).save(p)
        paths.append(p)
    return paths


@pytest.fixture()
def run(tiny_ckpt, monkeypatch):
    """`lqae ARGS...` in-process on the tiny checkpoint: run(*args, input=None) -> click's Result."""
    from typer.testing import CliRunner

    from lqae_cli.cli import app

    monkeypatch.setenv("LQAE_WEIGHTS", str(tiny_ckpt))
    monkeypatch.delenv("LQAE_DEVICE", raising=False)
    runner = CliRunner()
    return lambda *a, input=None: runner.invoke(app, [str(x) for x in a], input=input, catch_exceptions=False)
