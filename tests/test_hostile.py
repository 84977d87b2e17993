"""Untrusted input and output semantics: every hostile case is small, ends in one line naming the input,
and leaves nothing stale, half-written or outside the output."""
from __future__ import annotations

import errno
import io
import json
import os

import pytest
from PIL import Image

from conftest import write_images


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


# --- (B) bounded work ----------------------------------------------------------------------------
def peak_run(tiny_ckpt, args, stdin: bytes = b"", cwd=None):
    """Run `python -m lqae_cli ARGS` in a child of its own; (exit code, stderr, the child's peak RSS in MiB)."""
    import subprocess
    import sys

    probe = ("import resource, subprocess, sys; p = subprocess.run(sys.argv[1:], input=sys.stdin.buffer.read(), "
             "capture_output=True); sys.stderr.write(p.stderr.decode()); "
             "print(p.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024)")
    env = {**os.environ, "LQAE_WEIGHTS": str(tiny_ckpt)}
    p = subprocess.run([sys.executable, "-c", probe, sys.executable, "-m", "lqae_cli", *map(str, args)], input=stdin,
                       capture_output=True, env=env, cwd=cwd)
    code, rss = map(int, p.stdout.split())
    return code, p.stderr.decode(), rss


def error_lines(stderr: str) -> int:
    return sum(line.startswith("Error:") for line in stderr.splitlines())


BASELINE_MIB = 450  # a decode with the tiny checkpoint peaks near 300 MiB (torch and the model): the bound leaves room


@pytest.mark.slow
def test_standard_input_is_read_with_a_cap(tiny_ckpt):
    code, err, rss = peak_run(tiny_ckpt, ["decode", "-", "-o", "x.png"], b"\0" * (80 << 20))
    assert code == 1 and error_lines(err) == 1 and "64 MiB" in err and "MAX_TOKEN_BYTES" in err
    assert rss < BASELINE_MIB + 64, rss
    code, err, rss = peak_run(tiny_ckpt, ["encode", "-"], b"\0" * (300 << 20))
    assert code == 1 and error_lines(err) == 1 and "256 MiB" in err and "MAX_IMAGE_BYTES" in err
    assert rss < BASELINE_MIB + 256, rss


@pytest.mark.slow
def test_a_record_size_beyond_its_grid_is_refused_before_any_allocation(tiny_ckpt, run, tmp_path):
    img = write_images(tmp_path / "in", 1)[0]
    rec = json.loads(run("encode", img, "-f", "json").stdout)
    rec["size"] = [11300, 11300]
    src = tmp_path / "big.jsonl"
    src.write_text(json.dumps(rec) + "\n")
    code, err, rss = peak_run(tiny_ckpt, ["decode", src, "-o", tmp_path / "o.png"])
    assert code == 1 and error_lines(err) == 1 and "big.jsonl" in err and "11300x11300" in err and "internal" not in err
    assert rss < BASELINE_MIB, rss
    assert not (tmp_path / "o.png").exists()


@pytest.mark.slow
def test_native_size_bounds_the_padded_tile_count(tiny_ckpt, tmp_path):
    import numpy as np

    thin = tmp_path / "thin.png"
    Image.fromarray(np.zeros((1, 400_000, 3), np.uint8)).save(thin)  # 1 x 400,000: 25,000 tiles of 16 once padded
    code, err, rss = peak_run(tiny_ckpt, ["encode", thin, "--size", "native"])
    assert code == 1 and error_lines(err) == 1 and "thin.png" in err and "MAX_TILES" in err
    assert rss < BASELINE_MIB, rss


