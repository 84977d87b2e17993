"""The package as users get it: a wheel built from the repository carries the default checkpoint, and an
install of that wheel, away from the source tree, encodes with it; the README's Python example runs verbatim."""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import zipfile

import pytest

from conftest import ROOT

pytestmark = pytest.mark.slow
ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}
ENV.pop("LQAE_WEIGHTS", None)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    p = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(ROOT), "-w", str(out)],
                       capture_output=True, text=True, env=ENV)
    assert p.returncode == 0, p.stderr[-2000:]
    (whl,) = out.glob("lqae-*.whl")
    return whl


def test_wheel_holds_the_checkpoint_and_its_card(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        assert {"lqae_cli/weights/lqae-base.safetensors", "lqae_cli/weights/README.md", "lqae_cli/tokenizer.py"} <= names
        shipped = z.read("lqae_cli/weights/lqae-base.safetensors")
    assert hashlib.sha256(shipped).digest() == hashlib.sha256((ROOT / "weights" / "lqae-base.safetensors").read_bytes()).digest()
    assert not any(n.startswith(("tests/", "weights/", "examples/")) for n in names)


def test_installed_wheel_encodes_from_another_directory(wheel, tmp_path):
    site = tmp_path / "site"
    p = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target", str(site), str(wheel)],
                       capture_output=True, text=True, env=ENV)
    assert p.returncode == 0, p.stderr[-2000:]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    image = ROOT / "examples" / "emoji-cat.png"
    code = ("import lqae_cli, sys; from lqae_cli.cli import main; "
            "assert lqae_cli.__file__.startswith(sys.argv[1]), lqae_cli.__file__; "
            "assert str(lqae_cli.default_weights()).startswith(sys.argv[1]); "
            "sys.argv = ['lqae', 'encode', sys.argv[2]]; main()")
    p = subprocess.run([sys.executable, "-c", code, str(site), str(image)], capture_output=True, text=True, cwd=elsewhere,
                       env={**ENV, "PYTHONPATH": str(site)})
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout == (ROOT / "examples" / "emoji-cat.txt").read_text() and p.stderr == ""


def test_readme_python_example_runs_verbatim(tmp_path):
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## From Python", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                       env={**ENV, "PYTHONPATH": str(ROOT)})
    assert p.returncode == 0, p.stderr[-2000:]
    assert (ROOT / "examples" / "emoji-cat.txt").read_text() in p.stdout
    assert (tmp_path / "cat.png").exists()
