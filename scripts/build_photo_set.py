"""Assemble a held-out set of whole photos for scoring tile seams.

Writes data/heldout/whole-photos/<name>.png (RGB, each at its own size; a photo whose longer side exceeds
1024 px is scaled down to 1024 with Lanczos) and data/heldout/whole-photos/manifest.json, a list of
{"name", "kind", "source", "size": [w, h]}. Kinds: faces (people), flat (walls, sky), texture (foliage,
fur, fields), text, other.

Sources, none of them seen in training (scripts/build_data.py trains on the other scikit-image and
scikit-learn photos, TRAINING_PHOTOS below):
  * installed scikit-image and scikit-learn data files (camera, chelsea and china were held out already);
  * photos bundled inside pinned PyPI archives (ultralytics, mahotas, PyWavelets, SciPy 1.9's
    scipy.misc data, imgaug, insightface, face_recognition), fetched once with `pip download` into
    --cache, checked against a pinned sha256 and read straight from the archive, never installed.

    python scripts/build_photo_set.py --cache ~/.cache/lqae-photos --out data/heldout/whole-photos
"""
from __future__ import annotations

import argparse
import bz2
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from importlib import metadata, resources
from pathlib import Path

import numpy as np
from PIL import Image

MAX_SIDE = 1024
# Photos scripts/build_data.py trains on: never take these.
TRAINING_PHOTOS = {"astronaut", "coffee", "rocket", "retina", "hubble_deep_field", "ihc", "coins", "moon",
                   "grass", "gravel", "brick", "flower", "motorcycle_left", "motorcycle_right"}
LINUX_CP311 = ("--only-binary", ":all:", "--platform", "manylinux_2_28_x86_64", "--platform",
               "manylinux2014_x86_64", "--python-version", "3.11", "--implementation", "cp", "--abi", "cp311")
SDIST = ("--no-binary", ":all:")


@dataclass(frozen=True)
class Archive:
    """One pinned PyPI file: `pip download` arguments, the file it saves, and that file's sha256."""
    package: str
    version: str
    filename: str
    sha256: str
    pip_args: tuple[str, ...] = ()


ARCHIVES = {a.package: a for a in [
    Archive("ultralytics", "8.4.190", "ultralytics-8.4.190-py3-none-any.whl",
            "bd309728efa168af64d39040136828edd2dbcb4aeceb4510bdff4f3ca0ea01b8", ("--only-binary", ":all:")),
    Archive("mahotas", "1.4.19", "mahotas-1.4.19-cp311-cp311-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl",
            "512f5c23a061ee37c05b65224cc9f99940b8413519c10ea148c7f785a31d0540", LINUX_CP311),
    Archive("PyWavelets", "1.9.0", "pywavelets-1.9.0-cp311-cp311-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl",
            "d76b7fa8fc500b09201d689b4f15bf5887e30ffbe2e1f338eb8470590eb4521a", LINUX_CP311),
    Archive("scipy", "1.9.3", "scipy-1.9.3-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
            "abaf921531b5aeaafced90157db505e10345e45038c39e5d9b6c7922d68085cb", LINUX_CP311),
    Archive("imgaug", "0.4.0", "imgaug-0.4.0-py2.py3-none-any.whl",
            "ce61e65b4eb7405fc62c1b0a79d2fa92fd47f763aaecb65152d29243592111f9", ("--only-binary", ":all:")),
    Archive("insightface", "2.1", "insightface-2.1.tar.gz",
            "776cbd36b70f5f2ae1a026101cfb80387f0b2280a0dbaf073f8d3ed69f554e01", SDIST),
    Archive("face_recognition", "1.3.0", "face_recognition-1.3.0.tar.gz",
            "5e5efdd1686aa566af0d3cc1313b131e4b197657a8ffd03669e6d3fad92705ec", SDIST),
]}


@dataclass(frozen=True)
class Photo:
    """A photo: from an installed package's data file (`package` is a distribution name, `module` its
    import name) or from a member of a pinned archive (`module` is None)."""
    name: str
    kind: str
    package: str
    member: str
    module: str | None = None


