"""The command line in-process (CliRunner: bytes in, bytes out) on a tiny checkpoint."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, write_images


@pytest.fixture()
def images(tmp_path):
    return write_images(tmp_path / "imgs", 5)


def test_encode_prints_grid_of_words(run, images, tiny_lm):
    r = run("encode", images[0])
    assert r.exit_code == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 4 and all(len(l.split()) == 4 for l in lines)
    allowed = set(tiny_lm.tokens(tiny_lm.allowed_ids("all").tolist()))
    assert all(w in allowed for l in lines for w in l.split())
    assert r.stderr == ""


@pytest.mark.parametrize("fmt", ["text", "json", "jsonl", "ids"])
def test_every_format_round_trips_to_same_ids(run, images, fmt, tmp_path):
    ids = json.loads(run("encode", images[0], "-f", "json").stdout)["ids"]
    out = run("encode", images[0], "-f", fmt).stdout
    png = tmp_path / f"{fmt}.png"
    r = run("decode", "-", "-o", png, input=out)
    assert r.exit_code == 0, r.stderr
    ref = tmp_path / "ref.png"
    run("decode", "-", "-o", ref, input=json.dumps({"ids": ids}))
    assert png.read_bytes() == ref.read_bytes()


def test_json_record_fields(run, images, tiny_lm):
    rec = json.loads(run("encode", images[0], "-f", "json").stdout)
    assert set(rec) >= {"source", "checkpoint", "lm_fingerprint", "grid", "ids", "tokens"}
    assert rec["grid"] == [4, 4] and rec["lm_fingerprint"] == tiny_lm.fingerprint
    assert [[tiny_lm.token_id(t) for t in row] for row in rec["tokens"]] == rec["ids"]


def test_decode_png_to_stdout(run, images, tmp_path):
    text = run("encode", images[0]).stdout
    r = run("decode", "-", "-o", "-", input=text)
    assert r.exit_code == 0
    assert r.stdout_bytes.startswith(b"\x89PNG")
    assert Image.open(io.BytesIO(r.stdout_bytes)).size == (16, 16)


@pytest.mark.parametrize("precision", ["fp32", "bf16", "int8", "auto"])
def test_decode_takes_every_precision(run, images, precision):
    text = run("encode", images[0]).stdout
    r = run("decode", "-", "-o", "-", "--precision", precision, input=text)
    assert r.exit_code == 0, r.stderr
    assert Image.open(io.BytesIO(r.stdout_bytes)).size == (16, 16)


def test_hand_edited_token_changes_image(run, images, tmp_path, tiny_lm):
    text = run("encode", images[0]).stdout
    words = text.split()
    replacement = "apple" if words[0] != "apple" else "river"
    edited = text.replace(words[0], replacement, 1)
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    assert run("decode", "-", "-o", a, input=text).exit_code == 0
    assert run("decode", "-", "-o", b, input=edited).exit_code == 0
    assert a.read_bytes() != b.read_bytes()


def test_unknown_token_is_one_line_error(run, images):
    text = run("encode", images[0]).stdout.splitlines()
    text[2] = "notaword " + " ".join(text[2].split()[1:])
    r = run("decode", "-", "-o", "x.png", input="\n".join(text) + "\n")
    assert r.exit_code == 1
    assert r.stderr.count("\n") == 1 and "line 3" in r.stderr and "notaword" in r.stderr
    assert r.stdout == ""


def test_special_token_is_rejected(run, images):
    text = run("encode", images[0]).stdout
    r = run("decode", "-", "-o", "x.png", input="[MASK] " + " ".join(text.split()[1:]))
    assert r.exit_code == 1 and "[MASK]" in r.stderr


def test_wrong_count_and_empty_input(run, images):
    text = run("encode", images[0]).stdout
    r = run("decode", "-", "-o", "x.png", input=" ".join(text.split()[:-1]))
    assert r.exit_code == 1 and "expected 16 tokens" in r.stderr and "got 15" in r.stderr
    r = run("decode", "-", "-o", "x.png", input="")
    assert r.exit_code == 1 and "empty" in r.stderr


def test_encode_deterministic_across_batch_sizes(run, images):
    a = run("encode", *images, "-f", "jsonl", "--batch-size", "1").stdout
    b = run("encode", *images, "-f", "jsonl", "--batch-size", "64").stdout
    assert a == b and len(a.splitlines()) == 5


def test_batch_folder_mirrors_tree_and_resumes(run, tmp_path):
    src = tmp_path / "photos"
    write_images(src / "a", 3)
    write_images(src / "b" / "c", 2, seed=1)
    out = tmp_path / "tokens"
    r = run("encode", src, "-o", out)
    assert r.exit_code == 0, r.stderr
    made = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.txt"))
    assert made == ["a/img000.txt", "a/img001.txt", "a/img002.txt", "b/c/img000.txt", "b/c/img001.txt"]
    assert "converted 5, skipped 0, failed 0" in r.stderr
    first = (out / "a" / "img000.txt").stat().st_mtime_ns
    (out / "a" / "img001.txt").unlink()  # as if interrupted before this one
    r = run("encode", src, "-o", out)
    assert "converted 1, skipped 4, failed 0" in r.stderr
    assert (out / "a" / "img000.txt").stat().st_mtime_ns == first
    assert not list(out.rglob("*.tmp"))
    # and back: a folder of token files -> a folder of PNGs
    pngs = tmp_path / "pngs"
    r = run("decode", out, "-o", pngs)
    assert r.exit_code == 0, r.stderr
    assert sorted(p.relative_to(pngs).as_posix() for p in pngs.rglob("*.png")) == [m.replace(".txt", ".png") for m in made]


def test_batch_with_bad_files_converts_the_rest(run, tmp_path):
    src = tmp_path / "mixed"
    write_images(src, 3)
    (src / "zero.png").write_bytes(b"")
    (src / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(100))
    (src / "text.jpg").write_text("not an image")
    Image.new("RGB", (8, 8)).save(src / "trunc.png")
    (src / "trunc.png").write_bytes((src / "trunc.png").read_bytes()[:30])
    out = tmp_path / "out"
    r = run("encode", src, "-o", out)
    assert r.exit_code == 1
    assert "converted 3, skipped 0, failed 4" in r.stderr
    assert len(list(out.rglob("*.txt"))) == 3
    for name in ("zero.png", "corrupt.png", "text.jpg", "trunc.png"):
        assert name in r.stderr


def test_output_that_cannot_be_written_fails_alone(run, tmp_path):
    """A failed write is that input's failure, counted and named; every other output lands whole."""
    src = tmp_path / "imgs"
    write_images(src, 4)
    out = tmp_path / "tokens"
    (out / "img002.txt").mkdir(parents=True)  # a folder where a token file must go: the rename fails
    r = run("encode", src, "-o", out, "--no-skip-existing")
    assert r.exit_code == 1
    assert "converted 3, skipped 0, failed 1" in r.stderr
    assert "img002.png" in r.stderr and "cannot write" in r.stderr
    assert sorted(p.name for p in out.glob("*.txt") if p.is_file()) == ["img000.txt", "img001.txt", "img003.txt"]
    assert not list(out.rglob("*.tmp"))
    pngs = tmp_path / "pngs"
    (pngs / "img001.png").mkdir(parents=True)
    r = run("decode", out, "-o", pngs, "--no-skip-existing")
    assert r.exit_code == 1
    assert "converted 2, skipped 0, failed 1" in r.stderr
    assert sorted(p.name for p in pngs.glob("*.png") if p.is_file()) == ["img000.png", "img003.png"]
    assert all(Image.open(pngs / n).size == (16, 16) for n in ("img000.png", "img003.png"))


