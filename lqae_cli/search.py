"""Exact nearest-word search for large CPU batches: one fused exhaustive pass, then a certificate.

The question (quantizer.py states it exactly): for each fp32 unit vector q, the word whose code x has the
largest float64 dot product s(x) = q.x, ties to the lower row. Codes and queries are unit vectors up to fp32
rounding, so the squared distance d^2(x) = |q|^2 + |x|^2 - 2 s(x) ranks the words like s does, except
among words closer in d^2 than the spread of |x|^2 (about 6e-7 for the shipped codes).

Why this way (measured on 64,000 held-out patch vectors, 21,745 codes in 8-d, 2-core AVX-512 Xeon):
- faiss's exhaustive L2 search with k = 1 runs the distance products as BLAS blocks and keeps each row's
  minimum while the block is in cache, without writing the 21,745 scores per query that make a plain
  matrix product memory-bound: about 2 us per query, against 7-10 for scipy's k-d tree (k = 2) and 8-14
  for the dense product with its block maxima (benchmarks/README.md: the whole search side by side with both). With
  k = 2, or a range search, faiss leaves that fused path and is slower than the tree, and a tree cannot
  go much faster in 8 dimensions: it visits many leaves.
- What k = 1 does not give is the certainty that no other word ties or nearly ties with the one found
  (fp32 distances err by up to ~3e-6). That comes from a list, built once per set of codes, of each word's
  nearest codes and of `reach`: how far beyond the first B of them every other code lies (a lower bound
  from faiss's own ranked distances less their error bound). For a query at distance d from some word w,
  every word that could tie or win lies within r = d + sqrt(d^2 + slack) of w (the triangle inequality),
  so when reach[w, B] > r the first B neighbours of w hold them all: faiss scores those B (16, 64, 256 or 512 of
  them, the smallest that suffices) and the best is certain when the runner-up is farther by more than
  the error bound and the norm spread.
- w need not be the nearest word, only near: the nearer, the smaller the list. So the first pass looks at
  every 8th code only (an eighth of the work) and then at the first 64 listed neighbours of the one it
  found, which is the nearest word for most queries; the ~6% that this cannot certify get the full pass
  and a second try, and the ~2% left (far from every word, or at a near tie) go to the exact dense pass.
  (Strides of 4, 8 and 16 and steps of 32-128 were within the machine's noise of each other.)

The lists (21,745 x 512 rows, 22 MB) take about 3 s to build with faiss, so they are kept in the per-machine
cache, keyed by a hash of the codes; a cache file that is missing, unreadable or does not match is
rebuilt. faiss is optional: without it the quantizer uses its k-d tree.
"""
from __future__ import annotations

import hashlib
from contextlib import contextmanager

import numpy as np
import torch

from .runtime import SharedSettings

KMAX = 512                      # neighbours listed per word
BUCKETS = (16, 64, 256, 512)    # list prefixes scored per query: the smallest that certifies
COARSE_STRIDE = 8               # the first pass looks at every 8th code ...
STEP = 64                       # ... then at the first 64 listed neighbours of the one it found
DIST_ERROR = 2.0 ** -16         # bound on |faiss fp32 squared distance - exact| for unit vectors in up to 16-d
                                # (BLAS: three 8-term products and two sums, each within ~5e-7; 1.5e-5 leaves room)
CACHE_VERSION = 2


def available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def _blas_always():
    import faiss

    old = faiss.cvar.distance_compute_blas_threshold
    faiss.cvar.distance_compute_blas_threshold = 0

    def restore() -> None:
        faiss.cvar.distance_compute_blas_threshold = old

    return restore


_BLAS_ALWAYS = SharedSettings(_blas_always)  # process-wide: the last of several threads puts it back


@contextmanager
def _faiss_settings(faiss):
    """faiss takes its fused BLAS path only above a batch size (small batches go a per-query way that is
    30x slower here): force it for our calls, with as many threads as torch uses in this thread (an
    OpenMP setting of the calling thread's own), and put both settings back for anyone else's."""
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(max(1, torch.get_num_threads()))
    try:
        with _BLAS_ALWAYS:
            yield
    finally:
        faiss.omp_set_num_threads(threads)