PHOTOS = [
    # faces and people
    Photo("zidane", "faces", "ultralytics", "ultralytics/assets/zidane.jpg"),
    Photo("insightface-t1", "faces", "insightface", "insightface-2.1/insightface/data/images/t1.jpg"),
    Photo("obama", "faces", "face_recognition", "face_recognition-1.3.0/tests/test_images/obama.jpg"),
    Photo("luispedro", "faces", "mahotas", "mahotas/demos/data/luispedro.jpg"),
    # flat walls and sky
    Photo("camera", "flat", "scikit-image", "data/camera.png", "skimage"),
    Photo("china", "flat", "scikit-learn", "datasets/images/china.jpg", "sklearn"),
    Photo("quokka", "flat", "imgaug", "imgaug/quokka.jpg"),
    Photo("clock-motion", "flat", "scikit-image", "data/clock_motion.png", "skimage"),
    # foliage and texture
    Photo("raccoon", "texture", "scipy", "scipy/misc/face.dat"),
    Photo("aero", "texture", "PyWavelets", "pywt/data/aero.npz"),
    Photo("chelsea", "texture", "scikit-image", "data/chelsea.png", "skimage"),
    # text
    Photo("text", "text", "scikit-image", "data/text.png", "skimage"),
    Photo("page", "text", "scikit-image", "data/page.png", "skimage"),
    # other scenes
    Photo("bus", "other", "ultralytics", "ultralytics/assets/bus.jpg"),
    Photo("ascent", "other", "PyWavelets", "pywt/data/ascent.npz"),
    Photo("cell", "other", "scikit-image", "data/cell.png", "skimage"),
]


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fetch(archive: Archive, cache: Path) -> Path:
    """The archive in `cache`, downloaded with pip unless it is there already; its sha256 checked."""
    path = cache / archive.filename
    if not path.exists():
        cache.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--disable-pip-version-check",
                        *archive.pip_args, f"{archive.package}=={archive.version}", "-d", str(cache)], check=True)
        if not path.exists():
            raise SystemExit(f"pip did not save {archive.filename} into {cache}")
    digest = sha256(path)
    if digest != archive.sha256:
        raise SystemExit(f"{path}: sha256 {digest}, expected {archive.sha256}")
    return path


def read_member(path: Path, member: str) -> bytes:
    if path.suffix == ".whl":
        with zipfile.ZipFile(path) as z:
            return z.read(member)
    with tarfile.open(path) as t:
        f = t.extractfile(member)
        if f is None:
            raise SystemExit(f"{path}: {member} is not a file")
        return f.read()


def decode(member: str, data: bytes) -> Image.Image:
    """An image from a file's bytes: an image file, a PyWavelets .npz, or SciPy 1.9's bz2 raw face.dat."""
    if member.endswith(".npz"):
        with np.load(io.BytesIO(data)) as npz:
            return Image.fromarray(np.asarray(npz["data"], dtype=np.uint8))
    if member.endswith("misc/face.dat"):
        return Image.fromarray(np.frombuffer(bz2.decompress(data), dtype=np.uint8).reshape(768, 1024, 3))
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


def load(photo: Photo, cache: Path) -> tuple[Image.Image, str]:
    """The photo as RGB and its source: "package version: file" (with the archive for downloaded ones)."""
    if photo.module is not None:
        data = resources.files(photo.module).joinpath(photo.member).read_bytes()
        source = f"{photo.package} {metadata.version(photo.package)}: {photo.module}/{photo.member}"
    else:
        archive = ARCHIVES[photo.package]
        data = read_member(fetch(archive, cache), photo.member)
        source = f"{archive.package} {archive.version}: {archive.filename}:{photo.member}"
    return decode(photo.member, data).convert("RGB"), source


def fit(img: Image.Image, max_side: int = MAX_SIDE) -> Image.Image:
    w, h = img.size
    if max(w, h) <= max_side:
        return img
    scale = max_side / max(w, h)
    return img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.LANCZOS)


def save_png(img: Image.Image, dst: Path) -> None:
    tmp = dst.with_name(dst.name + ".tmp")
    img.save(tmp, format="PNG")
    os.replace(tmp, dst)


def save_json(obj: object, dst: Path) -> None:
    tmp = dst.with_name(dst.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1) + "\n")
    os.replace(tmp, dst)


def build(out: Path, cache: Path) -> list[dict]:
    out.mkdir(parents=True, exist_ok=True)
    manifest = []
    for photo in PHOTOS:
        stem = Path(photo.member).stem
        if photo.module == "skimage" and stem in TRAINING_PHOTOS:
            raise SystemExit(f"{photo.name}: {stem} is a training photo")
        img, source = load(photo, cache)
        img = fit(img)
        save_png(img, out / f"{photo.name}.png")
        manifest.append({"name": photo.name, "kind": photo.kind, "source": source, "size": list(img.size)})
        print(f"{photo.name:16s} {photo.kind:8s} {img.size[0]:4d}x{img.size[1]:<4d} {source}")
    save_json(manifest, out / "manifest.json")
    return manifest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", type=Path, default=Path("~/.cache/lqae-photos"),
                    help="where the pinned PyPI archives are downloaded (kept between runs)")
    ap.add_argument("--out", type=Path, default=Path("data/heldout/whole-photos"))
    a = ap.parse_args()
    manifest = build(a.out, a.cache.expanduser())
    kinds = sorted({m["kind"] for m in manifest})
    print(f"{len(manifest)} photos in {a.out}: " + ", ".join(
        f"{k} {sum(m['kind'] == k for m in manifest)}" for k in kinds))


if __name__ == "__main__":
    main()
