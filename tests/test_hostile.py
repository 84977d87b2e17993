"""Untrusted input and output semantics: every hostile case is small, ends in one line naming the input,
and leaves nothing stale, half-written or outside the output."""
from __future__ import annotations

import errno
import io
import json
import os

import pytest
from PIL import Image
from typer.testing import CliRunner

from conftest import write_images
from lqae_cli.cli import app


@pytest.fixture()
def run(tiny_ckpt, monkeypatch):
    monkeypatch.setenv("LQAE_WEIGHTS", str(tiny_ckpt))
    monkeypatch.delenv("LQAE_DEVICE", raising=False)
    runner = CliRunner()

    def invoke(*args, input=None):
        return runner.invoke(app, [str(a) for a in args], input=input, catch_exceptions=False)

    return invoke


def one_error(r, *names) -> str:
    """The run's only error line (exit 1), naming each of `names`, at most 300 characters."""
    lines = [l for l in r.stderr.splitlines() if l.startswith("Error:")]
    assert r.exit_code == 1 and len(lines) == 1, r.stderr
    assert "internal error" not in r.stderr and len(lines[0]) <= 300
    for n in names:
        assert str(n) in lines[0], lines[0]
    return lines[0]


def files_under(folder) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if not p.is_dir())


# --- (A) outputs are never silently stale ------------------------------------------------------
def test_a_single_output_file_is_replaced_by_the_new_input(run, tmp_path):
    a, b = write_images(tmp_path / "in", 2)
    out = tmp_path / "one.txt"
    assert run("encode", a, "-o", out).exit_code == 0
    r = run("encode", b, "-o", out)
    assert r.exit_code == 0 and out.read_text() == run("encode", b).stdout != run("encode", a).stdout
    assert files_under(tmp_path) == ["in/img000.png", "in/img001.png", "one.txt"]  # no temporary file left


def test_skipped_outputs_are_counted_on_stderr(run, tmp_path):
    src = tmp_path / "in"
    write_images(src, 1)
    assert run("encode", src, "-o", tmp_path / "out").exit_code == 0
    r = run("encode", src, "-o", tmp_path / "out")
    assert r.exit_code == 0 and "converted 0, skipped 1, failed 0" in r.stderr
    r = run("encode", src, "-o", tmp_path / "out", "--no-skip-existing")
    assert "converted 1, skipped 0" not in r.stderr or r.exit_code == 0


def test_an_output_suffix_decides_the_format_or_is_refused(run, tmp_path):
    img = write_images(tmp_path / "in", 1)[0]
    words = tmp_path / "w.txt"
    assert run("encode", img, "-o", words).exit_code == 0
    for name, magic in (("o.jpg", b"\xff\xd8\xff"), ("o.JPEG", b"\xff\xd8\xff"), ("o.webp", b"RIFF"), ("o.png", b"\x89PNG")):
        assert run("decode", words, "-o", tmp_path / name).exit_code == 0
        assert (tmp_path / name).read_bytes().startswith(magic)
        assert Image.open(tmp_path / name).size == (16, 16)
    one_error(run("decode", words, "-o", tmp_path / "o.xyz"), "o.xyz", "'.xyz'")
    one_error(run("encode", img, "-o", tmp_path / "t.rec"), "t.rec", "'.rec'")
    one_error(run("encode", img, "-o", tmp_path / "t.txt", "-f", "json"), "t.txt", "json")
    assert run("encode", img, "-o", tmp_path / "t.json").exit_code == 0
    assert json.loads((tmp_path / "t.json").read_text())["grid"] == [4, 4]
    assert not (tmp_path / "o.xyz").exists() and not (tmp_path / "t.rec").exists()


def test_several_images_to_one_standard_output_are_refused(run, tmp_path):
    imgs = write_images(tmp_path / "in", 3)
    text = run("encode", *imgs, "-f", "jsonl").stdout
    r = run("decode", "-", "-o", "-", input=text)
    one_error(r, "3 images")
    assert r.stdout_bytes == b""


def test_outputs_never_replace_inputs(run, tmp_path):
    src = tmp_path / "in"
    img = write_images(src, 2)[0]
    tokens = tmp_path / "t"
    assert run("encode", img, "-o", tokens).exit_code == 0  # a name without a suffix: text
    before = tokens.read_bytes()
    one_error(run("decode", tokens, "-o", tokens), "is an input")
    assert tokens.read_bytes() == before
    (src / "img000.txt").write_text("a caption beside its image\n")
    one_error(run("encode", src, "-o", src), "input folder")
    assert (src / "img000.txt").read_text() == "a caption beside its image\n"
    folder = tmp_path / "toks"
    assert run("encode", src, "-o", folder).exit_code == 0
    one_error(run("decode", folder, "-o", folder), "input folder")
    assert files_under(folder) == ["img000.txt", "img001.txt"]


