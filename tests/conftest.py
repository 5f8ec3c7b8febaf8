"""Shared fixtures: small seeded corpora and indexes built once per session."""

from __future__ import annotations

import os
from pathlib import Path

import colbert_index.kernels
import numpy as np
import pytest

from colbert_index import Index
from colbert_index.datasets.synthetic import make_corpus


def _drop_stale_kernel_cache() -> None:
    """Delete Numba's cached kernels older than the newest kernel source, before any kernel compiles.

    Numba invalidates a cached function only when its own file changes, not when a helper it inlines or calls
    from another file does (an edit to numba_rows.py left numba_scoring.py's kernels on the old code), so the
    tests could otherwise pass on code that no longer exists. A fresh clone has no cache: nothing to do.
    """
    src = Path(colbert_index.kernels.__file__).parent
    newest = max(p.stat().st_mtime for p in src.glob("*.py"))
    for f in (src / "__pycache__").glob("*.nb[ic]"):
        if f.stat().st_mtime < newest:
            f.unlink(missing_ok=True)


_drop_stale_kernel_cache()

# Ray starts its worker processes at niceness 15, so beside any other CPU-bound process (another job on a shared
# machine) its actors get a few percent of a core and the distributed tests crawl. Before any Ray node starts.
os.environ.setdefault("RAY_worker_niceness", "0")


@pytest.fixture(scope="session")
def corpus_2k():
    """2,000 clustered docs of dim 64 (~200k tokens) and 40 queries."""
    return make_corpus(2000, dim=64, n_queries=40, seed=7)


@pytest.fixture(scope="session")
def index_2k_2bit(corpus_2k, tmp_path_factory):
    return Index.build(tmp_path_factory.mktemp("idx") / "i2", corpus_2k.documents(), nbits=2, progress=False)


@pytest.fixture(scope="session")
def index_2k_4bit(corpus_2k, tmp_path_factory):
    return Index.build(tmp_path_factory.mktemp("idx") / "i4", corpus_2k.documents(), nbits=4, progress=False)


@pytest.fixture
def tiny_docs():
    """20 ragged unit-norm docs of dim 48 (lengths 1..40)."""
    rng = np.random.default_rng(3)
    docs = []
    for n in rng.integers(1, 41, size=20):
        d = rng.standard_normal((int(n), 48)).astype(np.float32)
        docs.append(d / np.linalg.norm(d, axis=1, keepdims=True))
    return docs


@pytest.fixture
def tiny_index(tiny_docs, tmp_path):
    return Index.build(tmp_path / "tiny", tiny_docs, progress=False)
