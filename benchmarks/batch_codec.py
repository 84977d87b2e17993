"""Batch encode (folder of images -> token files) and batch decode (token files -> PNGs): images/s end to end
(real CLI subprocesses, process start included), each as a share of what the CPU's matmul rate, measured
just before and after that figure, allows; where encode time goes (in-process); peak memory of a larger folder.

    python benchmarks/batch_codec.py [--images 2000] [--repeats 3] [--memory-images 10000] [--source data/heldout]
    python benchmarks/batch_codec.py --large-only --repeats 7    # the 10,000-image encode alone, 7 times
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import header, matmul_rate, model_flops  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def make_folder(dst: Path, n: int, source: Path | None) -> None:
    """n 64x64 PNGs: copies from a source folder (cycled) or random pictures when there is none."""
    from PIL import Image
    import torch

    dst.mkdir(parents=True)
    files = sorted(p for p in source.rglob("*.png")) if source and source.exists() else []
    g = torch.Generator().manual_seed(0)
    for i in range(n):
        out = dst / f"{i // 500:03d}" / f"{i:06d}.png"
        out.parent.mkdir(exist_ok=True)
        if files:
            shutil.copyfile(files[i % len(files)], out)
        else:
            arr = (torch.rand(64, 64, 3, generator=g) * 255).byte().numpy()
            Image.fromarray(arr).save(out)


# Runs a command, then writes its exit code, wall seconds and peak RSS (KiB) to the file named first. The
# benchmark starts commands through it: Linux counts into a child's peak RSS the pages of the process it
# was spawned from (until its exec), and this benchmark's own process holds a model and images.
LAUNCHER = """import resource, subprocess, sys, time
t = time.perf_counter()
code = subprocess.call(sys.argv[2:], stdout=subprocess.DEVNULL)
wall = time.perf_counter() - t
with open(sys.argv[1], "w") as f:
    f.write(f"{code} {wall} {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}")