def test_worker_processes_give_the_same_words(run, tmp_path):
    src = tmp_path / "imgs"
    write_images(src, 7)
    (src / "bad.png").write_bytes(b"not a png")
    outs = {}
    for workers in ("0", "2"):
        out = tmp_path / f"tokens{workers}"
        r = run("encode", src, "-o", out, "--workers", workers, "--batch-size", "3")
        assert r.exit_code == 1 and "converted 7, skipped 0, failed 1" in r.stderr and "bad.png" in r.stderr
        outs[workers] = {p.name: p.read_text() for p in out.glob("*.txt")}
    assert len(outs["0"]) == 7 and outs["0"] == outs["2"]


def test_default_reading_workers_leave_the_model_its_cores(monkeypatch):
    import torch

    from lqae_cli.runtime import reading_workers

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert reading_workers(3, cpu) == 3 and reading_workers(0, cuda) == 0  # asked for: as asked
    for cores, on_cpu, on_gpu in ((1, 0, 1), (2, 0, 1), (4, 1, 3), (8, 2, 4), (64, 4, 4)):
        monkeypatch.setattr(os, "cpu_count", lambda: cores)
        assert (reading_workers(None, cpu), reading_workers(None, cuda)) == (on_cpu, on_gpu)


@pytest.mark.parametrize("fmt", ["text", "jsonl"])
def test_lanes_give_the_same_outputs_in_order(run, tmp_path, monkeypatch, fmt):
    """Batches encoded and decoded in lanes (several at once, a share of the threads each) give the outputs of
    one batch at a time: the same files, stdout in the inputs' order, the same failures (unreadable,
    unwritable), the same PNGs up to a pixel's last bit (which may depend on the thread count)."""
    from lqae_cli import convert

    src = tmp_path / "imgs"
    write_images(src, 11)
    (src / "img004b.png").write_bytes(b"not a png")
    results, decoded = {}, {}
    for lanes in (1, 3):
        monkeypatch.setattr(convert, "batch_lanes", lambda device, threads=None, n=lanes: n)
        out = tmp_path / f"tokens{lanes}"
        (out / "img007.txt").mkdir(parents=True)  # cannot be written
        r = run("encode", src, "-o", out, "--batch-size", "2", "--no-skip-existing")
        assert r.exit_code == 1 and "converted 10, skipped 0, failed 2" in r.stderr
        printed = run("encode", src, "-f", fmt, "--batch-size", "2")
        assert printed.exit_code == 1
        files = {p.name: p.read_text() for p in out.glob("*.txt") if p.is_file()}
        assert len(files) == 10 and "img004b.png" in r.stderr and "cannot write" in r.stderr
        pngs = tmp_path / f"pngs{lanes}"
        (pngs / "img001.png").mkdir(parents=True)  # cannot be written
        d = run("decode", out, "-o", pngs, "--batch-size", "2", "--no-skip-existing")
        assert d.exit_code == 1 and "converted 9, skipped 0, failed 1" in d.stderr
        images = {p.name: np.asarray(Image.open(p), dtype=np.int16) for p in pngs.glob("*.png") if p.is_file()}
        assert len(images) == 9
        results[lanes] = (files, printed.stdout, sorted(images),
                          sorted((r.stderr + d.stderr).replace(str(out), "OUT").replace(str(pngs), "PNGS").splitlines()))
        decoded[lanes] = images
    assert results[1] == results[3]
    # a decoded pixel's last bits may depend on the thread count (one lane has them all): at most 1 of 255 apart
    assert all(np.abs(decoded[1][n] - decoded[3][n]).max() <= 1 for n in decoded[1])
    if fmt == "jsonl":  # the inputs' order
        sources = [json.loads(line)["source"] for line in results[3][1].splitlines()]
        assert sources == sorted(sources) and len(sources) == 11