class ListSearch:
    """The search over fixed codes (A, k) fp32; `rows(q)` answers a batch."""

    def __init__(self, codes: torch.Tensor):
        import faiss

        self.faiss = faiss
        self.codes = np.ascontiguousarray(codes.detach().cpu().float().numpy())
        A, k = self.codes.shape
        self.index = faiss.IndexFlatL2(k)
        self.index.add(self.codes)
        self.coarse_rows = np.arange(0, A, COARSE_STRIDE)
        self.coarse = faiss.IndexFlatL2(k)
        self.coarse.add(np.ascontiguousarray(self.codes[self.coarse_rows]))
        norms2 = (self.codes.astype(np.float64) ** 2).sum(1)
        self.spread = float(norms2.max() - norms2.min()) + 1e-12
        self.K = min(KMAX, A)
        self.buckets = tuple(b for b in BUCKETS if b < self.K) + (self.K,)
        self.step = min(STEP, self.K)
        self.lists, self.reach = self._load_or_build()

    # --- the lists ------------------------------------------------------------
    def _cache_name(self) -> str:
        h = hashlib.sha256(self.codes.tobytes())
        h.update(repr((CACHE_VERSION, self.codes.shape, self.K, self.buckets)).encode())
        return f"search-{h.hexdigest()[:24]}.safetensors"

    def _load_or_build(self) -> tuple[np.ndarray, np.ndarray]:
        """The lists from the per-machine cache, or built (and cached) when they are missing or wrong."""
        from .runtime import read_arrays, write_arrays

        A, name = len(self.codes), self._cache_name()
        t = read_arrays(name) or {}
        lists, reach = t.get("lists"), t.get("reach")
        if (lists is not None and reach is not None and lists.shape == (A, self.K) and lists.dtype in (np.int16, np.int32)
                and lists.min() >= 0 and lists.max() < A and reach.shape == (A, len(self.buckets))
                and reach.dtype == np.float64):
            return lists, reach
        lists, reach = self.build()
        write_arrays(name, {"lists": lists, "reach": reach})
        return lists, reach

    def build(self) -> tuple[np.ndarray, np.ndarray]:
        """-> (lists (A, K): each word's K nearest codes by faiss's fp32 distance, nearest first; reach
        (A, buckets) float64: a lower bound on the distance from the word to every code outside the first
        B of its list). faiss ranks all codes, so every code outside the first B has an fp32 squared
        distance of at least the (B+1)-th returned, and an exact one at least that less DIST_ERROR."""
        A, K = len(self.codes), self.K
        full = K == A  # the list holds every code: nothing lies outside the last bucket
        with _faiss_settings(self.faiss):
            D, I = self.index.search(self.codes, K if full else K + 1)
        D = D.astype(np.float64)
        reach = np.stack([np.sqrt(np.maximum(D[:, b] - DIST_ERROR, 0)) if b < D.shape[1] else np.full(A, np.inf)
                          for b in self.buckets], 1)
        dtype = np.int16 if A <= np.iinfo(np.int16).max else np.int32
        return np.ascontiguousarray(I[:, :K]).astype(dtype), np.ascontiguousarray(reach * (1 - 1e-12))

    # --- the search -----------------------------------------------------------
    def _knn_in_lists(self, q: np.ndarray, w: np.ndarray, width: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        """For each query q[i], its k nearest among the first `width` listed neighbours of word w[i], by
        faiss's fp32 squared distance: (distances (n, k), rows (n, k))."""
        faiss, n = self.faiss, len(q)
        sub = self.lists[w, :width].astype(np.int64)
        vals, ids = np.empty((n, k), np.float32), np.empty((n, k), np.int64)
        sp = faiss.swig_ptr
        faiss.knn_L2sqr_by_idx(sp(q), sp(self.codes), sp(sub), q.shape[1], n, len(self.codes), width, k,
                               sp(vals), sp(ids), width)
        return vals, ids

    def _certify(self, q: np.ndarray, w: np.ndarray, d2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Queries q with a word w each at fp32 squared distance d2 (any word: the nearer, the cheaper) ->
        (rows, sure): where `sure`, rows holds the exact answer."""
        d2 = np.maximum(d2.astype(np.float64), 0)
        near = np.sqrt(d2 + DIST_ERROR)                         # |q - w| is at most this
        radius = near + np.sqrt(d2 + DIST_ERROR + self.spread)  # every word that could tie lies this close to w
        fits = self.reach[w] > radius[:, None]
        bucket = np.where(fits.any(1), fits.argmax(1), -1)
        rows = np.full(len(q), -1, np.int64)
        sure = np.zeros(len(q), bool)
        for j, B in enumerate(self.buckets):
            sel = np.flatnonzero(bucket == j)
            if not len(sel):
                continue
            vals, ids = self._knn_in_lists(np.ascontiguousarray(q[sel]), w[sel], B, 2)
            rows[sel] = ids[:, 0]
            # certain only when every other listed code is farther by more than both errors and the norm spread
            sure[sel] = (vals[:, 1].astype(np.float64) - vals[:, 0]) > 2 * DIST_ERROR + self.spread
        return rows, sure

    def rows(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """q (n, k) fp32 unit vectors -> (rows (n,) int64, unsure (m,) indices of q). Every row not in
        `unsure` is the exact answer; the caller decides the unsure ones exactly (quantizer's dense pass).

        A cascade, each step only for the queries the one before could not certify: the nearest of every
        COARSE_STRIDE-th code and the nearest of its first STEP listed neighbours; then the full pass's
        nearest; then the caller's dense pass."""
        if not len(q):
            return np.empty(0, np.int64), np.empty(0, np.int64)
        q = np.ascontiguousarray(q, dtype=np.float32)
        with _faiss_settings(self.faiss):
            _, I = self.coarse.search(q, 1)
            d2, w = self._knn_in_lists(q, self.coarse_rows[I[:, 0]], self.step, 1)
            rows, sure = self._certify(q, w[:, 0], d2[:, 0])
            again = np.flatnonzero(~sure)
            if len(again):
                qa = np.ascontiguousarray(q[again])
                D, I = self.index.search(qa, 1)
                rows[again], sure[again] = self._certify(qa, I[:, 0], D[:, 0])
        return rows, np.flatnonzero(~sure)
