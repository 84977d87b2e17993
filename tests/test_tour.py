"""The README as a newcomer runs it: its first command's `lqae` part, then every `$ ` command of the tour's
console blocks in order, as written, in a folder holding a copy of examples/, through the `lqae` command
of this tree on the shipped checkpoint. The output shown under a command is what it must print (stdout
and stderr together): `...` on its own line stands for any lines, a line ending in `...` for the rest of
that line, and numbers with a decimal point may differ by 2% (another CPU's last bits); an `Error:` line
means exit status 1, anything else 0. The files the tour writes are checked too."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile

import pytest
from PIL import Image

from conftest import ROOT

README = (ROOT / "README.md").read_text()
NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?")


def tour() -> list[tuple[str, list[str]]]:
    """(command, expected output lines) for every `$ ` line of the tour's console blocks."""
    section = README.split("\n## A tour", 1)[1].split("\n## ", 1)[0]
    steps = []
    for block in re.findall(r"```console\n(.*?)```", section, re.S):
        for line in block.splitlines():
            if line.startswith("$ "):
                steps.append((line[2:], []))
            else:
                steps[-1][1].append(line)
    return steps


def line_matches(want: str, got: str) -> bool:
    if want.endswith("..."):
        return got.startswith(want[:-3])
    if NUMBER.split(want) != NUMBER.split(got):
        return False
    for a, b in zip(NUMBER.findall(want), NUMBER.findall(got)):
        if "." in a:
            if abs(float(a) - float(b)) > 0.02 * max(abs(float(a)), 1.0):
                return False
        elif a != b:
            return False
    return True


def output_matches(want: list[str], got: list[str]) -> bool:
    """want's runs of lines between `...` lines appear in got in order; the first run at the start and the
    last at the end (without any `...`, got is exactly want)."""
    runs, run = [], []
    for line in want:
        if line == "...":
            runs.append(run)
            run = []
        else:
            run.append(line)
    runs.append(run)

    def fits(run: list[str], at: int) -> bool:
        return at + len(run) <= len(got) and all(line_matches(w, g) for w, g in zip(run, got[at:]))

    if len(runs) == 1:
        return len(want) == len(got) and fits(want, 0)
    head, *middle, tail = runs
    at, end = len(head), len(got) - len(tail)
    if end < at or not fits(head, 0) or not fits(tail, end):
        return False
    for run in middle:
        at = next((s + len(run) for s in range(at, end - len(run) + 1) if fits(run, s)), None)
        if at is None:
            return False
    return True


def test_the_matcher_reads_the_tour_conventions():
    assert output_matches(["a 1.00", "..."], ["a 1.01", "b", "c"])
    assert not output_matches(["a 1"], ["a 2"])
    assert output_matches(["x", "...", "z ..."], ["x", "y", "z and more"])
    assert not output_matches([], ["unexpected"])
    assert output_matches(["...", "saved"], ["one", "two", "saved"])
    assert not output_matches(["saved"], ["saved", "more"])


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A folder with examples/ in it, and `lqae` on PATH running this tree."""
    root = tmp_path_factory.mktemp("tour")
    shutil.copytree(ROOT / "examples", root / "examples")
    bin_dir = root / "bin"
    bin_dir.mkdir()
    (bin_dir / "lqae").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m lqae_cli "$@"\n')
    (bin_dir / "lqae").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    env.pop("LQAE_WEIGHTS", None)
    env["LQAE_DEVICE"] = "cpu"  # the output shown is a CPU's
    return root, env


def sh(cmd: str, folder) -> subprocess.CompletedProcess:
    root, env = folder
    return subprocess.run(["bash", "-o", "pipefail", "-c", cmd], cwd=root / "work", env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=600)


@pytest.mark.slow
def test_install_line_then_every_tour_command_runs_as_written(folder):
    root, _ = folder
    work = root / "work"
    work.mkdir()
    shutil.copytree(root / "examples", work / "examples")
    install = re.search(r"## Install\n+```bash\n(.*?)\n```", README, re.S).group(1)
    first = install.split("&&")[-1].strip()
    assert first == "lqae encode examples/photo-cat.png"
    p = sh(first, folder)
    assert p.returncode == 0 and p.stdout == (ROOT / "examples" / "photo-cat.txt").read_text(), p.stdout[-2000:]

    steps = tour()
    assert len(steps) >= 15
    for cmd, want in steps:
        p = sh(cmd, folder)
        expected = 1 if any(line.startswith("Error:") for line in want) else 0
        assert p.returncode == expected, f"$ {cmd}\n{p.stdout[-2000:]}"
        assert output_matches(want, p.stdout.splitlines()), f"$ {cmd}\nwanted:\n" + "\n".join(want) + "\ngot:\n" + p.stdout[-3000:]

    size = lambda name: Image.open(work / name).size
    assert size("cat.png") == size("cat2.png") == (64, 64) and (work / "cat.png").read_bytes() == (work / "cat2.png").read_bytes()
    assert size("rocket-edited.png") == (64, 64) and size("chelsea.png") == (451, 300)
    assert not (work / "x.png").exists()
    images = sorted(p.stem + ".png" for p in (root / "examples").iterdir() if p.suffix in (".png", ".jpg"))
    assert sorted(p.name for p in (work / "out" / "pngs").iterdir()) == images
    assert len((work / "out" / "all.jsonl").read_text().splitlines()) == 6
    with tarfile.open(work / "out" / "token-shards" / "examples.tar") as t:
        assert sorted(t.getnames()) == sorted(f"{k}.lqae.{e}" for k in ("emoji-cat", "emoji-pizza", "photo-cat") for e in ("json", "txt"))
    with tarfile.open(work / "out" / "image-shards" / "examples.tar") as t:
        assert sorted(t.getnames()) == ["emoji-cat.png", "emoji-pizza.png", "photo-cat.png"]
    assert Image.open(work / "sheet.png").size[0] > 0 and (work / "demo" / "tiny.safetensors").is_file()