def test_two_inputs_with_one_output_name_are_refused_before_any_work(run, tmp_path):
    src = tmp_path / "in"
    write_images(src, 2)
    Image.new("RGB", (20, 20), "red").save(src / "img000.jpg")
    out = tmp_path / "out"
    r = run("encode", src, "-o", out)
    one_error(r, "img000.jpg", "img000.png", "img000.txt")
    assert not out.exists() or files_under(out) == []


def test_a_second_writer_of_one_jsonl_is_refused(run, tmp_path):
    import fcntl

    imgs = write_images(tmp_path / "in", 2)
    out = tmp_path / "all.jsonl"
    with open(out, "ab") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        one_error(run("encode", *imgs, "-o", out), "another process", "all.jsonl")
    assert out.read_bytes() == b""
    assert run("encode", *imgs, "-o", out).exit_code == 0 and len(out.read_text().splitlines()) == 2


def test_a_full_disk_is_one_line_and_the_rest_are_counted(run, tmp_path, monkeypatch):
    import lqae_cli.convert as convert

    src = tmp_path / "in"
    write_images(src, 5)
    real, calls = convert.atomic_write_bytes, []

    def filling(path, data):
        calls.append(path)
        if len(calls) > 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(path, data)

    monkeypatch.setattr(convert, "atomic_write_bytes", filling)
    r = run("encode", src, "-o", tmp_path / "out", "--batch-size", "2")
    errors = [l for l in r.stderr.splitlines() if l.startswith("Error:")]
    assert r.exit_code == 1 and sum("No space left" in l for l in errors) == 1, r.stderr
    assert "2 more outputs not written (no space left on device)" in r.stderr
    assert "converted 2, skipped 0, failed 3" in r.stderr
    assert len(list((tmp_path / "out").glob("*.txt"))) == 2


def test_a_failed_jsonl_append_leaves_no_partial_record(tmp_path):
    from lqae_cli.convert import append_record

    path = tmp_path / "r.jsonl"
    path.write_bytes(b'{"a": 1}\n')

    real_write = os.write

    def full(fd, data):  # a disk that takes 5 bytes of the record, then is full
        if len(data) > 5:
            real_write(fd, bytes(data[:5]))
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    with open(path, "ab", buffering=0) as f:
        os.write = full
        try:
            why = append_record(f, '{"c": 2}\n')
        finally:
            os.write = real_write
    assert "No space left" in why and path.read_bytes() == b'{"a": 1}\n'


def test_temporary_files_of_a_killed_run_are_removed_and_unfinished_outputs_redone(run, tmp_path):
    src = tmp_path / "in"
    write_images(src, 3)
    out = tmp_path / "out"
    assert run("encode", src, "-o", out).exit_code == 0
    (out / ".img001.txt.k1ll3d_x.tmp").write_text("half")      # what a killed run leaves
    (out / ".notes.txt.abcdefgh.tmp").write_text("not ours")    # no output of this run has that name
    (out / "img002.txt").write_text("apple river")                # cut short: no final newline
    r = run("encode", src, "-o", out)
    assert r.exit_code == 0 and "converted 1, skipped 2, failed 0" in r.stderr
    assert files_under(out) == [".notes.txt.abcdefgh.tmp", "img000.txt", "img001.txt", "img002.txt"]
    assert (out / "img002.txt").read_text() == run("encode", src / "img002.png").stdout


def test_one_bad_record_of_a_jsonl_fails_alone_with_its_line(run, tmp_path):
    imgs = write_images(tmp_path / "in", 4)
    lines = run("encode", *imgs, "-f", "jsonl").stdout.splitlines()
    lines[1] = lines[1][:40]                                                 # cut short: not JSON
    lines[2] = lines[2].replace('"tokens": [["', '"tokens": [["zzznotaword", "', 1)  # an unknown word
    src = tmp_path / "t.jsonl"
    src.write_text("\n".join(lines) + "\n")
    out = tmp_path / "pngs"
    r = run("decode", src, "-o", out)
    errors = [l for l in r.stderr.splitlines() if l.startswith("Error:")]
    assert r.exit_code == 1 and len(errors) == 2 and "internal error" not in r.stderr
    assert "t.jsonl: line 2" in errors[0] and "not valid JSON" in errors[0]
    assert "t.jsonl: line 3" in errors[1] and "zzznotaword" in errors[1]
    assert "converted 2, skipped 0, failed 2" in r.stderr
    assert len(list(out.rglob("*.png"))) == 2
