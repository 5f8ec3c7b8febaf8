"""A synthetic clustered corpus that behaves like ColBERT token embeddings.

Topics have Zipf popularity; each topic owns a set of correlated "concept" directions, and a pool of
common concepts (stop words, punctuation) is shared by all documents. A token is a concept plus
noise, L2-normalised; a few concepts are private to each document (names, numbers, rare terms).
Documents take 20-300 tokens (log-normal); each query is derived from a target document: some of
its tokens re-noised, concepts of its topic, and common concepts.

:class:`CorpusShape` holds the knobs that change what a search meets (how many topics and how tight they are,
how coherent a document is, how long documents are, how long and how noisy queries are); its defaults give the
corpus above. :mod:`.family` names a family of shapes for tuning and testing the search defaults.

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


@dataclass(frozen=True)
class CorpusShape:
    """The shape of a synthetic corpus beyond its size and dim; the defaults are the original generator's.

    docs_per_topic: the corpus has ``max(8, n_docs // docs_per_topic)`` topics; each owns 128 concept directions.
    concept_spread: noise around a topic's centre in each of its concepts, relative to the default (larger: a
        topic's concepts spread wider and topics overlap more).
    coherence: share of a document's tokens that come from its main topic (its private concepts included).
    side_topics: topics the rest of a document's topical tokens are drawn from, uniformly (1: one second topic).
    common_share: share of tokens drawn from the concepts every document shares (stop words, punctuation).
    token_noise: norm of the noise around each concept in a document token.
    doclen_sigma: spread of the log-normal document lengths (``mean_doc_len`` is the mean).
    query_noise: a query token's noise, relative to a document token's.
    query_from_doc: share of a query's tokens copied (re-noised) from its target document; the rest are concepts
        of its main topic (85%) and common concepts.
    """

    docs_per_topic: int = 50
    concept_spread: float = 1.0
    coherence: float = 0.8
    side_topics: int = 1
    common_share: float = 0.05
    token_noise: float = 0.6
    doclen_sigma: float = 0.6
    query_noise: float = 1.0
    query_from_doc: float = 0.6

    def __post_init__(self) -> None:
        if not 0.15 <= self.coherence <= 1.0 - self.common_share:
            raise ValueError(f"coherence must be in [0.15, 1 - common_share], got {self.coherence}")
        if not 0.0 <= self.common_share < 0.85 or not 0.0 <= self.query_from_doc <= 1.0:
            raise ValueError("common_share must be in [0, 0.85) and query_from_doc in [0, 1]")
        if self.side_topics < 1 or self.docs_per_topic < 1:
            raise ValueError("side_topics and docs_per_topic must be >= 1")
        if min(self.concept_spread, self.token_noise, self.doclen_sigma, self.query_noise) < 0:
            raise ValueError("spreads and noises must be >= 0")


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
        shape: CorpusShape | None = None,
    ) -> None:
        if n_docs < 1 or n_queries < 0 or dim < 2 or q_len < 1:
            raise ValueError("need n_docs >= 1, n_queries >= 0, dim >= 2 and q_len >= 1")
        self.n_docs, self.dim, self.q_len, self.seed = n_docs, dim, q_len, seed
        self.shape = shape = shape or CorpusShape()
        rng = np.random.default_rng(seed)
        self.n_topics = n_topics = max(8, n_docs // int(shape.docs_per_topic))
        self.anisotropy = rng.standard_normal(dim)  # real token embeddings share a mean direction
        self.anisotropy *= 0.5 / np.linalg.norm(self.anisotropy)
        self.topic_centers = _unit(rng.standard_normal((n_topics, dim)))
        concepts = np.empty((n_topics, PER_TOPIC, dim), dtype=np.float16)
        for lo in range(0, n_topics, 1024):
            hi = min(lo + 1024, n_topics)
            noise = rng.standard_normal((hi - lo, PER_TOPIC, dim)) * (shape.concept_spread / np.sqrt(dim))
            concepts[lo:hi] = _unit(self.topic_centers[lo:hi, None, :] * 0.8 + noise + self.anisotropy)
        common = _unit(rng.standard_normal((N_COMMON, dim)) / np.sqrt(dim) + self.anisotropy)
        # concept id -> direction; common concepts come after the topics' ones
        self.vocab = np.concatenate([concepts.reshape(-1, dim), common.astype(np.float16)])
        self.topic_p = _zipf_probs(n_topics, 1.0)[rng.permutation(n_topics)]
        # inverse-CDF sampling (rng.choice(p=...) rebuilds the CDF on every call)
        self.concept_cdf = np.cumsum(_zipf_probs(PER_TOPIC, 1.0))
        self.common_cdf = np.cumsum(_zipf_probs(N_COMMON, 1.0))
        sd = shape.doclen_sigma
        mu = np.log(mean_doc_len) - 0.5 * sd**2
        self.doclens = np.clip(np.round(rng.lognormal(mu, sd, n_docs)), min_doc_len, max_doc_len).astype(np.int64)
        self.main = rng.choice(n_topics, n_docs, p=self.topic_p)
        self.second = rng.choice(n_topics, n_docs, p=self.topic_p)
        self.targets = rng.choice(n_docs, n_queries).astype(np.int64)
        self.sigma = shape.token_noise / np.sqrt(dim)
        # more side topics per document: [n_docs, side_topics], the first the one above
        self.sides = (
            self.second[:, None]
            if shape.side_topics == 1
            else np.column_stack([self.second, rng.choice(n_topics, (n_docs, shape.side_topics - 1), p=self.topic_p)])
        )

    @property
    def n_tokens(self) -> int:
        return int(self.doclens.sum())

    def document(self, d: int) -> np.ndarray:
        """Tokens of document ``d``, float32 ``[doclens[d], dim]`` (the same on every call)."""
        rng = np.random.default_rng((self.seed, 1, d))
        n, dim, shape = int(self.doclens[d]), self.dim, self.shape
        source = rng.random(n)
        main, sides = shape.coherence, self.sides[d]
        if len(sides) == 1:
            side = sides[0]
        else:  # the side band [main, 1 - common_share) split evenly between the side topics
            band = (source - main) / max(1e-9, 1.0 - shape.common_share - main)
            side = sides[np.clip((band * len(sides)).astype(np.int64), 0, len(sides) - 1)]
        topic = np.where(source < main, self.main[d], side)
        ids = topic * PER_TOPIC + _draw(rng, self.concept_cdf, n)
        is_common = source >= 1.0 - shape.common_share
        ids[is_common] = self.n_topics * PER_TOPIC + _draw(rng, self.common_cdf, int(is_common.sum()))
        base = self.vocab[ids].astype(np.float32)
        is_private = (source >= main - 0.15) & (source < main)
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
        copied = self.shape.query_from_doc
        concept = self.vocab[np.where(kind < copied + (1.0 - copied) * 0.625, topical, generic)].astype(np.float32)
        base = np.where((kind < copied)[:, None], doc[from_doc], concept)
        return _unit(base + (self.sigma * self.shape.query_noise) * rng.standard_normal((q_len, self.dim)))

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
    shape: CorpusShape | None = None,
) -> SyntheticCorpus:
    """Generate ``n_docs`` documents and ``n_queries`` queries in memory (deterministic for a ``seed``); ``shape``:
    the :class:`CorpusShape` (default: the original generator's)."""
    stream = SyntheticStream(n_docs, dim, n_queries, q_len, mean_doc_len, min_doc_len, max_doc_len, seed, shape)
    emb = np.empty((stream.n_tokens, dim), dtype=np.float32)
    offsets = np.concatenate([[0], np.cumsum(stream.doclens)])
    for d, doc in enumerate(stream):
        emb[offsets[d] : offsets[d + 1]] = doc
    return SyntheticCorpus(emb, stream.doclens, stream.queries(), stream.targets)
