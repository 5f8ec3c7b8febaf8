"""A synthetic clustered corpus that behaves like ColBERT token embeddings.

Topics have Zipf popularity; each topic owns a set of correlated "concept" directions, and a pool of
common concepts (stop words, punctuation) is shared by all documents. A token is a concept plus
noise, L2-normalised. Documents take 20-300 tokens (log-normal); each query is derived from a
target document: some of its tokens re-noised, concepts of its topic, and common concepts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


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
    """Generate ``n_docs`` documents and ``n_queries`` queries (deterministic for a ``seed``)."""
    if n_docs < 1 or n_queries < 0 or dim < 2:
        raise ValueError("need n_docs >= 1, n_queries >= 0 and dim >= 2")
    rng = np.random.default_rng(seed)
    n_topics = max(8, n_docs // 50)
    per_topic, n_common, n_private = 128, 256, 4
    anisotropy = rng.standard_normal(dim)  # real token embeddings share a mean direction
    anisotropy *= 0.5 / np.linalg.norm(anisotropy)
    topic_centers = _unit(rng.standard_normal((n_topics, dim)))
    concepts = _unit(
        topic_centers[:, None, :] * 0.8 + rng.standard_normal((n_topics, per_topic, dim)) / np.sqrt(dim) + anisotropy
    ).reshape(n_topics * per_topic, dim)
    common = _unit(rng.standard_normal((n_common, dim)) / np.sqrt(dim) + anisotropy)
    vocab = np.concatenate([concepts, common])  # concept id -> direction; common ids come last
    topic_p = _zipf_probs(n_topics, 1.0)[rng.permutation(n_topics)]
    concept_p, common_p = _zipf_probs(per_topic, 1.0), _zipf_probs(n_common, 1.0)

    sigma = 0.6 / np.sqrt(dim)  # noise of norm ~0.6 around each concept
    mu = np.log(mean_doc_len) - 0.5 * 0.6**2
    doclens = np.clip(np.round(rng.lognormal(mu, 0.6, n_docs)), min_doc_len, max_doc_len).astype(np.int64)
    n_tokens = int(doclens.sum())
    doc_of = np.repeat(np.arange(n_docs), doclens)
    main = rng.choice(n_topics, n_docs, p=topic_p)
    second = rng.choice(n_topics, n_docs, p=topic_p)
    source = rng.random(n_tokens)
    topic = np.where(source < 0.8, main[doc_of], second[doc_of])
    ids = topic * per_topic + rng.choice(per_topic, n_tokens, p=concept_p)
    is_common = source >= 0.95
    ids[is_common] = n_topics * per_topic + rng.choice(n_common, int(is_common.sum()), p=common_p)
    # names, numbers, rare terms: a few concepts private to each document
    is_private = (source >= 0.65) & (source < 0.8)
    n_shared = len(vocab)
    ids[is_private] = n_shared + doc_of[is_private] * n_private + rng.integers(0, n_private, int(is_private.sum()))
    private = _unit(
        topic_centers[main][:, None, :] * 0.8
        + rng.standard_normal((n_docs, n_private, dim)) / np.sqrt(dim)
        + anisotropy
    ).reshape(n_docs * n_private, dim)
    vocab = np.concatenate([vocab, private])
    emb = np.empty((n_tokens, dim), dtype=np.float32)
    for lo in range(0, n_tokens, 1 << 18):
        hi = min(lo + (1 << 18), n_tokens)
        emb[lo:hi] = _unit(vocab[ids[lo:hi]] + sigma * rng.standard_normal((hi - lo, dim)))

    offsets = np.concatenate([[0], np.cumsum(doclens)])
    targets = rng.choice(n_docs, n_queries)
    queries = np.empty((n_queries, q_len, dim), dtype=np.float32)
    for qi, d in enumerate(targets):
        kind = rng.random(q_len)
        from_doc = offsets[d] + rng.integers(0, doclens[d], q_len)
        topical = main[d] * per_topic + rng.choice(per_topic, q_len, p=concept_p)
        generic = n_topics * per_topic + rng.choice(n_common, q_len, p=common_p)
        base = np.where((kind < 0.6)[:, None], emb[from_doc], vocab[np.where(kind < 0.85, topical, generic)])
        queries[qi] = _unit(base + sigma * rng.standard_normal((q_len, dim)))
    return SyntheticCorpus(emb, doclens, queries, targets.astype(np.int64))
