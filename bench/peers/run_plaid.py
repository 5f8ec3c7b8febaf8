"""Stanford PLAID (``colbert-ai``) on a bench/peers corpus: runs in ``bench/peers/.venvs/plaid``.

colbert-ai's ``Indexer`` encodes texts with a checkpoint; here its ``CollectionIndexer`` is driven as it is
(plan, sample, faiss k-means, ``ResidualCodec`` training, compression into chunks, IVF) with the encoder
swapped for one that returns the precomputed embeddings: each "passage" is the position of a document,
and ``encode_passages`` returns that document's float32 token embeddings. No checkpoint is loaded.

Search goes through ``Searcher.dense_search`` (PLAID's defaults for k <= 10: ncells 1, threshold 0.5,
ndocs 256) and ``IndexScorer`` on the CPU, with the query embeddings handed in as the ``Q`` tensor; the
Searcher is assembled around an ``IndexScorer`` instead of loading a checkpoint.

Usage (see common.py): ``python run_plaid.py build|search --data D --index I --out R.json``.
"""

from __future__ import annotations

import os
import random
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch
from colbert.data.collection import Collection
from colbert.indexing.collection_indexer import CollectionIndexer
from colbert.indexing.index_saver import IndexSaver
from colbert.infra.config import ColBERTConfig, RunConfig
from colbert.infra.run import Run
from colbert.modeling.colbert import ColBERT, colbert_score_packed
from colbert.search.index_storage import IndexScorer
from colbert.searcher import Searcher
from common import Corpus, runner_main

SEED = 12345


class PrecomputedEncoder:
    """Stands in for ``CollectionEncoder``: passages are document positions, embeddings come from the corpus."""

    def __init__(self, corpus: Corpus) -> None:
        self.emb, self.offsets = corpus.embeddings, corpus.offsets

    def encode_passages(self, passages: list[str]) -> tuple[torch.Tensor | None, list[int] | None]:
        """``(float32 [sum of lengths, dim] tensor, lengths)`` of the documents named by ``passages``."""
        if len(passages) == 0:
            return None, None
        pids = [int(p) for p in passages]
        o = self.offsets
        parts = [np.asarray(self.emb[o[p] : o[p + 1]], dtype=np.float32) for p in pids]
        return torch.from_numpy(np.concatenate(parts)), [int(o[p + 1] - o[p]) for p in pids]


class EmbeddingIndexer(CollectionIndexer):
    """``CollectionIndexer`` without a checkpoint: everything else is colbert-ai's code."""

    def __init__(self, config: ColBERTConfig, corpus: Corpus, verbose: int = 1) -> None:
        self.verbose = verbose
        self.config = config
        self.rank, self.nranks = config.rank, config.nranks
        self.use_gpu = False
        self.collection = Collection.cast([str(i) for i in range(len(corpus.doclens))])
        self.checkpoint = None
        self.encoder = PrecomputedEncoder(corpus)
        self.saver = IndexSaver(config)


def plaid_config(corpus: Corpus, index_dir: Path, nbits: int) -> ColBERTConfig:
    """The config an ``Indexer`` would use, on the CPU, for this corpus."""
    q_len, dim = corpus.queries.shape[1], corpus.embeddings.shape[1]
    return ColBERTConfig(
        nbits=nbits,
        dim=dim,
        doc_maxlen=int(corpus.doclens.max()),
        query_maxlen=int(q_len),
        index_path=str(index_dir),
        rank=0,
        nranks=1,
        gpus=0,
        avoid_fork_if_possible=True,
    )


def build(corpus: Corpus, index_dir: Path, nbits: int) -> dict:
    """Build a PLAID index of the corpus into ``index_dir`` (all threads)."""
    random.seed(SEED)
    np.random.seed(SEED)
    torch.manual_seed(SEED)
    index_dir.mkdir(parents=True, exist_ok=True)
    config = plaid_config(corpus, index_dir, nbits)
    with Run().context(RunConfig(nranks=1, rank=0, gpus=0, root=str(index_dir.parent), experiment="peers")):
        indexer = EmbeddingIndexer(config, corpus)
        indexer.run(shared_lists=[[None]])
    return {"K": int(indexer.num_partitions), "torch_threads": torch.get_num_threads()}


