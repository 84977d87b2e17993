"""Names for the training and held-out images, and an icon set: what teaches and scores the semantic words.

Run after scripts/build_data.py. Sources (installed packages; nothing downloaded at run time, nothing committed):
  * emoji names, tags and groups: npm `emojibase-data` (MIT), matched to the Noto images of
    `emoji-datasource-google` by code point; the held-out split stays build_data.py's
    (every base emoji whose short name hashes to 0 mod 10, skin tones with it)
  * icons: npm `@tabler/icons` (MIT) outline SVGs with names, tags and categories, rendered at 64x64,
    black on white, with `resvg-py`; held out by concept: every icon whose name without its variant
    suffixes ("truck" for "truck-off" and "truck-2") hashes to 0 mod 10, so variants of a held-out
    concept never train
  * Fashion-MNIST: its class names

Writes data/{train,heldout}/icons/<category>/<name>.png, data/semantic/names.json
({relative path: {"name": ..., "tags": [...], "group": ...}}) and a names.json in every set's folder
({path in the set: name}, which `lqae eval` reads).

    python scripts/build_semantic_data.py --emoji-package E --emojibase B --tabler T --data data
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
from pathlib import Path

from PIL import Image

# Icon categories that name what an icon shows (Tabler's others, such as System, Design or Brand, name its use)
ICON_GROUPS = ("Animals", "Buildings", "Currencies", "Devices", "Food", "Games", "Health", "Nature", "Sport",
               "Vehicles", "Weather", "Arrows")
FASHION_NAMES = {"t-shirt": "t-shirt top", "trouser": "trousers", "pullover": "pullover sweater", "dress": "dress",
                 "coat": "coat", "sandal": "sandal", "shirt": "shirt", "sneaker": "sneaker shoe", "bag": "bag",
                 "ankle-boot": "ankle boot"}


VARIANTS = {"off", "filled", "plus", "minus", "check", "x", "up", "down", "left", "right", "alt"}


def concept(icon: str) -> str:
    parts = icon.split("-")
    while len(parts) > 1 and (parts[-1].isdigit() or parts[-1] in VARIANTS):
        parts.pop()
    return "-".join(parts)


def held_out(key: str) -> bool:
    return int(hashlib.sha1(key.encode()).hexdigest(), 16) % 10 == 0


def slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")


def emoji_names(package: Path, emojibase: Path, data: Path) -> dict:
    meta = json.loads((package / "emoji.json").read_text())
    base = {d["hexcode"]: d for d in json.loads((emojibase / "en" / "data.json").read_text())}
    out = {}
    for e in meta:
        b = base.get(e["unified"]) or base.get(e["unified"].replace("-FE0F", ""))
        name = b["label"] if b else e["short_name"].replace("_", " ")
        rec = {"name": name, "short_name": e["short_name"], "tags": (b or {}).get("tags", []), "group": e["category"]}
        files = [e["image"]] + [v["image"] for v in (e.get("skin_variations") or {}).values()]
        for split in ("train", "heldout"):
            for f in files:
                path = Path(split) / "emoji" / slug(e["category"]) / f
                if (data / path).is_file():
                    out[path.as_posix()] = rec
    return out


def icons(tabler: Path, data: Path, size: int) -> dict:
    import resvg_py

    meta = json.loads((tabler / "icons.json").read_text())
    out = {}
    for name, m in sorted(meta.items()):
        if m.get("category") not in ICON_GROUPS or "outline" not in m.get("styles", {}):
            continue
        svg = tabler / "icons" / "outline" / f"{name}.svg"
        if not svg.is_file():
            continue
        split = "heldout" if held_out(concept(name)) else "train"
        path = Path(split) / "icons" / slug(m["category"]) / f"{name}.png"
        png = bytes(resvg_py.svg_to_bytes(svg_path=str(svg), width=size, height=size, background="#ffffff"))
        (data / path).parent.mkdir(parents=True, exist_ok=True)
        Image.open(io.BytesIO(png)).convert("RGB").save(data / path)
        out[path.as_posix()] = {"name": name.replace("-", " "), "tags": m.get("tags", []), "group": m["category"]}
    return out


def fashion_names(data: Path) -> dict:
    out = {}
    for split in ("train", "heldout"):
        for folder in sorted((data / split / "fashion").glob("*")):
            for f in folder.glob("*.png"):
                out[f.relative_to(data).as_posix()] = {"name": FASHION_NAMES.get(folder.name, folder.name), "tags": [],
                                                       "group": "clothing"}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--emoji-package", type=Path, required=True, help="untarred emoji-datasource-google 'package' folder")
    ap.add_argument("--emojibase", type=Path, required=True, help="untarred emojibase-data 'package' folder")
    ap.add_argument("--tabler", type=Path, required=True, help="untarred @tabler/icons 'package' folder")
    ap.add_argument("--data", type=Path, default=Path("data"))
    ap.add_argument("--size", type=int, default=64)
    a = ap.parse_args()
    names = {**emoji_names(a.emoji_package, a.emojibase, a.data), **icons(a.tabler, a.data, a.size), **fashion_names(a.data)}
    (a.data / "semantic").mkdir(parents=True, exist_ok=True)
    (a.data / "semantic" / "names.json").write_text(json.dumps(names, indent=0, sort_keys=True))
    for kind in ("emoji", "icons", "fashion"):
        for split in ("train", "heldout"):
            prefix = f"{split}/{kind}/"
            mine = {p[len(prefix):]: r["name"] for p, r in names.items() if p.startswith(prefix)}
            (a.data / split / kind / "names.json").write_text(json.dumps(mine, indent=0, sort_keys=True))  # for `lqae eval`
            print(f"{kind:8s}{split:8s}{len(mine)}")


if __name__ == "__main__":
    main()