def test_in_lanes_keeps_order_shares_threads_and_restores_them():
    import threading
    import time

    import torch

    from lqae_cli.convert import in_lanes

    threads = torch.get_num_threads()
    torch.set_num_threads(4)
    try:
        seen = []

        def fn(i):
            time.sleep(0.02 * ((7 * i) % 5))  # later items often finish first
            seen.append((i, threading.current_thread().name, torch.get_num_threads()))
            return i * i

        assert list(in_lanes(fn, range(9), 2)) == [i * i for i in range(9)]
        assert torch.get_num_threads() == 4
        first = [s for s in seen if s[0] == 0][0]
        assert first[1] == threading.main_thread().name and first[2] == 4  # alone, with every thread
        assert all(name.startswith("lqae-lane") and n == 2 for i, name, n in seen if i > 0)

        def boom(i):
            if i == 3:
                raise ValueError("bad batch")
            return i

        with pytest.raises(ValueError, match="bad batch"):
            list(in_lanes(boom, range(9), 2))
        assert torch.get_num_threads() == 4
        started = []
        gen = in_lanes(lambda i: started.append(i) or i, range(1000), 2)
        assert [next(gen) for _ in range(3)] == [0, 1, 2]
        gen.close()  # a consumer that stops: nothing runs on, the threads are back
        assert torch.get_num_threads() == 4 and len(started) <= 3 + 4
    finally:
        torch.set_num_threads(threads)