def _searcher(corpus: Corpus, index_dir: Path, k: int, threads: int, params: dict | None = None) -> Searcher:
    """A ``Searcher`` around an ``IndexScorer`` (no checkpoint), its config settled for ``k`` by a first search."""
    torch.set_num_threads(threads)
    config = ColBERTConfig.load_from_index(str(index_dir))
    config.configure(query_maxlen=int(corpus.queries.shape[1]), gpus=0, load_index_with_mmap=False)
    config.configure(**(params or {}))  # ncells / centroid_score_threshold / ndocs; the rest from dense_search
    searcher = Searcher.__new__(Searcher)  # no checkpoint: queries arrive as embeddings
    searcher.verbose = 0
    searcher.config = config
    searcher.ranker = IndexScorer(str(index_dir), use_gpu=False, load_index_with_mmap=False)
    ColBERT.try_load_torch_extensions(use_gpu=False)  # segmented_maxsim_cpp, loaded by a checkpoint otherwise
    searcher.dense_search(_tensor(corpus.queries[0]), k=k)  # sets ncells / threshold / ndocs as a first search does
    return searcher


def _tensor(q: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(q))[None]


def open_search(corpus: Corpus, index_dir: Path, k: int, threads: int, params: dict | None = None):
    """Searcher (PLAID defaults for ``k`` unless ``params``) over the index; one-query function on ``threads``."""
    searcher = _searcher(corpus, index_dir, k, threads, params)

    def search_one(q: np.ndarray) -> list[int]:
        pids, _, _ = searcher.dense_search(_tensor(q), k=k)
        return pids

    params = {name: getattr(searcher.config, name) for name in ("ncells", "centroid_score_threshold", "ndocs")}
    return search_one, {"params": params, "torch_threads": torch.get_num_threads()}


def profile(corpus: Corpus, index_dir: Path, k: int, threads: int):
    """``IndexScorer.rank`` on the CPU for one query (Q.size(0) == 1), step by step, CPU time per stage."""
    searcher = _searcher(corpus, index_dir, k, threads)
    ranker, config, codec = searcher.ranker, searcher.config, searcher.ranker.codec

    def one(q: np.ndarray) -> tuple[dict, list]:
        Q = _tensor(q)
        with torch.inference_mode():
            t0 = time.process_time()
            Qc = Q[:, : config.query_maxlen].squeeze(0)
            scores = codec.centroids @ Qc.T
            t1 = time.process_time()
            if config.ncells == 1:
                cells = scores.argmax(dim=0, keepdim=True).permute(1, 0)
            else:
                cells = scores.topk(config.ncells, dim=0, sorted=False).indices.permute(1, 0)
            cells = cells.flatten().contiguous().unique(sorted=False)
            pids, _ = ranker.ivf.lookup(cells)
            pids = torch.unique_consecutive(pids.sort().values)
            t2 = time.process_time()
            idx = scores.max(-1).values >= config.centroid_score_threshold
            pids = IndexScorer.filter_pids(
                pids, scores, ranker.embeddings.codes, ranker.doclens, ranker.offsets, idx, config.ndocs
            )
            t3 = time.process_time()
            D_packed = IndexScorer.decompress_residuals(
                pids,
                ranker.doclens,
                ranker.offsets,
                codec.bucket_weights,
                codec.reversed_bit_map,
                codec.decompression_lookup_table,
                ranker.embeddings.residuals,
                ranker.embeddings.codes,
                codec.centroids,
                codec.dim,
                codec.nbits,
            )
            D_packed = torch.nn.functional.normalize(D_packed.to(torch.float32), p=2, dim=-1)
            D_mask = ranker.doclens[pids.long()]
            t4 = time.process_time()
            s = colbert_score_packed(Q, D_packed, D_mask, config)
            order = s.sort(descending=True).indices
            top = pids[order].tolist()[:k]
            t5 = time.process_time()
        ms = [(b - a) * 1e3 for a, b in zip((t0, t1, t2, t3, t4), (t1, t2, t3, t4, t5))]
        names = ("0 centroid scores", "1 probe IVF", "2+3 filter_pids", "4a decompress", "4b maxsim + sort")
        return dict(zip(names, ms)), top

    return one


def versions() -> dict:
    """Versions of the pieces that matter."""
    import faiss

    return {"colbert-ai": version("colbert-ai"), "torch": torch.__version__, "faiss": faiss.__version__}


if __name__ == "__main__":
    os.environ.setdefault("COLBERT_LOAD_TORCH_EXTENSION_VERBOSE", "False")
    runner_main("plaid", build, open_search, versions, profile)
