"""What the words say, read as text by the tokenizer's own language model.

The words of an image are read as a sentence: the LM's mean-pooled, unit-length sentence embedding
(how all-MiniLM-L6-v2 embeds a sentence), computed here with its own WordPiece tokenizer. Three
figures follow (`lqae eval` prints them for a folder whose sub-folders are classes):
  * zero-shot category accuracy: the words' embedding against "a picture of <category>" for every
    category of the folder, beside chance (1 / categories);
  * name retrieval: the rank of the image's own name among all the names of its set, by the same
    cosine (top-1, top-5, and their chance);
  * name-word hit: the share of images whose semantic words contain a word of their name.
Names come from `names.json` in the folder ({"sub/file.png": "name"}), else from file names
("ice-cream.png" -> "ice cream").
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import torch
import torch.nn.functional as F

from .errors import LQAEError

STOP_WORDS = frozenset("a an the of with and or in on at to for by from off no not is it its as s up down t".split())
PROMPT = "a picture of {}"


def name_words(text: str) -> set[str]:
    """The words of a name that count for a hit: lower-case a-z runs, without stop words."""
    return {w for w in re.findall(r"[a-z]+", text.lower()) if w not in STOP_WORDS and len(w) > 1}


class SentenceEncoder:
    """The frozen LM as a sentence embedder: WordPiece tokens -> its layers -> mean pooling -> unit length."""

    def __init__(self, lm):
        try:
            from transformers import AutoTokenizer
        except ImportError as exc:  # pragma: no cover - transformers is a dependency
            raise LQAEError(f"reading words as text needs transformers ({exc})") from None
        self.lm = lm
        self.tokenizer = AutoTokenizer.from_pretrained(str(lm.lm_dir), local_files_only=True)
        self.cache: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def __call__(self, texts: list[str]) -> torch.Tensor:
        """(N, D) unit sentence embeddings, in the order of `texts`."""
        emb = self.lm.word_embeddings
        for t in dict.fromkeys(texts):
            if t not in self.cache:
                ids = self.tokenizer(t, truncation=True, max_length=256)["input_ids"]
                h = self.lm.hidden_states(emb[torch.tensor(ids)].unsqueeze(0).to(emb.dtype), 1)[0]
                self.cache[t] = F.normalize(h.float().mean(0), dim=-1)
        return torch.stack([self.cache[t] for t in texts]) if texts else torch.empty(0, emb.shape[1])


def read_names(root: Path, files: list[Path]) -> list[str]:
    """Each image's name: root/names.json's entry for it (by path relative to root), else its file name."""
    index = {}
    path = Path(root) / "names.json"
    if path.is_file():
        try:
            index = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise LQAEError(f"{path}: not a readable JSON object of names ({exc})") from None
        if not isinstance(index, dict):
            raise LQAEError(f"{path}: not a JSON object of names")
    out = []
    for f in files:
        name = index.get(f.relative_to(root).as_posix())
        out.append(name if isinstance(name, str) else re.sub(r"[-_]+", " ", f.stem))
    return out


def category_text(label: str) -> str:
    """A class folder's name as words: 'animals-nature' -> 'animals nature', 'ankle_boot' -> 'ankle boot'."""
    return re.sub(r"[-_\s]+", " ", label).strip()


def meaning_report(encoder: SentenceEncoder, semantic: list[list[str]], grid: list[list[str]], labels: list[str],
                   names: list[str]) -> dict:
    """The figures above for one set: `semantic` and `grid` are each image's semantic and detail words."""
    classes = sorted(set(labels))
    prompts = encoder([PROMPT.format(category_text(c)) for c in classes])
    truth = torch.tensor([classes.index(l) for l in labels])
    sem = encoder([" ".join(s) for s in semantic])
    every = encoder([" ".join(s + g) for s, g in zip(semantic, grid)])
    zero_shot = lambda e: float(((e @ prompts.T).argmax(1) == truth).float().mean())
    distinct = sorted(set(names))
    name_emb = encoder(distinct)
    own = torch.tensor([distinct.index(n) for n in names])
    scores = sem @ name_emb.T                                          # (N, names)
    rank = (scores > scores.gather(1, own[:, None])).sum(1)            # 0 = best
    hits = [bool(name_words(n) & set(s)) for n, s in zip(names, semantic)]
    n = len(distinct)
    return {"images": len(labels), "categories": len(classes), "zero_shot_semantic": zero_shot(sem),
            "zero_shot_all_words": zero_shot(every), "zero_shot_chance": 1 / len(classes),
            "names": n, "name_top1": float((rank < 1).float().mean()), "name_top5": float((rank < 5).float().mean()),
            "name_top1_chance": 1 / n, "name_top5_chance": min(1.0, 5 / n),
            "name_word_hit": sum(hits) / len(hits)}


def format_meaning(m: dict) -> str:
    return "\n".join([
        f"zero-shot         semantic words {m['zero_shot_semantic']:.1%}  all words {m['zero_shot_all_words']:.1%}  "
        f"chance {m['zero_shot_chance']:.1%}  ({m['categories']} categories, 'a picture of <category>')",
        f"name retrieval    top-1 {m['name_top1']:.1%} (chance {m['name_top1_chance']:.1%})  top-5 {m['name_top5']:.1%} "
        f"(chance {m['name_top5_chance']:.1%})  among {m['names']} names",
        f"name-word hit     {m['name_word_hit']:.1%} of images have a word of their name among their semantic words"])