def test_shared_settings_are_restored_by_the_last_thread_out():
    import threading

    import torch

    from lqae_cli.precision import strict_fp32

    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()
        inside = []

        def a():
            with strict_fp32():
                a_in.set()
                b_in.wait()
                inside.append(torch.backends.cuda.matmul.allow_tf32)
            a_out.set()

        def b():
            a_in.wait()
            with strict_fp32():
                b_in.set()
                a_out.wait()  # a has left; b is still inside
                inside.append(torch.backends.cuda.matmul.allow_tf32)

        ts = [threading.Thread(target=a), threading.Thread(target=b)]
        [t.start() for t in ts]
        [t.join() for t in ts]
        assert inside == [False, False] and torch.backends.cuda.matmul.allow_tf32 is True
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc settings")
def test_freed_memory_is_reused_without_page_faults():
    """keep_freed_memory: a freed 64 MiB tensor's pages serve the next one (no fresh, zero-filled mapping
    per allocation); where the user tunes malloc already (MALLOC_TRIM_THRESHOLD_), it is left alone."""
    code = """
import resource, sys, torch
from lqae_cli.runtime import keep_freed_memory
tuned = keep_freed_memory()
for _ in range(10):  # the heap settles: its first rounds still fault
    torch.empty(16 << 20).fill_(1)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    torch.empty(16 << 20).fill_(1)
print(tuned, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""
    def faults(**env):
        out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(ROOT), **env},
                             capture_output=True, text=True, check=True).stdout.split()
        return out[0] == "True", int(out[1])

    # the kernel may reclaim a process's idle pages at any moment (proactive reclaim), which adds faults to a
    # run now and then: the fewest of three runs is what malloc itself does
    runs = [faults() for _ in range(3)]
    tuned, few = all(t for t, _ in runs), min(n for _, n in runs)
    untouched, many = faults(MALLOC_TRIM_THRESHOLD_="131072")
    assert tuned and not untouched
    # 64 MiB is 16,384 pages of 4 KiB (32 huge pages where the kernel gives them to every mapping)
    assert few < 1000 and many > 10 * few + 100


def test_jsonl_output_and_decode_back(run, images, tmp_path):
    out = tmp_path / "tokens.jsonl"
    assert run("encode", *images, "-o", out).exit_code == 0
    lines = out.read_text().splitlines()
    assert len(lines) == 5 and all(json.loads(l)["grid"] == [4, 4] for l in lines)
    r = run("encode", *images, "-o", out)
    assert "skipped 5" in r.stderr and len(out.read_text().splitlines()) == 5
    pngs = tmp_path / "pngs"
    assert run("decode", out, "-o", pngs).exit_code == 0
    assert len(list(pngs.rglob("*.png"))) == 5


def test_from_list_and_no_escape(run, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_images(tmp_path / "in", 2)
    (tmp_path / "out").mkdir()
    listing = "in/img000.png\nin/../in/img001.png\nmissing.png\n"
    r = run("encode", "--from-list", "-", "-o", "out", input=listing)
    assert r.exit_code == 1
    assert (tmp_path / "out" / "in" / "img000.txt").exists()
    assert "'..'" in r.stderr and "missing.png" in r.stderr
    assert not list(tmp_path.glob("*.txt")) and not (tmp_path / "in" / "img001.txt").exists()


def test_symlinked_output_dir_does_not_escape(run, tmp_path):
    write_images(tmp_path / "src" / "sub", 1)
    outside = tmp_path / "outside"
    outside.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    (out / "sub").symlink_to(outside)
    r = run("encode", tmp_path / "src", "-o", out)
    assert r.exit_code == 1 and "outside" in r.stderr
    assert not list(outside.iterdir())


def test_missing_checkpoint_and_cuda(run, images, tmp_path, monkeypatch):
    r = run("encode", images[0], "--weights", tmp_path / "nope.safetensors")
    assert r.exit_code == 1 and r.stderr.startswith("Error: checkpoint not found")
    import torch

    if not torch.cuda.is_available():
        r = run("encode", images[0], "--device", "cuda")
        assert r.exit_code == 1 and "CUDA" in r.stderr and r.stderr.count("\n") == 1


def test_info_text_and_json(run, tiny_ckpt):
    r = run("info")
    assert r.exit_code == 0 and "4x4 = 16 words" in r.stdout
    assert "word search       faiss" in r.stdout  # faiss is a dependency: large CPU batches use it
    data = json.loads(run("info", "-f", "json").stdout)
    assert data["grid"] == [4, 4] and data["training"] == {"steps": 3}
    assert "training          1 phase\n" in r.stdout


def test_info_prints_a_chained_training_record_one_phase_a_line():
    from lqae_cli.card import training_lines

    first = {"steps": 100, "batch_size": 64, "lr": 0.0004, "mask_ratio": 0.25, "device": "cpu", "precision": "bf16",
             "wall_time_s": 600.0, "images_seen": 6400, "data": ["data/train"]}
    second = {"steps": 50, "batch_size": 64, "trained": "decoder only (encoder frozen)", "images_seen": 3200,
              "wall_time_s": 300.0, "init": first, "new_key": 7,
              "gpu_retrain": [{"whole_steps": 10, "decoder_steps": 5, "batch_size": 512, "device": "GPU", "images_seen": 7680,
                               "whole_seconds": 60.0, "decoder_seconds": 30.0, "script": "scripts/gpu_retrain.py"}]}
    lines = training_lines(second)
    assert lines[0] == "3 phases, 17,280 images seen, 16.5 min"
    assert lines[1].startswith("1. whole model, 100 steps, batch 64, lr 0.0004, mask 0.25, cpu bf16, 10.0 min, on data/train")
    assert lines[2].startswith("2. decoder only (encoder frozen), 50 steps") and lines[2].endswith("new_key 7")
    assert lines[3].startswith("3. whole model, 10 steps, then decoder only, 5 steps, batch 512") and "GPU, 1.5 min" in lines[3]
    assert training_lines({}) == ["none recorded"]


def test_version_and_bare_command(run, monkeypatch, capsys):
    from lqae_cli import __version__
    from lqae_cli.cli import main

    r = run("--version")
    assert r.exit_code == 0 and r.stdout == f"lqae {__version__}\n"
    monkeypatch.setattr(sys, "argv", ["lqae"])
    with pytest.raises(SystemExit):
        main()
    out, err = capsys.readouterr()
    assert "Usage" in out and "encode" in out and err == ""  # the help, and no empty "Error:" line


def test_show_says_where_it_wrote(run, images, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = run("show", images[0])
    assert r.exit_code == 0 and r.stdout == ""
    assert (tmp_path / "card.png").is_file() and r.stderr == "wrote card.png (1 row)\n"


def test_usage_error_exit_2(run):
    r = run("encode", "--format", "nope", "x.png")
    assert r.exit_code == 2
    r = run("encode", "--precision", "fp16", "x.png")
    assert r.exit_code == 2 and "fp16" in r.stderr


def test_quiet_still_reports_errors(run, tmp_path):
    src = tmp_path / "q"
    write_images(src, 2)
    (src / "bad.png").write_bytes(b"nope")
    r = run("encode", src, "-o", tmp_path / "out", "--quiet")
    assert r.exit_code == 1
    assert "bad.png" in r.stderr and "converted 2, skipped 0, failed 1" in r.stderr
    r = run("encode", src, "-o", tmp_path / "out", "--quiet")
    assert "converted 0, skipped 2, failed 1" in r.stderr


def test_image_modes_and_exif_rotation(run, tmp_path):
    """Greyscale, palette, RGBA, 16-bit and EXIF-rotated inputs all encode; rotation is applied."""
    from lqae_cli.data import load_image

    d = tmp_path / "modes"
    d.mkdir()
    Image.new("L", (20, 20), 128).save(d / "grey.png")
    Image.new("RGB", (20, 20), (200, 30, 30)).convert("P", palette=Image.ADAPTIVE).save(d / "pal.png")
    Image.new("RGBA", (20, 20), (0, 0, 0, 0)).save(d / "clear.png")
    Image.new("I;16", (20, 20), 40000).save(d / "deep.png")
    wide = Image.new("RGB", (40, 20), "white")
    wide.paste((0, 0, 0), (0, 0, 20, 20))  # left half black
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to view
    wide.save(d / "rotated.jpg", exif=exif.tobytes())
    r = run("encode", d, "-o", tmp_path / "out")
    assert r.exit_code == 0, r.stderr
    assert len(list((tmp_path / "out").glob("*.txt"))) == 5
    assert float(load_image(d / "clear.png", 16).min()) == 1.0  # transparent -> white
    rot = load_image(d / "rotated.jpg", 16)
    assert rot[:, :8].mean() < 0.2 and rot[:, 8:].mean() > 0.8  # viewed upright: black on top


def test_several_pretty_json_records_decode_to_a_folder(run, images, tmp_path):
    text = run("encode", *images[:3], "-f", "json").stdout
    r = run("decode", "-", "-o", tmp_path / "out", input=text)
    assert r.exit_code == 0, r.stderr
    assert len(list((tmp_path / "out").rglob("*.png"))) == 3
    r = run("decode", "-", "-o", tmp_path / "x.png", input='{"ids": [1, 2')
    assert r.exit_code == 1 and "line 1" in r.stderr and "not valid JSON" in r.stderr


def test_prompt_command_prints_the_documented_format(run, tmp_path):
    write_images(tmp_path / "set" / "cats", 3)
    write_images(tmp_path / "set" / "dogs", 3, seed=4)
    query = write_images(tmp_path / "q", 1, seed=7)[0]
    r = run("prompt", "--examples", tmp_path / "set", "--query", query, "-k", "2")
    assert r.exit_code == 0, r.stderr
    out = r.stdout
    assert out.startswith("Classify each image into one of: cats, dogs.\n\nimage: ")
    assert out.endswith("\nanswer:") and out.count("answer: cats") == 2 and out.count("answer: dogs") == 2
    assert all(len(line.split()) == 1 + 16 for line in out.splitlines() if line.startswith("image: "))


def test_encode_and_decode_choose_outputs_by_the_same_rule(run, images, tmp_path):
    """One input: the output path is a file (its suffix names its format); a folder or several inputs: a path
    that does not exist is a folder; an existing file with several inputs is a one-line error."""
    src = images[0].parent
    r = run("encode", src, "-o", tmp_path / "x.tok")
    assert r.exit_code == 0 and (tmp_path / "x.tok").is_dir() and len(list((tmp_path / "x.tok").glob("*.txt"))) == 5
    r = run("decode", tmp_path / "x.tok", "-o", tmp_path / "y.png")
    assert r.exit_code == 0 and (tmp_path / "y.png").is_dir() and len(list((tmp_path / "y.png").glob("*.png"))) == 5
    assert run("encode", images[0], "-o", tmp_path / "one.txt").exit_code == 0
    assert len((tmp_path / "one.txt").read_text().split()) == 16
    r = run("decode", tmp_path / "one.txt", "-o", tmp_path / "one.png")
    assert r.exit_code == 0 and Image.open(tmp_path / "one.png").size == (16, 16)
    r = run("encode", *images[:2], "-o", tmp_path / "one.txt")
    assert r.exit_code == 1 and r.stderr.count("\n") == 1 and "give a folder" in r.stderr