"""


def timed(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS MiB of that command's process alone), measured by a small launcher process."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report"
        subprocess.run([sys.executable, "-S", "-c", LAUNCHER, str(report), *cmd], check=True)
        code, wall, rss_kib = report.read_text().split()
    if int(code) != 0:
        raise SystemExit(f"{' '.join(cmd)} failed with exit code {code}")
    return float(wall), int(rss_kib) / 1024


def flops_per_image(tok) -> tuple[float, float, float]:
    """(encoder, word search as dense scoring, decode: LM + decoder) FLOPs per image: the encoder and decode
    as torch counts them (common.model_flops: attention's products and the refine convolutions included;
    counting linear layers' parameters x tokens only gives 413 and 1,930 MFLOP)."""
    enc, dec = model_flops(tok)
    search = 2 * tok.config.num_tokens * tok.model.quantizer.num_allowed * tok.config.match_dim
    return enc, search, dec


def where_encode_time_goes(tok, folder: Path, batch_size: int = 64) -> dict[str, float]:
    """In-process, steady state (the model loaded first): seconds spent reading PNGs, in the encoder, in the
    word search and formatting/writing token files, for every image of the folder."""
    import torch

    from lqae_cli.convert import Destination, encode_all, gather_sources
    from lqae_cli.data import list_images, load_image

    files = list_images(folder)
    t0 = time.perf_counter()
    x = torch.stack([load_image(f, tok.image_size) for f in files])
    t1 = time.perf_counter()
    enc = search = 0.0
    q = tok.model.quantizer
    tok.encode_pixels(x[:batch_size])  # warm-up (and the CPU's choice of search)
    vectors = []
    with torch.inference_mode():
        for part in x.split(batch_size):
            a = time.perf_counter()
            u = q.dithered(tok.model.encoder(part * 2 - 1))
            b = time.perf_counter()
            q.nearest_ids(u)
            enc, search = enc + b - a, search + time.perf_counter() - b
            vectors.append(u)
    methods = {}  # every search on the same vectors, interleaved, median of 3 passes
    if x.device.type == "cpu":
        from lqae_cli.quantizer import faiss_available

        names = ["kdtree", "dense"] + (["faiss"] if faiss_available() else [])
        for name in names:
            q.nearest_ids(vectors[0], method=name)  # builds (or reads) what the method needs
        for _ in range(3):
            for name in names:
                a = time.perf_counter()
                for u in vectors:
                    q.nearest_ids(u, method=name)
                methods.setdefault(name, []).append(time.perf_counter() - a)
        methods = {k: statistics.median(v) for k, v in methods.items()}
    with tempfile.TemporaryDirectory() as out:
        sources, _, _ = gather_sources([str(folder)])
        t2 = time.perf_counter()
        encode_all(tok, sources, Destination("folder", Path(out)), "text", batch_size=batch_size)
        total = time.perf_counter() - t2
    return {"images": len(files), "read": t1 - t0, "encoder": enc, "search": search, "end_to_end": total,
            "search_method": q.cpu_search or "dense", "methods": methods}


def beside(fn):
    """(fn(), the fp32 matmul ceiling in FLOP/s measured just before and just after it, the higher of the
    two): a shared CPU's speed can drift by a factor of two within a run, so each figure is set against the
    ceiling of its own minutes, not the run's first."""
    before = matmul_rate("float32")
    out = fn()
    return out, max(before, matmul_rate("float32")) * 1e9


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--memory-images", type=int, default=10000,
                    help="also encode this many, --repeats times (peak memory, rate); 0 skips")
    ap.add_argument("--source", type=Path, default=ROOT / "data" / "heldout")
    ap.add_argument("--workers", type=int, default=None, help="passed to the CLI; default: the CLI's own default")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--precisions", default="fp32,auto,bf16",
                    help="comma-separated; leave bf16 out where it is emulated (hundreds of times slower than fp32)")
    ap.add_argument("--large-only", action="store_true",
                    help="only the --memory-images encode, --repeats times (its rate and peak memory)")
    a = ap.parse_args()
    precisions = [p for p in a.precisions.split(",") if p]
    if "fp32" not in precisions:
        raise SystemExit("--precisions must include fp32 (its token files are what decode reads)")
    rates = header("batch encode / decode")
    fp32_rate = rates["fp32"] * 1e9
    from lqae_cli import load

    tok = load(None, a.device)
    enc_f, search_f, dec_f = flops_per_image(tok)
    enc_limit = fp32_rate / enc_f
    print(f"work    encoder {enc_f / 1e6:.0f} MFLOP/image (its FLOP-bound rate at fp32 here: {enc_limit:.0f} images/s); "
          f"dense word search {search_f / 1e6:.0f} MFLOP/image; decode (LM + decoder) {dec_f / 1e6:.0f} MFLOP/image "
          f"(FLOP-bound: {fp32_rate / dec_f:.0f} images/s)")
    lqae = [sys.executable, "-m", "lqae_cli"]
    workers = ["--workers", str(a.workers)] if a.workers is not None else []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if not a.large_only:  # the 2,000-image figures (in-process, encode per precision, decode)
            make_folder(tmp / "imgs", a.images, a.source)
            # steady state and where the time goes, in-process
            w, ceil = beside(lambda: where_encode_time_goes(tok, tmp / "imgs"))
            n, lim = w["images"], ceil / enc_f
            print(f"inside  {n} images in-process, model loaded (ceiling beside it {ceil / 1e9:.0f} GFLOP/s: {lim:.0f} images/s): "
                  f"read {w['read']:.2f} s, encoder {w['encoder']:.2f} s ({n / w['encoder']:.0f} images/s = {n / w['encoder'] / lim:.0%} "
                  f"of its FLOP-bound rate), word search {w['search']:.2f} s ({w['search_method']}, "
                  f"{w['search'] / (w['encoder'] + w['search']):.1%} of encoder + search); steady-state encode (read, encode, "
                  f"write) {n / w['end_to_end']:.0f} images/s = {n / w['end_to_end'] / lim:.0%} of the encoder's FLOP-bound rate")
            if w["methods"]:
                per = {k: v / (n * tok.config.num_tokens) * 1e6 for k, v in w["methods"].items()}
                print("search  the same vectors by each method (median of 3 interleaved passes): " + ", ".join(
                    f"{k} {w['methods'][k]:.2f} s = {per[k]:.1f} us/vector" for k in per))
            # end to end, as a user runs it: fp32 (the default), auto and bf16 alternate so they see the same machine
            runs: dict[str, list[tuple[float, float]]] = {p: [] for p in precisions}  # (wall s, ceiling FLOP/s)
            for i in range(a.repeats):
                for prec in runs:
                    out = tmp / f"tokens-{prec}-{i}"  # a new folder each run (see the 10,000-image runs below)
                    (wall, _), ceil = beside(lambda: timed(lqae + ["encode", str(tmp / "imgs"), "-o", str(out), "--quiet",
                                                                   *workers, "--device", a.device, "--precision", prec]))
                    runs[prec].append((wall, ceil))
            for prec in runs:  # the last run's token files
                (tmp / f"tokens-{prec}-{a.repeats - 1}").rename(tmp / f"tokens-{prec}")
            n_tok = len(list((tmp / "tokens-fp32").rglob("*.txt")))
            same = total = 0
            for f in (tmp / "tokens-fp32").rglob("*.txt") if "bf16" in runs else ():
                ref, fast = f.read_text().split(), (tmp / "tokens-bf16" / f.relative_to(tmp / "tokens-fp32")).read_text().split()
                same, total = same + sum(x == y for x, y in zip(ref, fast)), total + len(ref)
            for prec, rs in runs.items():
                rates_ = [n_tok / wall for wall, _ in rs]
                shares = [n_tok / wall / (c / enc_f) for wall, c in rs]
                print(f"encode  --precision {prec}: {n_tok} images, median {statistics.median(rates_):.0f} images/s "
                      f"({', '.join(f'{r:.0f}' for r in rates_)}) = median {statistics.median(shares):.0%} of the encoder's FLOP-bound "
                      f"rate ({', '.join(f'{x:.0%}' for x in shares)}, each against the ceiling beside it), process start included")
            if "bf16" in runs:
                fp32_med = statistics.median(w_ for w_, _ in runs["fp32"])
                print(f"encode  bf16 runs at {fp32_med / statistics.median(w_ for w_, _ in runs['bf16']):.2f}x the fp32 speed; "
                      f"{same / total:.2%} of bf16 words equal the fp32 words")
            dec = {}
            for prec in [p for p in ("auto", "fp32", "bf16") if p in runs]:
                (dec[prec], _), ceil = beside(lambda: timed(lqae + ["decode", str(tmp / "tokens-fp32"), "-o", str(tmp / f"pngs-{prec}"),
                                                                    "--quiet", "--device", a.device, "--precision", prec]))
                dec[prec] = (dec[prec], ceil)
            n_png = len(list((tmp / f"pngs-{next(iter(dec))}").rglob("*.png")))
            for prec, (s, ceil) in dec.items():
                print(f"decode  --precision {prec}: {n_png} images in {s:.1f} s = {n_png / s:.0f} images/s = "
                      f"{n_png * dec_f / s / ceil:.0%} of the fp32 matmul rate beside it ({ceil / 1e9:.0f} GFLOP/s), process start included")
        if a.memory_images:
            make_folder(tmp / "big", a.memory_images, a.source)
            if not a.large_only:
                small_s, small_mb = timed(lqae + ["encode", str(tmp / "imgs"), "-o", str(tmp / "t2"), "--quiet", *workers])
            big = []  # (wall s, peak RSS MiB, ceiling FLOP/s)
            for i in range(a.repeats):  # each run into a new folder: deleting the last run's 10,000 files just
                # before would make the file system's inode allocation slower for this one (ext4 skips recently freed inodes)
                out = tmp / f"t3-{i}"
                (big_s, big_mb), ceil = beside(lambda: timed(lqae + ["encode", str(tmp / "big"), "-o", str(out), "--quiet", *workers]))
                big.append((big_s, big_mb, ceil))
            rates_ = [a.memory_images / s_ for s_, _, _ in big]
            shares = [a.memory_images / s_ / (c / enc_f) for s_, _, c in big]
            small = "" if a.large_only else f"{small_mb:.0f} MiB for {a.images} images, "
            print(f"memory  encode peak RSS {small}{max(m for _, m, _ in big):.0f} MiB for "
                  f"{a.memory_images} images (floor 1024 MiB, flat)")
            print(f"encode  {a.memory_images} images end to end, {len(big)} runs: median {statistics.median(rates_):.0f} images/s "
                  f"({', '.join(f'{r:.0f}' for r in rates_)}) = median {statistics.median(shares):.0%} of the encoder's FLOP-bound "
                  f"rate ({', '.join(f'{x:.0%}' for x in shares)}, each against the ceiling beside it: "
                  f"{', '.join(f'{c / 1e9:.0f}' for _, _, c in big)} GFLOP/s), process start included")
    print(f"matmul  at the end of the run: fp32 {matmul_rate('float32'):.0f} GFLOP/s (at its start {rates['fp32']:.0f}; "
          f"the shares above use the ceiling measured beside each figure)")


if __name__ == "__main__":
    main()
