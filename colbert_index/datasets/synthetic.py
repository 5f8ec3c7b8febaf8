"""A synthetic clustered corpus that behaves like ColBERT token embeddings.

Topics have Zipf popularity; each topic owns a set of correlated "concept" directions, and a pool of
common concepts (stop words, punctuation) is shared by all documents. A token is a concept plus
noise, L2-normalised; a few concepts are private to each document (names, numbers, rare terms).
Documents take 20-300 tokens (log-normal); each query is derived from a target document: some of
its tokens re-noised, concepts of its topic, and common concepts.

Every document and query is generated from its own seed, so :class:`SyntheticStream` can produce a
corpus of millions of documents one at a time (for streaming builds) and regenerate any of them.
"""

from __future__ import annotations

import multiprocessing
import os
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice

import numpy as np

PER_TOPIC, N_COMMON, N_PRIVATE = 128, 256, 4
NOISE = 0.6  # norm of the noise around each concept


@dataclass
class SyntheticCorpus:
    embeddings: np.ndarray  # float32 [n_tokens, dim], rows L2-normalised
    doclens: np.ndarray  # int64 [n_docs]
    queries: np.ndarray  # float32 [n_queries, q_len, dim]
    targets: np.ndarray  # int64 [n_queries]: the document each query was derived from

    @property
    def offsets(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.doclens)])

    def documents(self) -> list[np.ndarray]:
        """Per-document views into :attr:`embeddings`."""
        o = self.offsets
        return [self.embeddings[o[i] : o[i + 1]] for i in range(len(self.doclens))]


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _zipf_probs(n: int, a: float) -> np.ndarray:
    p = 1.0 / np.arange(1, n + 1) ** a
    return p / p.sum()


def _draw(rng: np.random.Generator, cdf: np.ndarray, n: int) -> np.ndarray:
    return np.minimum(np.searchsorted(cdf, rng.random(n), side="right"), len(cdf) - 1)


