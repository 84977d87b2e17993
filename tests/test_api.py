"""The Python API in-process: one-call load, encode of every input kind, decode of every grid kind,
words <-> ids, the card, one error type, and checkpoints from someone else as untrusted input."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import lqae_cli as lqae
from conftest import ROOT, run_main, write_images
from lqae_cli import CheckpointError, ImageError, LQAEError, TokenError, WordGrid


@pytest.fixture()
def tok(tiny_ckpt):
    return lqae.load(tiny_ckpt, device="cpu")


@pytest.fixture()
def photo(tmp_path):
    return write_images(tmp_path / "in", 1, size=20)[0]


def test_load_gives_a_ready_tokenizer_with_its_card(tok, tiny_ckpt, tiny_lm, monkeypatch):
    assert tok.name == "tiny" and tok.path == tiny_ckpt
    assert tok.image_size == 16 and tok.grid_size == 4 and tok.device.type == "cpu"
    assert tok.lm_fingerprint == tiny_lm.fingerprint and tok.lm_name == str(tiny_lm.lm_dir)
    assert tok.training == {"steps": 3} and tok.config.patch_size == 4
    assert tok.allowed_ids == frozenset(tiny_lm.allowed_ids("all").tolist())
    monkeypatch.setenv("LQAE_WEIGHTS", str(tiny_ckpt))
    assert lqae.load().path == tiny_ckpt  # $LQAE_WEIGHTS when no path is given
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        lqae.load(tiny_ckpt.parent / "missing.safetensors")
    if not torch.cuda.is_available():
        with pytest.raises(LQAEError, match="CUDA"):
            lqae.load(tiny_ckpt, device="cuda")


def test_every_input_kind_gives_the_same_ids(tok, photo):
    pil = Image.open(photo)
    arr = np.array(pil.convert("RGB"))
    tensor_u8 = torch.from_numpy(arr).permute(2, 0, 1)
    grids = [tok.encode(photo), tok.encode(str(photo)), tok.encode(photo.read_bytes()), tok.encode(pil), tok.encode(arr),
             tok.encode(arr / 255.0), tok.encode(tensor_u8), tok.encode(tensor_u8.float() / 255)]
    assert all(isinstance(g, WordGrid) for g in grids)
    assert all(g.ids == grids[0].ids for g in grids)
    assert grids[0].shape == (4, 4) and grids[0].source == str(photo) and grids[3].source is None
    assert grids[0].words == tok.ids_to_words(grids[0].ids)
    assert grids[0].text == "".join(" ".join(row) + "\n" for row in grids[0].words)


def test_a_list_or_a_batch_gives_a_list_in_order(tok, tmp_path):
    paths = write_images(tmp_path / "in", 5, size=16)
    one_by_one = [tok.encode(p).ids for p in paths]
    assert [g.ids for g in tok.encode(paths, batch_size=2)] == one_by_one
    batch = torch.stack([tok.pixels(p) for p in paths])
    assert [g.ids for g in tok.encode(batch)] == one_by_one  # a 4-D tensor is a batch
    assert tok.encode_pixels(batch).tolist() == one_by_one
    assert tok.encode([]) == []


def test_cli_and_api_give_the_same_words(tok, photo, tiny_ckpt, monkeypatch):
    from typer.testing import CliRunner

    from lqae_cli.cli import app

    monkeypatch.setenv("LQAE_WEIGHTS", str(tiny_ckpt))
    r = CliRunner().invoke(app, ["encode", str(photo), "-f", "json"], catch_exceptions=False)
    rec = json.loads(r.stdout)
    grid = tok.encode(photo)
    assert rec["ids"] == grid.ids and rec["tokens"] == grid.words
    assert json.loads(tok.format(grid, "json"))["ids"] == grid.ids
    assert tok.parse(tok.format(grid, "ids"))[0].ids == grid.ids


def test_decode_takes_grids_ids_words_and_text(tok, photo):
    grid = tok.encode(photo)
    ref = np.asarray(tok.decode(grid))
    assert tok.decode(grid).size == (16, 16) and tok.decode(grid).mode == "RGB"
    flat_ids = [i for row in grid.ids for i in row]
    same = [tok.decode(grid.ids), tok.decode(grid.words), tok.decode(flat_ids), tok.decode(grid.text),
            tok.decode(torch.tensor(grid.ids)), tok.decode(np.array(grid.ids)), tok.decode(tok.format(grid, "jsonl"))]
    assert all(np.array_equal(np.asarray(img), ref) for img in same)
    many = tok.decode([grid, grid.ids, grid.text])
    assert len(many) == 3 and all(np.array_equal(np.asarray(img), ref) for img in many)
    assert len(tok.decode(torch.tensor([grid.ids, grid.ids]))) == 2  # a 3-D tensor is a batch
    out = tok.decode_ids(torch.tensor([grid.ids]))
    assert out.shape == (1, 3, 16, 16) and 0 <= float(out.min()) and float(out.max()) <= 1


def test_words_round_trip_and_bad_words_are_token_errors(tok, photo):
    grid = tok.encode(photo)
    assert tok.words_to_ids(grid.words) == grid.ids
    assert tok.ids_to_words(tok.words_to_ids("apple")) == "apple"
    edited = [row[:] for row in grid.words]
    edited[0][0] = "river" if edited[0][0] != "river" else "apple"
    assert not np.array_equal(np.asarray(tok.decode(edited)), np.asarray(tok.decode(grid)))
    for bad, match in ((["notaword"] * 16, "notaword"), ([["[MASK]"] * 4] * 4, r"\[MASK\]"), ([[1] * 4] * 4, "id 1"),
                       (grid.ids[:3], "expected 4x4"), (grid.text + "\n" + grid.text, "holds 2 images"), (3.5, "cannot decode")):
        with pytest.raises(TokenError, match=match):
            tok.decode(bad)
    with pytest.raises(TokenError):
        tok.ids_to_words(10**6)
    with pytest.raises(TokenError, match="integers in"):
        tok.decode_ids(torch.full((1, 4, 4), 10**6))


def test_bad_images_are_image_errors(tok, tmp_path):
    (tmp_path / "bad.png").write_bytes(b"not a png")
    for bad in (tmp_path / "bad.png", tmp_path / "missing.png", b"junk", np.zeros((4, 4, 7), np.uint8),
                np.full((4, 4, 3), np.nan), 42):
        with pytest.raises(ImageError):
            tok.encode(bad)
    assert issubclass(ImageError, LQAEError) and issubclass(TokenError, LQAEError) and issubclass(CheckpointError, LQAEError)


def test_import_is_light_and_neither_encode_nor_decode_imports_transformers(tiny_ckpt):
    """Encoding needs no LM layers; decoding runs a BERT through bert.py (importing transformers and, with
    it, torch's compiler took seconds of a decode's start)."""
    code = ("import sys, lqae_cli; assert 'torch' not in sys.modules, 'import is not light'; "
            f"t = lqae_cli.load({str(tiny_ckpt)!r}); g = t.encode({str(ROOT / 'examples' / 'emoji-cat.png')!r}); "
            "assert 'transformers' not in sys.modules, 'encode imported transformers'; "
            "img = t.decode(g); assert img.size == (64, 64), img.size; "
            "heavy = [m for m in ('transformers', 'torch._dynamo') if m in sys.modules]; "
            "assert not heavy, f'decode imported {heavy}'; print('ok')")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 0 and p.stdout == "ok\n", p.stderr[-500:]


# --- checkpoints from someone else --------------------------------------------------
def crafted(tmp_path, tiny_ckpt, name: str, config_edit=None, tensor_edit=None) -> "Path":
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(tiny_ckpt), framework="pt") as f:
        meta = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    if config_edit is not None:
        cfg = json.loads(meta["lqae_config"])
        config_edit(cfg)
        meta["lqae_config"] = json.dumps(cfg)
    if tensor_edit is not None:
        tensor_edit(tensors)
    path = tmp_path / f"{name}.safetensors"
    save_file(tensors, str(path), metadata=meta)
    return path


@pytest.mark.parametrize("field,value,match", [
    ("enc_width", 65536, "enc_width"), ("patch_size", 0, "patch_size"), ("dec_depth", 10**6, "dec_depth"),
    ("image_size", "64", "image_size"), ("mask_ratio", float("nan"), "mask_ratio"), ("heads", 3, "heads"),
    ("recon_loss", "l1", "recon_loss"), ("frame_tokens", 1, "frame_tokens"), ("bogus_field", 1, "bogus_field"),
])
def test_out_of_range_config_is_a_one_line_error_naming_the_field(tmp_path, tiny_ckpt, field, value, match):
    path = crafted(tmp_path, tiny_ckpt, field, lambda cfg: cfg.__setitem__(field, value))
    with pytest.raises(CheckpointError, match=match) as exc:
        lqae.load(path)
    assert "\n" not in str(exc.value)


def test_tensor_shapes_are_checked_against_the_config_before_loading(tmp_path, tiny_ckpt, monkeypatch):
    """A config that asks for a wide model with small tensors in the file is refused from the header alone."""
    wide = crafted(tmp_path, tiny_ckpt, "wide", lambda cfg: cfg.update(enc_width=4096, heads=2))
    from safetensors import safe_open

    read = []
    real_open = safe_open

    class Spy:
        def __init__(self, path, *a, **k):
            self.f, self.path = real_open(path, *a, **k), path

        def __enter__(self):
            self.inner = self.f.__enter__()
            return self

        def __exit__(self, *a):
            return self.f.__exit__(*a)

        def get_tensor(self, k):
            if self.path == str(wide):
                read.append(k)
            return self.inner.get_tensor(k)

        def __getattr__(self, name):
            return getattr(self.inner, name)

    built = []
    monkeypatch.setattr("safetensors.safe_open", Spy)
    monkeypatch.setattr("lqae_cli.checkpoint._build", lambda *a: built.append(a))
    with pytest.raises(CheckpointError, match=r"its tensors hold [\d,]+ numbers, the config's model [\d,]+"):
        lqae.load(wide)
    assert read == [] and built == []  # no tensor read, no model of the config's size built
    monkeypatch.undo()
    shrunk = crafted(tmp_path, tiny_ckpt, "shrunk", tensor_edit=lambda t: t.update({"decoder.head.bias": torch.zeros(5)}))
    with pytest.raises(CheckpointError, match="does not match its config"):
        lqae.load(shrunk)
    turned = crafted(tmp_path, tiny_ckpt, "turned", tensor_edit=lambda t: t.update({"decoder.head.weight": t["decoder.head.weight"].T.contiguous()}))
    with pytest.raises(CheckpointError, match=r"tensor decoder\.head\.weight has shape \[\d+, \d+\], the config makes"):
        lqae.load(turned)
    ints = crafted(tmp_path, tiny_ckpt, "ints", tensor_edit=lambda t: t.update({"decoder.head.bias": t["decoder.head.bias"].long()}))
    with pytest.raises(CheckpointError, match="dtype"):
        lqae.load(ints)
    (tmp_path / "junk.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}      ")
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        lqae.load(tmp_path / "junk.safetensors")


def test_crafted_checkpoint_on_the_command_line_is_one_line(tmp_path, tiny_ckpt):
    path = crafted(tmp_path, tiny_ckpt, "huge", lambda cfg: cfg.__setitem__("enc_width", 65536))
    code, out, err = run_main("encode", ROOT / "examples" / "emoji-cat.png", "--weights", path)
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and err.startswith("Error: ") and "enc_width" in err


def test_imports_run_down_the_layers():
    """No import cycle among lqae_cli's modules, counting imports inside functions: each module imports
    only modules below it (errors, ops, fileio at the bottom; cli at the top)."""
    import re

    modules = {p.stem for p in (ROOT / "lqae_cli").glob("*.py")}
    graph = {}
    for path in (ROOT / "lqae_cli").glob("*.py"):
        deps = set()
        for name, names in re.findall(r"^\s*from \.(\w*) import ([\w, ]+)", path.read_text(), re.M):
            deps |= {name} if name else {n.strip() for n in names.split(",")} & modules
        graph[path.stem] = deps - {path.stem}
    done, stack = set(), []

    def visit(module):
        assert module not in stack, "import cycle: " + " -> ".join(stack[stack.index(module):] + [module])
        if module not in done:
            stack.append(module)
            for dep in sorted(graph.get(module, ())):
                visit(dep)
            stack.pop()
            done.add(module)

    for module in sorted(graph):
        visit(module)


def test_no_private_api_of_other_packages():
    for module in (ROOT / "lqae_cli").glob("*.py"):
        assert "typer._" not in module.read_text(), module.name


def test_auto_precision_is_bf16_only_where_native_and_faster(monkeypatch):
    from lqae_cli import precision

    cpu = torch.device("cpu")
    monkeypatch.setattr(precision, "native_bf16", lambda device: False)
    assert precision.resolve("auto", cpu) == "fp32" and "no native bf16" in precision.explain(cpu)
    monkeypatch.setattr(precision, "native_bf16", lambda device: True)
    monkeypatch.setattr(precision, "bf16_speedup", lambda device: 0.4)  # emulated-like: slower
    assert precision.resolve("auto", cpu) == "fp32"
    monkeypatch.setattr(precision, "bf16_speedup", lambda device: 2.0)
    assert precision.resolve("auto", cpu) == "bf16" and precision.resolve("fp32", cpu) == "fp32"
    with pytest.raises(lqae.ConfigError, match="fp16"):
        precision.resolve("fp16", cpu)


def test_native_bf16_needs_the_flag_and_kernels_allowed_to_use_it(monkeypatch):
    """An AVX-512 BF16 CPU whose torch kernels are held to AVX2 (ATEN_CPU_CAPABILITY=avx2) emulates bf16."""
    from lqae_cli import precision

    cpu = torch.device("cpu")
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx2", "avx512f", "avx512_bf16"}))
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    assert precision.native_bf16(cpu)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    assert not precision.native_bf16(cpu)
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx2", "avx512f"}))
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    assert not precision.native_bf16(cpu)


def test_decode_auto_never_picks_int8_and_int8_is_cpu_only(monkeypatch):
    """int8's dynamic scales follow the whole batch, so auto (batch-independent decodes) never takes it."""
    from lqae_cli import precision

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr(precision, "auto_precision", lambda device: "fp32")
    assert precision.resolve_decode("auto", cpu) == "fp32" and "int8" in precision.explain_decode(cpu)
    monkeypatch.setattr(precision, "auto_precision", lambda device: "bf16")
    assert precision.resolve_decode("auto", cpu) == "bf16"
    assert precision.resolve_decode("int8", cpu) == "int8" and precision.resolve_decode("fp32", cpu) == "fp32"
    with pytest.raises(lqae.ConfigError, match="CPUs only"):
        precision.resolve_decode("int8", cuda)
    with pytest.raises(lqae.ConfigError, match="int8"):
        precision.resolve_decode("int4", cpu)


def test_int8_decode_is_close_to_fp32_deterministic_and_leaves_the_model_alone(tok, photo):
    grid = tok.encode(photo)
    ids = torch.tensor([grid.ids])
    fp32 = tok.decode_ids(ids, "fp32")
    int8 = tok.decode_ids(ids, "int8")
    assert torch.equal(int8, tok.decode_ids(ids, "int8"))
    assert not torch.equal(int8, fp32)                               # it did run quantised
    assert -10 * torch.log10((int8 - fp32).pow(2).mean()) > 35     # and stays close (PSNR between the two, dB)
    assert torch.equal(fp32, tok.decode_ids(ids, "fp32"))           # the fp32 decoder was not touched
    assert all(type(m) is torch.nn.Linear for m in tok.model.decoder.modules() if "Linear" in type(m).__name__)


def test_bf16_decode_is_close_to_fp32(tok, photo):
    grid = tok.encode(photo)
    a = np.asarray(tok.decode(grid, precision="fp32"), dtype=np.float64)
    b = np.asarray(tok.decode(grid, precision="bf16"), dtype=np.float64)
    assert 10 * np.log10(255 ** 2 / max(np.mean((a - b) ** 2), 1e-10)) > 30
    assert tok.auto_precision in ("fp32", "bf16")
