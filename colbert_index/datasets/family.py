"""A family of synthetic corpora that differ in what a search meets, for tuning and checking the search defaults.

Each :class:`Variant` is a :class:`~colbert_index.datasets.synthetic.CorpusShape` with a dim, document lengths and
a query length. The variants marked ``held_out`` are kept apart from any tuning of the defaults: a change to the
defaults is chosen on the others and only checked on these (bench/defaults_grid.py, tests/test_defaults.py). A held-out
variant that a later change was tuned on loses the mark (docs/design-notes.md says which and when).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from colbert_index.datasets.synthetic import CorpusShape, SyntheticCorpus, SyntheticStream, make_corpus


@dataclass(frozen=True)
class Variant:
    """One corpus of the family: its generator settings (``n_docs`` and the seed are chosen per use)."""

    name: str
    what: str  # one line: what sets it apart
    dim: int = 64
    q_len: int = 32
    mean_doc_len: int = 100
    min_doc_len: int = 20
    max_doc_len: int = 300
    shape: CorpusShape = field(default_factory=CorpusShape)
    held_out: bool = False

    def stream(self, n_docs: int, n_queries: int = 100, seed: int = 0) -> SyntheticStream:
        """The corpus generated lazily (for streaming builds of large sizes)."""
        return SyntheticStream(
            n_docs, self.dim, n_queries, self.q_len, self.mean_doc_len, self.min_doc_len, self.max_doc_len, seed,
            self.shape,
        )  # fmt: skip

    def corpus(self, n_docs: int, n_queries: int = 100, seed: int = 0) -> SyntheticCorpus:
        """The corpus in memory."""
        return make_corpus(
            n_docs, self.dim, n_queries, self.q_len, self.mean_doc_len, self.min_doc_len, self.max_doc_len, seed,
            self.shape,
        )  # fmt: skip


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("base", "the original generator (the project's synthetic corpora)"),
        Variant(
            "tight128",
            "dim 128, ten times fewer topics, each tighter: many close documents per topic",
            dim=128,
            shape=CorpusShape(docs_per_topic=500, concept_spread=0.7),
        ),
        Variant(
            "short48",
            "dim 48, short documents (mean 40 tokens) and short queries (12 tokens)",
            dim=48,
            q_len=12,
            mean_doc_len=40,
            min_doc_len=8,
            max_doc_len=120,
        ),
        Variant(
            "loose",
            "topics spread wide, documents mixing five topics, noisier tokens",
            shape=CorpusShape(concept_spread=1.8, coherence=0.45, side_topics=4, token_noise=0.8),
        ),
        Variant(
            "noisyq128",
            "dim 128, queries twice as noisy and mostly not copied from their document (24 tokens)",
            dim=128,
            q_len=24,
            shape=CorpusShape(query_noise=2.0, query_from_doc=0.3),
        ),
        Variant(
            "stopwords",
            "a third of every document from the shared common concepts, less coherent documents",
            shape=CorpusShape(common_share=0.35, coherence=0.6),
        ),
        Variant(
            "longdocs128",
            "dim 128, long documents (mean 180 tokens, wide spread, up to 600)",
            dim=128,
            mean_doc_len=180,
            max_doc_len=600,
            shape=CorpusShape(doclen_sigma=0.9),
            held_out=True,
        ),
        Variant(
            "manytopics48",
            "dim 48, a topic per 8 documents spread wider, noisy 16-token queries",
            dim=48,
            q_len=16,
            shape=CorpusShape(docs_per_topic=8, concept_spread=1.3, query_noise=1.5),
        ),
        Variant(
            "mixed",
            "documents of three topics, lengths spread wide, 20-token queries mostly not copied, noisier tokens",
            q_len=20,
            shape=CorpusShape(coherence=0.5, side_topics=2, doclen_sigma=1.0, query_from_doc=0.4, token_noise=0.75),
        ),
        Variant(
            "crowded64",
            "a topic per 4 documents, 24-token queries half copied and noisier",
            q_len=24,
            shape=CorpusShape(docs_per_topic=4, query_noise=1.2, query_from_doc=0.5),
        ),
        Variant(
            "shortq128",
            "dim 128, 8-token queries, noisier document tokens",
            dim=128,
            q_len=8,
            shape=CorpusShape(query_from_doc=0.5, token_noise=0.7),
            held_out=True,
        ),
        Variant(
            "coherent48",
            "dim 48, single-topic documents of even length (mean 60), a topic per 20 documents, noisier queries",
            dim=48,
            mean_doc_len=60,
            shape=CorpusShape(docs_per_topic=20, coherence=0.93, common_share=0.02, doclen_sigma=0.3, query_noise=1.3),
            held_out=True,
        ),
        Variant(
            "crowded128",
            "dim 128, a topic per 6 documents, documents of three topics, 16-token queries mostly not copied",
            dim=128,
            q_len=16,
            shape=CorpusShape(docs_per_topic=6, coherence=0.7, side_topics=2, query_from_doc=0.3, query_noise=1.2),
            held_out=True,
        ),
        Variant(
            "longq48",
            "dim 48, 64-token queries, long documents (mean 150), topics spread wider, more common tokens",
            dim=48,
            q_len=64,
            mean_doc_len=150,
            max_doc_len=450,
            shape=CorpusShape(concept_spread=1.2, common_share=0.15, coherence=0.7),
            held_out=True,
        ),
        Variant(
            "tinydocs64",
            "very short documents (mean 24 tokens, from 4), a topic per 10 documents, queries mostly copied",
            mean_doc_len=24,
            min_doc_len=4,
            max_doc_len=64,
            shape=CorpusShape(docs_per_topic=10, query_from_doc=0.8, token_noise=0.7),
            held_out=True,
        ),
    )
}