class SyntheticStream:
    """The corpus of :func:`make_corpus`, generated lazily: ``document(d)``, ``query(i)``, iteration.

    Memory is the shared vocabulary (float16, ``n_docs // 50`` topics x 128 concepts) and a few
    arrays per document; no token is kept.
    """

    def __init__(
        self,
        n_docs: int,
        dim: int = 64,
        n_queries: int = 100,
        q_len: int = 32,
        mean_doc_len: int = 100,
        min_doc_len: int = 20,
        max_doc_len: int = 300,
        seed: int = 0,
    ) -> None:
        if n_docs < 1 or n_queries < 0 or dim < 2 or q_len < 1:
            raise ValueError("need n_docs >= 1, n_queries >= 0, dim >= 2 and q_len >= 1")
        self.n_docs, self.dim, self.q_len, self.seed = n_docs, dim, q_len, seed
        rng = np.random.default_rng(seed)
        self.n_topics = n_topics = max(8, n_docs // 50)
        self.anisotropy = rng.standard_normal(dim)  # real token embeddings share a mean direction
        self.anisotropy *= 0.5 / np.linalg.norm(self.anisotropy)
        self.topic_centers = _unit(rng.standard_normal((n_topics, dim)))
        concepts = np.empty((n_topics, PER_TOPIC, dim), dtype=np.float16)
        for lo in range(0, n_topics, 1024):
            hi = min(lo + 1024, n_topics)
            noise = rng.standard_normal((hi - lo, PER_TOPIC, dim)) / np.sqrt(dim)
            concepts[lo:hi] = _unit(self.topic_centers[lo:hi, None, :] * 0.8 + noise + self.anisotropy)
        common = _unit(rng.standard_normal((N_COMMON, dim)) / np.sqrt(dim) + self.anisotropy)
        # concept id -> direction; common concepts come after the topics' ones
        self.vocab = np.concatenate([concepts.reshape(-1, dim), common.astype(np.float16)])
        self.topic_p = _zipf_probs(n_topics, 1.0)[rng.permutation(n_topics)]
        # inverse-CDF sampling (rng.choice(p=...) rebuilds the CDF on every call)
        self.concept_cdf = np.cumsum(_zipf_probs(PER_TOPIC, 1.0))
        self.common_cdf = np.cumsum(_zipf_probs(N_COMMON, 1.0))
        mu = np.log(mean_doc_len) - 0.5 * 0.6**2
        self.doclens = np.clip(np.round(rng.lognormal(mu, 0.6, n_docs)), min_doc_len, max_doc_len).astype(np.int64)
        self.main = rng.choice(n_topics, n_docs, p=self.topic_p)
        self.second = rng.choice(n_topics, n_docs, p=self.topic_p)
        self.targets = rng.choice(n_docs, n_queries).astype(np.int64)
        self.sigma = NOISE / np.sqrt(dim)

    @property
    def n_tokens(self) -> int:
        return int(self.doclens.sum())

    def document(self, d: int) -> np.ndarray:
        """Tokens of document ``d``, float32 ``[doclens[d], dim]`` (the same on every call)."""
        rng = np.random.default_rng((self.seed, 1, d))
        n, dim = int(self.doclens[d]), self.dim
        source = rng.random(n)
        topic = np.where(source < 0.8, self.main[d], self.second[d])
        ids = topic * PER_TOPIC + _draw(rng, self.concept_cdf, n)
        is_common = source >= 0.95
        ids[is_common] = self.n_topics * PER_TOPIC + _draw(rng, self.common_cdf, int(is_common.sum()))
        base = self.vocab[ids].astype(np.float32)
        is_private = (source >= 0.65) & (source < 0.8)
        private = _unit(
            self.topic_centers[self.main[d]] * 0.8
            + rng.standard_normal((N_PRIVATE, dim)) / np.sqrt(dim)
            + self.anisotropy
        )
        base[is_private] = private[rng.integers(0, N_PRIVATE, int(is_private.sum()))]
        return _unit(base + self.sigma * rng.standard_normal((n, dim)))

    def query(self, i: int) -> np.ndarray:
        """Query ``i``, float32 ``[q_len, dim]``, made from document ``targets[i]``."""
        rng = np.random.default_rng((self.seed, 2, i))
        d, q_len = int(self.targets[i]), self.q_len
        doc = self.document(d)
        kind = rng.random(q_len)
        from_doc = rng.integers(0, len(doc), q_len)
        topical = self.main[d] * PER_TOPIC + _draw(rng, self.concept_cdf, q_len)
        generic = self.n_topics * PER_TOPIC + _draw(rng, self.common_cdf, q_len)
        concept = self.vocab[np.where(kind < 0.85, topical, generic)].astype(np.float32)
        base = np.where((kind < 0.6)[:, None], doc[from_doc], concept)
        return _unit(base + self.sigma * rng.standard_normal((q_len, self.dim)))

    def queries(self) -> np.ndarray:
        return (
            np.stack([self.query(i) for i in range(len(self.targets))])
            if len(self.targets)
            else (np.zeros((0, self.q_len, self.dim), np.float32))
        )

    def __iter__(self) -> Iterator[np.ndarray]:
        """Every document in order, one at a time."""
        return (self.document(d) for d in range(self.n_docs))

    def batches(self, batch_docs: int = 2048, workers: int | None = None) -> Iterator[list[np.ndarray]]:
        """Every document in order, as lists of ``batch_docs`` float16 arrays (what a build spills), made by
        ``workers`` forked processes (default: one per CPU; 1, or no ``fork`` on this platform: this one).

        At most two batches per worker are in flight, so memory stays bounded when the consumer is slower.
        """
        ranges = [(lo, min(lo + batch_docs, self.n_docs)) for lo in range(0, self.n_docs, batch_docs)]
        workers = min(workers or os.cpu_count() or 1, len(ranges))
        if workers <= 1 or "fork" not in multiprocessing.get_all_start_methods():
            for lo, hi in ranges:
                yield self._split(lo, hi, self._tokens(lo, hi))
            return
        global _FORKED_STREAM
        _FORKED_STREAM = self  # the workers inherit it: nothing is pickled but the ranges and the tokens
        try:
            with multiprocessing.get_context("fork").Pool(workers) as pool:
                todo = iter(ranges)
                pending = deque((r, pool.apply_async(_forked_tokens, r)) for r in islice(todo, 2 * workers))
                while pending:
                    (lo, hi), result = pending.popleft()
                    r = next(todo, None)
                    if r is not None:
                        pending.append((r, pool.apply_async(_forked_tokens, r)))
                    yield self._split(lo, hi, result.get())
        finally:
            _FORKED_STREAM = None

    def _tokens(self, lo: int, hi: int) -> np.ndarray:
        return np.concatenate([self.document(d) for d in range(lo, hi)]).astype(np.float16)

    def _split(self, lo: int, hi: int, tokens: np.ndarray) -> list[np.ndarray]:
        return np.split(tokens, np.cumsum(self.doclens[lo : hi - 1]))


_FORKED_STREAM: SyntheticStream | None = None


def _forked_tokens(lo: int, hi: int) -> np.ndarray:
    return _FORKED_STREAM._tokens(lo, hi)


def make_corpus(
    n_docs: int,
    dim: int = 64,
    n_queries: int = 100,
    q_len: int = 32,
    mean_doc_len: int = 100,
    min_doc_len: int = 20,
    max_doc_len: int = 300,
    seed: int = 0,
) -> SyntheticCorpus:
    """Generate ``n_docs`` documents and ``n_queries`` queries in memory (deterministic for a ``seed``)."""
    stream = SyntheticStream(n_docs, dim, n_queries, q_len, mean_doc_len, min_doc_len, max_doc_len, seed)
    emb = np.empty((stream.n_tokens, dim), dtype=np.float32)
    offsets = np.concatenate([[0], np.cumsum(stream.doclens)])
    for d, doc in enumerate(stream):
        emb[offsets[d] : offsets[d + 1]] = doc
    return SyntheticCorpus(emb, stream.doclens, stream.queries(), stream.targets)