def test_big_grids_and_patterns_are_refused_by_named_limits(run, tmp_path, monkeypatch):
    words = ("apple " * 1000).strip() + "\n"
    grid = tmp_path / "huge.txt"
    grid.write_text(words * 1000)  # 1000 x 1000 words: 62,500 tiles of 4 x 4
    one_error(run("decode", grid, "-o", tmp_path / "o.png"), "huge.txt", "62,500 tiles", "MAX_TILES")
    one_error(run("decode", "-", "-o", tmp_path / "o.png", input=words * 1000), "stdin", "MAX_TILES")
    rec = {"ids": [[10] * 4] * 4, "size": [17, 4]}  # one tile is 16 pixels wide
    one_error(run("decode", "-", "-o", tmp_path / "o.png", input=json.dumps(rec)), "17x4", "16x16")
    monkeypatch.chdir(tmp_path)
    one_error(run("encode", "{0..999}{0..999}{0..999}.tar", "-o", "out"), "MAX_PATTERN_NAMES")
    assert files_under(tmp_path) == ["huge.txt"]


# --- (C) checkpoints never reach the network, and are bounded -----------------------------------
def rewrite_checkpoint(src, dst, tensors=None, **config):
    """A copy of checkpoint `src` at `dst` with config fields and tensors replaced."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(src), framework="pt") as f:
        meta = f.metadata()
    cfg = json.loads(meta["lqae_config"])
    cfg.update(config)
    meta["lqae_config"] = json.dumps(cfg)
    save_file({**load_file(str(src)), **(tensors or {})}, str(dst), metadata=meta)
    return dst


def test_a_hub_id_in_a_checkpoint_needs_the_users_opt_in(run, tiny_ckpt, tmp_path, monkeypatch):
    img = write_images(tmp_path / "in", 1)[0]
    ckpt = rewrite_checkpoint(tiny_ckpt, tmp_path / "hub.safetensors", lm_name="someone/their-model")
    monkeypatch.delenv("LQAE_ALLOW_HUB", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda *a, **k: pytest.fail("reached for the hub"))
    line = one_error(run("encode", img, "-w", ckpt), "hub.safetensors", "someone/their-model", "LQAE_ALLOW_HUB=1")
    assert os.environ["HF_HUB_OFFLINE"] == "1" and "internal" not in line
    monkeypatch.setenv("LQAE_ALLOW_HUB", "1")
    asked = []
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda name, **k: asked.append(name) or str(tmp_path / "no"))
    one_error(run("encode", img, "-w", ckpt), "hub.safetensors")
    assert asked == ["someone/their-model"]


def test_a_language_model_that_wants_its_own_code_is_refused(run, tiny_ckpt, tiny_lm_dir, tmp_path):
    import shutil

    lm = tmp_path / "remote_lm"
    shutil.copytree(tiny_lm_dir, lm)
    cfg = json.loads((lm / "config.json").read_text())
    cfg["auto_map"] = {"AutoModel": "modeling_evil.EvilModel"}
    (lm / "config.json").write_text(json.dumps(cfg))
    ckpt = rewrite_checkpoint(tiny_ckpt, tmp_path / "remote.safetensors", lm_name=str(lm))
    img = write_images(tmp_path / "in", 1)[0]
    one_error(run("encode", img, "-w", ckpt), "remote.safetensors", "auto_map")


def sparse_safetensors(path, numbers: int) -> None:
    """A safetensors file whose header promises one F32 tensor of `numbers` numbers, its data all holes."""
    header = json.dumps({"__metadata__": {"lqae_config": "{}"}, "w": {"dtype": "F32", "shape": [numbers],
                                                                       "data_offsets": [0, 4 * numbers]}}).encode()
    header += b" " * (-len(header) % 8)
    with open(path, "wb") as f:
        f.write(len(header).to_bytes(8, "little") + header)
        f.truncate(8 + len(header) + 4 * numbers)


def test_sparse_huge_and_non_finite_checkpoints_are_refused(run, tiny_ckpt, tmp_path):
    import torch
    from safetensors.torch import load_file

    img = write_images(tmp_path / "in", 1)[0]
    sparse = tmp_path / "sparse.safetensors"
    sparse_safetensors(sparse, 100_000_000)  # 400 MB that are not there
    one_error(run("encode", img, "-w", sparse), "sparse.safetensors", "sparse file")
    huge = tmp_path / "huge.safetensors"
    sparse_safetensors(huge, 300_000_000)
    one_error(run("encode", img, "-w", huge), "huge.safetensors", "MAX_PARAMETERS")
    name, t = next((k, v) for k, v in load_file(str(tiny_ckpt)).items() if v.is_floating_point() and v.numel() > 1)
    bad = t.clone()
    bad.view(-1)[0] = float("nan")
    nan = rewrite_checkpoint(tiny_ckpt, tmp_path / "nan.safetensors", {name: bad})
    one_error(run("encode", img, "-w", nan), "nan.safetensors", name, "NaN")
    assert torch.isfinite(t).all()


@pytest.mark.parametrize("damage", ["shapes", "metadata", "rng"])
def test_a_crafted_training_state_is_one_checkpoint_error(tmp_path, damage):
    import torch
    from safetensors.torch import save_file

    from lqae_cli.errors import CheckpointError
    from lqae_cli.train import load_state

    model = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(model.parameters())
    model(torch.ones(1, 4)).sum().backward()
    opt.step()
    tensors = {"optim.0.step": torch.tensor(1.0), "optim.0.exp_avg": torch.zeros(3, 4), "optim.0.exp_avg_sq": torch.zeros(3, 4),
               "rng.cpu.0": torch.get_rng_state()}
    meta = {"step": "1", "param_groups": json.dumps(opt.state_dict()["param_groups"])}
    if damage == "shapes":
        tensors["optim.0.exp_avg"] = torch.zeros(5, 5)
    elif damage == "metadata":
        meta["param_groups"] = '{"not": "a list"'
    else:
        tensors["rng.cpu.0"] = torch.zeros(3)
    path = tmp_path / "run.state.safetensors"
    save_file(tensors, str(path), metadata=meta)
    before = {k: v.clone() for k, v in opt.state_dict()["state"][0].items() if torch.is_tensor(v)}
    with pytest.raises(CheckpointError, match="run.state.safetensors") as exc:
        load_state(path, opt)
    assert "\n" not in str(exc.value)
    after = opt.state_dict()["state"][0]
    assert all(torch.equal(v, after[k]) for k, v in before.items())


# --- (D) shards ----------------------------------------------------------------------------------
def png(seed: int) -> bytes:
    import numpy as np

    buf = io.BytesIO()
    Image.fromarray((np.random.default_rng(seed).random((20, 20, 3)) * 255).astype("uint8")).save(buf, format="PNG")
    return buf.getvalue()


def make_shard(path, members) -> None:
    """members: (name, bytes) for regular files, or (name, tarfile type, link target) for the rest."""
    import tarfile

    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, *rest in members:
            info = tarfile.TarInfo(name)
            if len(rest) == 1:
                info.size = len(rest[0])
                tar.addfile(info, io.BytesIO(rest[0]))
            else:
                info.type, info.linkname = rest
                tar.addfile(info)


def shard_members(path) -> dict[str, bytes]:
    import tarfile

    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}


LONG = "a-very-long-folder-name/" + "k" * 120  # a key of 144 characters: only PAX headers hold it


def test_every_other_member_passes_through_both_ways(run, tmp_path):
    src = tmp_path / "in" / "00000.tar"
    members = []
    for key in ("000001", "000002", LONG):
        members += [(f"{key}.jpg", png(len(members))), (f"{key}.txt", f"a caption of {key[-6:]}".encode()),
                    (f"{key}.json", b'{"width": 20}'), (f"{key}.cls", b"7")]
    make_shard(src, members)
    r = run("encode", src, "-o", tmp_path / "tokens")
    assert r.exit_code == 0, r.stderr
    tokens = shard_members(tmp_path / "tokens" / "00000.tar")
    for key in ("000001", "000002", LONG):
        for ext in ("txt", "json", "cls"):
            assert tokens[f"{key}.{ext}"] == dict(members)[f"{key}.{ext}"]
        assert f"{key}.jpg" not in tokens
        assert len(tokens[f"{key}.lqae.txt"].decode().splitlines()) == 4
        assert json.loads(tokens[f"{key}.lqae.json"])["key"] == key
    r = run("decode", tmp_path / "tokens" / "00000.tar", "-o", tmp_path / "images")
    assert r.exit_code == 0, r.stderr
    images = shard_members(tmp_path / "images" / "00000.tar")
    assert set(images) == {n for n in tokens if ".lqae." not in n} | {f"{k}.png" for k in ("000001", "000002", LONG)}
    assert Image.open(io.BytesIO(images[f"{LONG}.png"])).size == (16, 16)
    assert images["000002.txt"] == b"a caption of 000002"


def test_hostile_members_are_counted_failures_and_nothing_escapes(run, tmp_path):
    import tarfile

    src = tmp_path / "deep" / "in" / "00000.tar"
    make_shard(src, [
        ("good1.png", png(1)), ("good1.txt", b"one"),
        ("../../escape.png", png(2)), ("/abs.png", png(3)), ("a/../../x.png", png(4)),
        ("link.png", tarfile.SYMTYPE, "/etc/passwd"), ("hard.png", tarfile.LNKTYPE, "good1.png"),
        ("pipe.png", tarfile.FIFOTYPE, ""), ("dev.png", tarfile.CHRTYPE, ""),
        ("good2.png", png(5)),
        ("good1.json", b"{}"),  # the key good1 comes back after good2: a duplicate
    ])
    out = tmp_path / "deep" / "out"
    r = run("encode", src, "-o", out)
    errors = [l for l in r.stderr.splitlines() if l.startswith("Error:")]
    assert r.exit_code == 1 and "internal error" not in r.stderr and all(len(l) <= 300 for l in errors)
    for name, why in (("../../escape.png", "climbs out"), ("/abs.png", "absolute"), ("a/../../x.png", "climbs out"),
                      ("link.png", "symbolic link"), ("hard.png", "hard link"), ("pipe.png", "FIFO"),
                      ("dev.png", "device"), ("good1.json", "duplicate")):
        assert any(name in l and why in l for l in errors), (name, r.stderr)
    assert "converted 2, skipped 0, failed 8" in r.stderr
    made = shard_members(out / "00000.tar")
    assert sorted(made) == ["good1.lqae.json", "good1.lqae.txt", "good1.txt", "good2.lqae.json", "good2.lqae.txt"]
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["00000.tar", "00000.tar"]


def test_a_cut_off_shard_fails_and_leaves_no_finished_output(run, tmp_path):
    whole, cut = tmp_path / "in" / "00000.tar", tmp_path / "in" / "00001.tar"
    make_shard(whole, [("a.png", png(1))])
    make_shard(cut, [(f"{i}.png", png(i)) for i in range(4)])
    data = cut.read_bytes()
    cut.write_bytes(data[: len(data) // 2])  # cut in the middle of a member
    out = tmp_path / "out"
    for _ in range(2):  # a rerun does not take the cut shard for finished
        r = run("encode", tmp_path / "in" / "*.tar", "-o", out)
        errors = [l for l in r.stderr.splitlines() if l.startswith("Error:")]
        assert r.exit_code == 1 and len(errors) == 1 and "00001.tar" in errors[0] and "breaks" in errors[0]
        assert files_under(out) == ["00000.tar"]
    assert "skipped 1" in r.stderr


def test_a_shard_is_never_encoded_into_its_own_folder(run, tmp_path):
    src = tmp_path / "shards" / "00000.tar"
    make_shard(src, [("a.png", png(1))])
    before = src.read_bytes()
    one_error(run("encode", src, "-o", tmp_path / "shards"), "is the input shard")
    assert src.read_bytes() == before


# --- (E) no single item stops or hangs a batch ----------------------------------------------------
@pytest.fixture()
def no_hang():
    """Fail (instead of hanging) a test that blocks for more than 60 seconds."""
    import signal

    def stop(*_):
        raise TimeoutError("blocked: a special file was opened")

    old = signal.signal(signal.SIGALRM, stop)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def test_a_fifo_among_the_inputs_is_counted_and_never_opened(run, tmp_path, no_hang):
    src = tmp_path / "in"
    write_images(src, 2)
    os.mkfifo(src / "b.png")
    os.mkfifo(tmp_path / "c.png")
    os.mkfifo(tmp_path / "d.tar")
    r = run("encode", src, tmp_path / "c.png", tmp_path / "d.tar", "-o", tmp_path / "out")
    errors = [l for l in r.stderr.splitlines() if l.startswith("Error:")]
    assert r.exit_code == 1 and len(errors) == 3 and all("not a regular file" in l for l in errors)
    assert "converted 2, skipped 0, failed 3" in r.stderr
    toks = tmp_path / "toks"
    assert run("encode", src / "img000.png", "-o", tmp_path / "one.txt").exit_code == 0
    toks.mkdir()
    (toks / "a.txt").write_text((tmp_path / "one.txt").read_text())
    os.mkfifo(toks / "b.txt")
    r = run("decode", toks, "-o", tmp_path / "pngs")
    assert r.exit_code == 1 and "b.txt" in r.stderr and "converted 1, skipped 0, failed 1" in r.stderr
    one_error(run("decode", toks / "b.txt", "-o", tmp_path / "x.png"), "b.txt", "not a regular file")


def test_a_255_character_file_name_converts(run, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    name = "n" * 251 + ".png"
    (src / name).write_bytes(png(3))
    r = run("encode", src, "-o", tmp_path / "out")
    assert r.exit_code == 0, r.stderr
    assert files_under(tmp_path / "out") == ["n" * 251 + ".txt"]
    r = run("decode", tmp_path / "out", "-o", tmp_path / "pngs")
    assert r.exit_code == 0 and files_under(tmp_path / "pngs") == [name]


@pytest.mark.parametrize("case", ["long-id", "deep", "pillow-size", "huge-source", "not-utf8"])
def test_hostile_json_is_one_line_naming_the_file_and_record(run, tmp_path, case):
    good = json.dumps({"ids": [[10] * 4] * 4}) + "\n"
    bad = {"long-id": '{"ids": [[1' + "0" * 100_000 + "]]}\n",
           "deep": '{"ids": ' + "[" * 100_000 + "]" * 100_000 + "}\n",
           "pillow-size": json.dumps({"ids": [[10] * 4] * 4, "size": [100_000, 100_000]}) + "\n",
           "huge-source": json.dumps({"ids": [[10] * 4] * 4, "source": "../" * 1000 + "x" * 5000}) + "\n",
           "not-utf8": '{"ids": [[10, 10, 10, 10]], "source": "\udcff"}\n'}[case]
    src = tmp_path / "h.jsonl"
    src.write_bytes((good + bad + good).encode("utf-8", errors="surrogateescape"))
    out = tmp_path / "out"
    r = run("decode", src, "-o", out)
    assert "internal error" not in r.stderr
    errors = [l for l in r.stderr.splitlines() if l.startswith("Error:")]
    assert all(len(l) <= 300 for l in errors), errors
    if case == "huge-source":  # a source that climbs out is not mirrored: the image gets a numbered name
        assert r.exit_code == 0 and len(files_under(out)) == 3
        return
    assert r.exit_code == 1 and len(errors) == 1 and "h.jsonl" in errors[0] and "line 2" in errors[0], r.stderr
    assert len(files_under(out)) == 2


def test_a_pixel_bomb_is_refused_by_its_header_alone(run, tmp_path):
    import struct
    import zlib

    data = bytearray(png(1))
    ihdr = data.index(b"IHDR")  # width and height follow the chunk type; the CRC covers type and data
    data[ihdr + 4:ihdr + 12] = struct.pack(">II", 30_000, 30_000)
    data[ihdr + 17:ihdr + 21] = struct.pack(">I", zlib.crc32(bytes(data[ihdr:ihdr + 17])))
    (tmp_path / "bomb.png").write_bytes(bytes(data))
    one_error(run("encode", tmp_path / "bomb.png"), "bomb.png", "MAX_PIXELS")
