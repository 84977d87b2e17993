"""Batch conversion past one process (torchrun, two gloo ranks on CPU) and WebDataset tar shards in and out."""
from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch
from PIL import Image

from conftest import ROOT, write_images

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def env(tiny_ckpt):
    return {**os.environ, "LQAE_WEIGHTS": str(tiny_ckpt), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def lqae(env, *args, ranks: int = 1, cwd=None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "lqae_cli", *map(str, args)]
    if ranks > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(ranks), "--master_addr", "127.0.0.1",
               "--master_port", str(free_port()), "-m", "lqae_cli", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd or ROOT, timeout=300)


def png(seed: int, size: int = 20) -> bytes:
    g = torch.Generator().manual_seed(seed)
    buf = io.BytesIO()
    Image.fromarray((torch.rand(size, size, 3, generator=g) * 255).byte().numpy()).save(buf, format="PNG")
    return buf.getvalue()


def make_shard(path: Path, samples: list[tuple[str, dict[str, bytes]]]) -> Path:
    """A WebDataset shard as img2dataset writes it: key.png, key.json, key.txt per sample."""
    with tarfile.open(path, "w") as tar:
        for key, members in samples:
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    write_images(root / "imgs" / "a", 30)
    write_images(root / "imgs" / "b", 30, seed=3)
    shards = root / "shards"
    shards.mkdir()
    for s in range(3):
        make_shard(shards / f"{s:05d}.tar", [(f"{s:05d}{i:04d}", {"png": png(100 * s + i), "json": b'{"caption": "x"}',
                                                                     "txt": b"x"}) for i in range(5)])
    return root


def members(tar_path: Path) -> dict[str, bytes]:
    with tarfile.open(tar_path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}


def tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_two_ranks_give_the_single_process_outputs_and_resume(env, data, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    assert lqae(env, "encode", data / "imgs", "-o", one).returncode == 0
    p = lqae(env, "encode", data / "imgs", "-o", two, ranks=2)
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stderr.count("converted 60, skipped 0, failed 0") == 1  # rank 0 alone prints the sum of both ranks
    assert tree(two) == tree(one) and len(tree(one)) == 60
    p = lqae(env, "encode", data / "imgs", "-o", two, ranks=2)
    assert "converted 0, skipped 60, failed 0" in p.stderr
    # rank 1 died half-way: its missing outputs are redone, nothing else
    for name in ("a/img001.txt", "b/img003.txt"):
        (two / name).unlink()
    p = lqae(env, "encode", data / "imgs", "-o", two, ranks=2)
    assert "converted 2, skipped 58, failed 0" in p.stderr and tree(two) == tree(one)
    # and back: token files to PNGs on two ranks, the same PNGs as one process
    assert lqae(env, "decode", one, "-o", tmp_path / "png1").returncode == 0
    p = lqae(env, "decode", one, "-o", tmp_path / "png2", ranks=2)
    assert p.returncode == 0, p.stderr[-2000:]
    assert tree(tmp_path / "png2") == tree(tmp_path / "png1") and len(tree(tmp_path / "png1")) == 60


def test_jsonl_becomes_one_file_per_rank(env, data, tmp_path):
    assert lqae(env, "encode", data / "imgs", "-o", tmp_path / "one.jsonl").returncode == 0
    p = lqae(env, "encode", data / "imgs", "-o", tmp_path / "two.jsonl", ranks=2)
    assert p.returncode == 0, p.stderr[-2000:]
    parts = sorted(tmp_path.glob("two-*-of-00002.jsonl"))
    assert [q.name for q in parts] == ["two-00000-of-00002.jsonl", "two-00001-of-00002.jsonl"]
    lines = [l for q in parts for l in q.read_text().splitlines()]
    assert sorted(lines) == sorted((tmp_path / "one.jsonl").read_text().splitlines()) and len(lines) == 60
    assert "converted 0, skipped 60" in lqae(env, "encode", data / "imgs", "-o", tmp_path / "two.jsonl", ranks=2).stderr


def test_shards_in_token_shards_out_on_one_and_two_ranks(env, data, tmp_path):
    pattern = str(data / "shards" / "{00000..00002}.tar")
    p = lqae(env, "encode", pattern, "-o", tmp_path / "one")
    assert p.returncode == 0, p.stderr[-2000:]
    assert sorted(q.name for q in (tmp_path / "one").iterdir()) == ["00000.tar", "00001.tar", "00002.tar"]
    m = members(tmp_path / "one" / "00001.tar")
    assert sorted(m) == sorted(f"0000100{i:02d}.{e}" for i in range(5) for e in ("json", "txt", "lqae.json", "lqae.txt"))
    assert m["000010003.json"] == b'{"caption": "x"}' and m["000010003.txt"] == b"x"  # the sample's own members, unchanged
    rec = json.loads(m["000010003.lqae.json"])
    assert rec["key"] == "000010003" and rec["source"].endswith("00001.tar/000010003.png") and rec["grid"] == [4, 4]
    assert m["000010003.lqae.txt"].decode().split() == [w for row in rec["tokens"] for w in row]
    p = lqae(env, "encode", str(data / "shards" / "*.tar"), "-o", tmp_path / "two", ranks=2)
    assert p.returncode == 0, p.stderr[-2000:]
    assert tree(tmp_path / "two") == tree(tmp_path / "one")  # byte for byte
    assert "converted 0, skipped 15, failed 0" in lqae(env, "encode", pattern, "-o", tmp_path / "two", ranks=2).stderr
    # token shards back to image shards
    p = lqae(env, "decode", str(tmp_path / "one" / "*.tar"), "-o", tmp_path / "img")
    assert p.returncode == 0, p.stderr[-2000:]
    imgs = members(tmp_path / "img" / "00002.tar")
    assert sorted(imgs) == sorted(f"0000200{i:02d}.{e}" for i in range(5) for e in ("json", "txt", "png"))
    assert imgs["000020004.txt"] == b"x"
    assert Image.open(io.BytesIO(imgs["000020004.png"])).size == (16, 16)
    p = lqae(env, "decode", str(tmp_path / "one" / "*.tar"), "-o", tmp_path / "img2", ranks=2)
    assert p.returncode == 0 and tree(tmp_path / "img2") == tree(tmp_path / "img")


def test_bad_samples_and_shards_are_counted_never_fatal(env, data, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    make_shard(bad / "mixed.tar", [("k0", {"png": png(1), "txt": b"ok"}), ("k1", {"png": b"\x89PNG\r\n\x1a\n corrupt", "txt": b"x"}),
                                   ("k2", {"txt": b"a caption, no image"}), ("k3", {"jpg": b"not a jpeg at all"}),
                                   ("k4", {"png": png(2)})])
    make_shard(bad / "empty.tar", [])
    (bad / "zero.tar").write_bytes(b"")
    p = lqae(env, "encode", str(bad / "*.tar"), "-o", tmp_path / "out")
    assert p.returncode == 1
    assert p.stderr.strip().splitlines()[-1] == "converted 2, skipped 0, failed 4"
    for what in ("mixed.tar/k1.png", "mixed.tar/k2", "mixed.tar/k3.jpg", "zero.tar"):
        assert what in p.stderr
    assert "Traceback" not in p.stderr
    # every member passes through; a failed sample keeps its image, a good one gets its words instead
    assert sorted(members(tmp_path / "out" / "mixed.tar")) == ["k0.lqae.json", "k0.lqae.txt", "k0.txt", "k1.png", "k1.txt",
                                                             "k2.txt", "k3.jpg", "k4.lqae.json", "k4.lqae.txt"]
    assert members(tmp_path / "out" / "empty.tar") == {}
    assert not (tmp_path / "out" / "zero.tar").exists()


def test_one_output_file_is_refused_under_torchrun(env, data, tmp_path):
    p = lqae(env, "encode", data / "imgs", ranks=2)
    assert p.returncode != 0 and "Error: under torchrun every rank writes its own outputs" in p.stderr
