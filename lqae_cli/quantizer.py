"""Quantize patch vectors to words of a frozen language-model vocabulary.

Patches and words meet in a small *matching space*: the allowed rows of the LM's
word-embedding table, centred and whitened by PCA to `match_dim` dimensions
(fitted once from the codebook and stored in the checkpoint). Whitening removes
the embedding table's common direction, so no "hub" word sits closest to
everything, which is what made the paper's recipe collapse onto ~100 words.

The space is kept low (8 dimensions by default, as in the low-dimensional code
lookup of ViT-VQGAN and the official LQAE code's `quantizer_latent_dim`): the
encoder maps a smooth family of inputs (a flat colour, a gradient) to a smooth,
low-dimensional family of vectors, and in a high-dimensional space such a family
meets only a few words' cells (the evidence: weights/TRAINING.md).

The search is an exact cosine nearest neighbour over the allowed vocabulary; what is
passed on to the LM is always the word's own raw embedding.

How the search is exact and fast on any hardware. The reference is: the word whose code has the
largest float64 dot product with the fp32 unit query, ties to the lower id. Three ways find it:

- Dense (GPUs, small batches on CPUs, and the few rows the others cannot certify): one fp32 product with
  bf16-rounded codes scores every word within a proven bound (SCORE_ERROR) of its true score; the few
  words that can still win are re-scored in float64. It needs no bf16 hardware.
- faiss (large CPU batches, where faiss is installed; `search.py`): with 8 dimensions and 21,745 codes,
  scoring every word through a plain matrix product is the wrong algorithm, since a (4,096 x 8) @
  (8 x 21,745) product is bound by writing its 89 million scores, and where bf16 is emulated (AVX2 CPUs)
  it was the largest part of encoding. faiss's exhaustive nearest-code pass keeps each row's minimum
  while its block is in cache; run over every 8th code and refined along a list of each word's nearest
  codes (built once per checkpoint and cached), it finds a near word, and the same list certifies that
  no other word ties. About 2% of real patches, which it cannot certify, go to the dense pass.
- A k-d tree (CPUs without faiss, `scipy.spatial.cKDTree`): it finds each query's two nearest codes by
  exact float64 Euclidean distance. For unit vectors d^2 = |q|^2 + |x|^2 - 2 q.x, so the Euclidean
  nearest is the cosine nearest unless the two are closer in d^2 than the spread of the codes' |x|^2
  (about 1e-7); such rows (ties, borders) are decided by the dense pass.

The result is the same word every way. Without faiss, the first large CPU batch is searched both by the
tree and densely, timed, and the faster way is kept for the rest of the process (the dense product is
fast with AVX-512, slow where only AVX2 is there). Clustering the codes with bound pruning was tried too:
it scores 10-30x fewer words, but gathering them with tensor indexing cost more than the dense product.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .errors import ConfigError, LQAEError


def faiss_available() -> bool:
    from .search import available

    return available()


def describe_search(device: torch.device) -> str:
    """What the word search runs on `device` (`lqae info`)."""
    if device.type != "cpu":
        return f"one fp32 pass over every word with a proven error bound, near ties in float64 ({device.type})"
    small = f"batches under {KDTREE_MIN_ROWS:,} patches: the dense fp32 pass"
    if faiss_available():
        import faiss

        from .runtime import cache_file

        return (f"faiss {faiss.__version__} pass + neighbour lists (built once, cached in {cache_file('search').parent}); "
                f"{small}")
    return f"faiss is not installed: the k-d tree or the dense pass, whichever is faster on the first large batch; {small}"


@dataclass
class QuantizerOutput:
    ids: torch.Tensor           # (B, T) vocabulary ids
    embeds: torch.Tensor        # (B, T, D) raw word embeddings, straight-through to the encoder
    commit_loss: torch.Tensor   # scalar
    entropy_loss: torch.Tensor  # scalar (0 when switched off)
    decorrelation_loss: torch.Tensor  # scalar: off-diagonal covariance of the batch's vectors


KDTREE_MIN_ROWS = 2048     # CPU batches from this many vectors (32 images) use faiss or the k-d tree; fewer always
                           # use the dense pass, which imports neither (a one-image encode starts faster)
DENSE_CHUNK = 256          # rows per dense product on a CPU: its (256 x 21,745) scores stay in cache
GPU_CHUNK = 16384          # rows per dense product on a GPU (fewer kernel launches; 1.4 GB of scores)
SCORE_BLOCK = 512          # words per block in the dense candidate pass (its block maxima reduce contiguous scores)
SCORE_ERROR = 2.0 ** -7    # bound on |candidate score - exact score| for unit vectors (bf16 codes: 2^-8; doubled for the fp32 sums)


class WordQuantizer(nn.Module):
    def __init__(self, codebook: torch.Tensor, allowed_ids: torch.Tensor, match_dim: int,
                 entropy_temperature: float = 0.05, entropy_tokens: int = 1024, fit: bool = True,
                 num_positions: int = 64, position_dither: float = 0.0, seed: int = 0):
        super().__init__()
        V, D = codebook.shape
        if match_dim > D:
            raise ConfigError(f"config field match_dim: {match_dim} exceeds the LM hidden size {D}")
        self.entropy_temperature = entropy_temperature
        self.entropy_tokens = entropy_tokens
        allowed_ids = torch.sort(allowed_ids).values  # so "lower row" means "lower id" when breaking ties
        row_of_id = torch.full((V,), -1, dtype=torch.long)
        row_of_id[allowed_ids] = torch.arange(len(allowed_ids))
        # Frozen LM data: derived, never saved.
        self.register_buffer("codebook", codebook.float(), persistent=False)       # (V, D)
        self.register_buffer("allowed_ids", allowed_ids, persistent=False)         # (A,)
        self.register_buffer("row_of_id", row_of_id, persistent=False)             # (V,) -1 = not allowed
        # The fitted matching space: saved, so ids never depend on a re-fit.
        self.register_buffer("match_mean", torch.zeros(D))
        self.register_buffer("match_proj", torch.zeros(D, match_dim))   # whitening projection
        self.register_buffer("match_lift", torch.zeros(match_dim, D))   # its inverse on the kept subspace
        self.register_buffer("match_codes", torch.zeros(len(allowed_ids), match_dim), persistent=False)
        self.register_buffer("search_codes_t", torch.zeros(match_dim, 0), persistent=False)
        # A fixed offset per grid position, added before matching: a flat patch (white, black background)
        # becomes a different word at each position instead of one word covering a third of all positions.
        dither = torch.randn(num_positions, match_dim, generator=torch.Generator().manual_seed(seed)) * position_dither
        self.register_buffer("position_dither", dither)
        self._tree = None      # the k-d tree over match_codes, built on first use
        self._norm_spread = 0.0
        self._lists = None     # search.ListSearch over match_codes, built (or read from the cache) on first use
        self.codes_cache_key: str | None = None  # set by LQAE (LM fingerprint, vocabulary rule): codes may be cached
        self.cpu_search: str | None = None  # for large CPU batches: "faiss" where installed, else "dense" or "kdtree",
                                            # whichever was faster on the first such batch
        if fit:  # a checkpoint load brings the fitted space instead
            self.fit_matching_space()
        self.register_load_state_dict_post_hook(lambda module, keys: module.refresh_codes())

    @torch.no_grad()
    def fit_matching_space(self) -> None:
        x = self.codebook[self.allowed_ids].double()
        mean = x.mean(0)
        cov = (x - mean).T @ (x - mean) / (len(x) - 1)
        eigvals, eigvecs = torch.linalg.eigh(cov)  # ascending
        k = self.match_proj.shape[1]
        vals, vecs = eigvals[-k:].flip(0).clamp_min(1e-12), eigvecs[:, -k:].flip(1)
        vecs = vecs * torch.sign(vecs[0:1, :] + 1e-30)  # fixed sign per component
        self.match_mean.copy_(mean.float())
        self.match_proj.copy_((vecs / vals.sqrt()).float())
        self.match_lift.copy_((vecs * vals.sqrt()).T.float())
        self.refresh_codes()

    @torch.no_grad()
    def refresh_codes(self) -> None:
        """The unit codes of the allowed words in the matching space, from the codebook and the fitted
        space; read from the per-machine cache when this LM, space, torch and CPU kind made them before
        (computing them touches the whole 47 MB table: a tenth of a one-image start)."""
        name = self._codes_cache_name()
        if name is not None and self._read_codes(name):
            self.build_search_codes()
            return
        rows = self.codebook.index_select(0, self.allowed_ids)
        rows.sub_(self.match_mean)  # in place: the same numbers as (rows - mean), one 33 MB buffer fewer at start
        self.match_codes.copy_(F.normalize(rows @ self.match_proj, dim=-1))
        self.build_search_codes()
        if name is not None:
            from .runtime import write_arrays

            write_arrays(name, {"codes": self.match_codes.cpu().contiguous().numpy()})

    def _codes_cache_name(self) -> str | None:
        """The cache file's name for the codes, or None where there is no LM identity to key them by (set by
        LQAE: the LM's fingerprint and vocabulary rule). The key also holds the fitted space's numbers, the
        allowed ids, and the CPU model, its flags, torch's version and capability and the thread count, whose
        arithmetic made them (a home folder shared by several machines never hands one machine another's
        rounding)."""
        if self.codes_cache_key is None or self.codebook.device.type != "cpu":
            return None
        import hashlib

        from .precision import cpu_key

        h = hashlib.sha256(repr((self.codes_cache_key, cpu_key(), tuple(self.match_codes.shape))).encode())
        for t in (self.allowed_ids, self.match_mean, self.match_proj):
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
        return f"codes-{h.hexdigest()[:24]}.safetensors"

    def _read_codes(self, name: str) -> bool:
        """Copy cached codes into match_codes; False (and nothing changed) if the file is missing, unreadable
        or not unit codes of the right shape."""
        import numpy as np

        from .runtime import read_arrays

        codes = (read_arrays(name) or {}).get("codes")
        if codes is None or codes.dtype != np.float32 or codes.shape != tuple(self.match_codes.shape):
            return False
        norms = np.linalg.norm(codes, axis=1)  # unit vectors (numpy: torch's first isfinite costs 40 ms)
        if not (np.abs(norms - 1) < 1e-4).all():
            return False
        self.match_codes.copy_(torch.from_numpy(codes))
        return True

    def build_search_codes(self) -> None:
        """The codes for the candidate pass, rounded to bf16 (the bound SCORE_ERROR allows for) and held
        in fp32 for the product, transposed, padded to whole blocks with repeats of the first code (so
        the padding never raises a row's best score)."""
        pad = -len(self.match_codes) % SCORE_BLOCK
        padded = torch.cat([self.match_codes, self.match_codes[:1].expand(pad, -1)])
        self.search_codes_t = padded.T.to(torch.bfloat16).float().contiguous()   # (k, A padded)
        self._tree = self._lists = None

    @property
    def num_allowed(self) -> int:
        return len(self.allowed_ids)

    @torch.no_grad()
    def nearest_ids(self, u: torch.Tensor, chunk: int | None = None, method: str = "auto") -> torch.Tensor:
        """Exact cosine nearest allowed word for each vector u (..., k) -> vocabulary ids (...).

        The same ids whatever the batch size, chunking, method or device (see the module docstring):
        the word with the largest float64 dot product with the fp32 unit vector, ties to the lower id.
        method: "auto" (dense on GPUs and for small CPU batches; for CPU batches of KDTREE_MIN_ROWS
        vectors or more, faiss where it is installed, else whichever of dense and the tree was faster
        on the first such batch), "dense", "kdtree" or "faiss". A non-finite vector raises LQAEError.
        """
        shape = u.shape[:-1]
        chunk = chunk or (DENSE_CHUNK if u.device.type == "cpu" else GPU_CHUNK)
        flat = F.normalize(u.reshape(-1, u.shape[-1]).float(), dim=-1)
        if not bool(torch.isfinite(flat).all()):
            raise LQAEError("cannot match a non-finite vector to a word")
        if method == "auto":
            if flat.device.type != "cpu" or flat.shape[0] < KDTREE_MIN_ROWS:
                method = "dense"
            elif self.cpu_search is None and self.num_allowed >= 2 and faiss_available():
                method = self.cpu_search = "faiss"
            elif self.cpu_search is None:
                return self.allowed_ids[self._time_both(flat, chunk)].reshape(shape)
            else:
                method = self.cpu_search
        if method == "kdtree":
            rows = self._nearest_rows_kdtree(flat)
        elif method == "faiss":
            rows = self._nearest_rows_faiss(flat, chunk)
        elif method == "dense":
            rows = self._nearest_rows_dense(flat, chunk)
        else:
            raise ValueError(f"unknown search method '{method}'")
        return self.allowed_ids[rows].reshape(shape)

    def _nearest_rows_dense(self, flat: torch.Tensor, chunk: int) -> torch.Tensor:
        rows = torch.empty(flat.shape[0], dtype=torch.long, device=flat.device)
        for start in range(0, flat.shape[0], chunk):
            rows[start:start + chunk] = self._nearest_rows(flat[start:start + chunk])
        return rows

    def _time_both(self, flat: torch.Tensor, chunk: int) -> torch.Tensor:
        """Search one batch both ways, keep the faster way in `cpu_search`; the rows are the same."""
        import time

        self._nearest_rows_kdtree(flat[:64])  # build the tree (and import scipy) outside the timing
        t0 = time.perf_counter()
        rows = self._nearest_rows_kdtree(flat)
        t1 = time.perf_counter()
        self._nearest_rows_dense(flat, chunk)
        t2 = time.perf_counter()
        self.cpu_search = "kdtree" if t1 - t0 < t2 - t1 else "dense"
        return rows

    def _nearest_rows_faiss(self, flat: torch.Tensor, chunk: int) -> torch.Tensor:
        """(n, k) fp32 unit vectors -> codebook rows, by faiss and the neighbour lists (search.py); the rows
        they cannot certify by the dense pass."""
        if self.num_allowed < 2:
            return self._nearest_rows_dense(flat, chunk)
        if self._lists is None:
            from .search import ListSearch

            self._lists = ListSearch(self.match_codes)
        rows, unsure = self._lists.rows(flat.cpu().numpy())
        rows = torch.from_numpy(rows)
        if len(unsure):
            unsure = torch.from_numpy(unsure)
            rows[unsure] = self._nearest_rows_dense(flat[unsure], chunk).cpu()
        return rows.to(flat.device)

    def _nearest_rows_kdtree(self, part: torch.Tensor) -> torch.Tensor:
        """(n, k) fp32 unit vectors on the CPU -> codebook rows of their nearest words (n,)."""
        import numpy as np

        if self.num_allowed < 2:
            return self._nearest_rows(part)
        if self._tree is None:
            from scipy.spatial import cKDTree

            codes = self.match_codes.double().cpu()
            norms2 = (codes * codes).sum(-1)
            self._norm_spread = float(norms2.max() - norms2.min())
            self._tree = cKDTree(codes.numpy(), leafsize=32)
        dist, idx = self._tree.query(part.double().cpu().numpy(), k=2, workers=max(1, torch.get_num_threads()))
        # d^2 = |q|^2 + |x|^2 - 2 q.x: the nearest is also the best-scoring word, and the only one, when
        # the runner-up is farther by more than the spread of |x|^2 (plus float64 rounding)
        sure = (dist[:, 1] ** 2 - dist[:, 0] ** 2) > self._norm_spread + 1e-12
        rows = torch.from_numpy(idx[:, 0].astype(np.int64))
        if not sure.all():
            unsure = torch.from_numpy(np.flatnonzero(~sure))
            rows[unsure] = self._nearest_rows(part[unsure]).cpu()
        return rows.to(part.device)

    def _nearest_rows(self, part: torch.Tensor) -> torch.Tensor:
        """(n, k) unit vectors -> codebook rows of their nearest words (n,), the dense way.

        The candidate pass multiplies the unit vectors by the bf16-rounded codes in fp32. Each
        candidate score is within SCORE_ERROR of the true one (codes rounded to bf16: at most 2^-8 for
        unit vectors), so the winner scores at least max - 2 * SCORE_ERROR; those few candidates are
        re-scored in float64 and ties go to the lower id."""
        n, A, G = part.shape[0], self.num_allowed, SCORE_BLOCK
        scores = (part @ self.search_codes_t.to(part.device)).view(n, -1, G)       # (n, blocks, G), padded
        block_max = scores.amax(-1)                                               # (n, blocks)
        floor = block_max.amax(-1) - 2 * SCORE_ERROR                              # (n,)
        r, b = (block_max >= floor[:, None]).nonzero(as_tuple=True)                # blocks that can hold the winner
        pr, pc = (scores[r, b] >= floor[r, None]).nonzero(as_tuple=True)           # words in them that can win
        rows, cols = r[pr], b[pr] * G + pc
        keep = cols < A                                                           # drop the padding
        rows, cols = rows[keep], cols[keep]
        exact = (part[rows].double() * self.match_codes[cols].double()).sum(-1)
        best = torch.full((n,), -3.0, dtype=torch.float64, device=part.device).scatter_reduce(0, rows, exact, "amax")
        winners = torch.where(exact == best[rows], cols, A)
        return torch.full((n,), A, dtype=torch.long, device=part.device).scatter_reduce(0, rows, winners, "amin")

    def dithered(self, u: torch.Tensor) -> torch.Tensor:
        """(B, T, k) encoder output -> the vectors that are matched to words."""
        return u.float() + self.position_dither

    def forward(self, u: torch.Tensor) -> QuantizerOutput:
        """u: (B, T, k) encoder output in the matching space."""
        u = self.dithered(u)
        ids = self.nearest_ids(u.detach())                          # (B, T)
        words = self.codebook[ids]                                  # (B, T, D) raw embeddings
        lifted = u @ self.match_lift + self.match_mean              # u mapped back to embedding space
        embeds = words + (lifted - lifted.detach())                 # straight-through
        u_n = F.normalize(u, dim=-1)
        chosen = self.match_codes[self.row_of_id[ids]]
        commit = (u_n - chosen).pow(2).sum(-1).mean()
        entropy = self.entropy_loss(u_n.reshape(-1, u_n.shape[-1])) if self.entropy_tokens else u.new_zeros(())
        return QuantizerOutput(ids, embeds, commit, entropy, decorrelation_loss(u.reshape(-1, u.shape[-1])))

    def entropy_loss(self, u_n: torch.Tensor) -> torch.Tensor:
        """Confident per token, spread over the vocabulary per batch (on a random sample of tokens)."""
        if u_n.shape[0] > self.entropy_tokens:
            u_n = u_n[torch.randperm(u_n.shape[0], device=u_n.device)[: self.entropy_tokens]]
        logp = F.log_softmax(u_n @ self.match_codes.T / self.entropy_temperature, dim=-1)   # (S, A)
        p = logp.exp()
        per_token = -(p * logp).sum(-1).mean()
        avg = p.mean(0)
        batch = -(avg * torch.log(avg.clamp_min(1e-12))).sum()
        return per_token - batch


def decorrelation_loss(u: torch.Tensor) -> torch.Tensor:
    """Squared off-diagonal covariance of (N, k) vectors, over k. The whitened codebook is
    decorrelated; encoder outputs that are too put every batch in few codes' reach."""
    c = u - u.mean(0)
    cov = c.T @ c / max(1, len(u) - 1)
    off = cov - torch.diag(torch.diagonal(cov))
    return off.pow(2).sum() / u.shape[-1]


def usage_stats(ids: torch.Tensor) -> dict:
    """Distinct codes, perplexity and the top code's share of positions."""
    counts = torch.bincount(ids.flatten()).double()
    counts = counts[counts > 0]
    p = counts / counts.sum()
    return {"distinct": int(len(counts)), "perplexity": float(torch.exp(-(p * p.log()).sum())),
            "top_share": float(p.max()) if len(p) else 0.0}
