"""The ``colbert-index`` argument parser: one subcommand per command, each ``--help`` ending with examples."""

from __future__ import annotations

import argparse

from colbert_index.cli.commands import cmd_add, cmd_build, cmd_compact, cmd_delete, cmd_info, cmd_search, cmd_serve
from colbert_index.cli.demo import cmd_bench, cmd_demo
from colbert_index.cli.texts import cmd_index_texts

DESCRIPTION = (
    "``colbert-index`` command line: build | index-texts | add | delete | compact | search | serve | info | bench |\n"
    "demo. Each subcommand's ``--help`` ends with examples."
)


def _add_build_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--nbits", type=int, default=2, choices=(2, 4))
    p.add_argument("--n-centroids", type=int)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true")
    p.add_argument(
        "--build-device", default="cpu", help="where k-means and compression run: cpu (faiss + Numba) or cuda (torch)"
    )
    _add_pool_factor(p, 1, "keep about 1 vector per POOL_FACTOR tokens of each document (1: all; docs/pooling.md)")
    p.add_argument(
        "--keep-originals",
        action="store_true",
        help="also store every token's vector as float16 for the full-precision rerank (docs/search.md)",
    )


def _add_pool_factor(p: argparse.ArgumentParser, default: int | None, help: str) -> None:
    p.add_argument("--pool-factor", type=int, default=default, metavar="POOL_FACTOR", help=help)


def _add_embedding_inputs(p: argparse.ArgumentParser) -> None:
    p.add_argument("--embeddings", nargs="+", metavar="X.npy", help=".npy float [n_tokens, dim] (several: shards)")
    p.add_argument("--doclens", nargs="+", metavar="L.npy", help=".npy int [n_docs], tokens per document (per shard)")
    p.add_argument("--ids", help="text file with one document id per line (default: the next integers)")
    p.add_argument("--metadata", help="JSONL file: one JSON object (or null) of metadata per document")


def _add_text_options(p: argparse.ArgumentParser, required: bool = False) -> None:
    p.add_argument("--model", required=required, help="local checkpoint directory (PyLate or Stanford ColBERT format)")
    p.add_argument("--input", required=required, help="passages.jsonl or passages.tsv")
    p.add_argument("--format", choices=("auto", "jsonl", "tsv"), default="auto", help="default: from the suffix")
    p.add_argument("--id-key", default="id", help="JSONL key of the passage id (BEIR: _id)")
    p.add_argument("--text-key", default="text", help="JSONL key of the passage text")
    p.add_argument(
        "--metadata-keys", help="JSONL keys to store as metadata, comma-separated ('*': every key but id and text)"
    )
    p.add_argument("--batch-size", type=int, default=32, help="passages per forward pass")
    p.add_argument("--chunk-size", type=int, default=1024, help="passages read and encoded at a time")
    p.add_argument("--max-length", type=int, help="tokens per passage (default: the model's document_length)")
    p.add_argument("--windows", action="store_true", help="split long passages into overlapping windows")
    p.add_argument("--overlap", type=int, help="tokens shared by consecutive windows (default: a quarter)")
    p.add_argument("--device", default="cpu", help="device of the model")
    p.add_argument(
        "--no-store-texts",
        dest="store_texts",
        action="store_false",
        help="do not store the passages' texts (stored by default, for lexical and hybrid search: docs/hybrid.md)",
    )


def _add_search_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--nprobe", type=int)
    p.add_argument("--threshold", type=float, help="centroid_score_threshold")
    p.add_argument(
        "--ndocs",
        type=int,
        help="candidates stage 2 keeps, fixed (unset: the default, which the search raises per query where its "
        "scores call for it, up to 4x; docs/search.md)",
    )
    p.add_argument(
        "--nbound",
        type=int,
        help="stage 1 also bounds each candidate's centroid interaction and keeps the best NBOUND "
        "(robust to documents unlike the training data; SearchParams.nbound)",
    )
    p.add_argument("--bound-cells", type=int, default=16, help="centroids per query token the bound reads")
    p.add_argument(
        "--agree-cells",
        type=int,
        help="stage 1 also takes documents that the best AGREE_CELLS centroids of two query tokens list (0: off; "
        "unset: on beyond 62,500 documents for k <= 10; SearchParams.agree_cells)",
    )
    p.add_argument(
        "--rerank",
        type=int,
        help="candidates of the full-precision rerank, on an index built with --keep-originals (0: off; "
        "SearchParams.rerank)",
    )
    p.add_argument(
        "--filter",
        help='JSON: a list of allowed ids, or metadata conditions such as \'{"lang": "en", "year": {"$gte": 2020}}\' '
        "(@FILE reads it from a file)",
    )


def _sub(sub, name: str, help: str, examples: str, **kwargs) -> argparse.ArgumentParser:
    """A subcommand whose --help ends with ``examples``."""
    return sub.add_parser(
        name, help=help, epilog="examples:\n" + examples, formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="colbert-index", description=DESCRIPTION)
    sub = p.add_subparsers(dest="command", required=True)

    b = _sub(
        sub,
        "build",
        "build an index from .npy token embeddings (one flat array or shards), or from JSONL texts with a model",
        "  colbert-index build my-index --embeddings X.npy --doclens L.npy --ids ids.txt --metadata meta.jsonl\n"
        "  colbert-index build my-index --embeddings a.npy b.npy --doclens la.npy lb.npy --nbits 4\n"
        "  colbert-index build my-index --input passages.jsonl --model models/colbert --metadata-keys lang,year\n",
        description="From embeddings: --embeddings holds [n_tokens, dim] float rows, --doclens the tokens of each "
        "document in order (several files: shards, read memory-mapped). From texts: --input with --model encodes "
        "the passages (as index-texts does).",
    )
    b.add_argument("index", help="output index directory")
    _add_embedding_inputs(b)
    _add_text_options(b)
    _add_build_options(b)
    b.set_defaults(func=cmd_build)

    t = _sub(
        sub,
        "index-texts",
        "encode passages from a .jsonl / .tsv file with a local ColBERT checkpoint and build an index",
        "  colbert-index index-texts --model models/colbert --input passages.jsonl --index my-index\n"
        "  colbert-index index-texts --model DIR --input corpus.jsonl --id-key _id --index beir --metadata-keys '*'\n"
        "  colbert-index index-texts --model DIR --input collection.tsv --index msmarco --windows\n",
        description="Streams the file: passages are encoded chunk by chunk and spilled to the build, so memory "
        "does not grow with their number (apart from their ids). JSONL: one object per line with an id and a "
        "text (keys --id-key / --text-key); TSV: id<TAB>text per line. Ids are kept as strings.",
    )
    t.add_argument("--index", required=True, help="output index directory")
    _add_text_options(t, required=True)
    _add_build_options(t)
    t.set_defaults(func=cmd_index_texts)

    a = _sub(
        sub,
        "add",
        "add (or --upsert) documents to an index: a new segment, committed atomically",
        "  colbert-index add my-index --embeddings new.npy --doclens new_lens.npy --metadata new_meta.jsonl\n"
        "  colbert-index add my-index --upsert --embeddings X.npy --doclens L.npy --ids changed_ids.txt\n"
        "  colbert-index add my-index --input more.jsonl --model models/colbert --metadata-keys lang\n",
    )
    a.add_argument("index", help="index directory")
    a.add_argument("--upsert", action="store_true", help="replace the live documents with the same ids")
    _add_pool_factor(a, None, "token pooling of the new documents (default: the index's, set at build)")
    _add_embedding_inputs(a)
    _add_text_options(a)
    a.set_defaults(func=cmd_add)

    x = _sub(
        sub,
        "delete",
        "delete documents by id (tombstones; compact reclaims the space)",
        "  colbert-index delete my-index doc-17 doc-42\n"
        "  colbert-index delete my-index --ids-file stale.txt --missing-ok\n"
        '  colbert-index delete my-index --filter \'{"year": {"$lt": 2000}}\'\n',
    )
    x.add_argument("index", help="index directory")
    x.add_argument("ids", nargs="*", help="ids to delete")
    x.add_argument("--ids-file", help="text file with one id per line")
    x.add_argument("--missing-ok", action="store_true", help="ignore ids that are not in the index")
    x.add_argument(
        "--filter", help="JSON metadata conditions: delete the live documents they select (@FILE reads a file)"
    )
    x.set_defaults(func=cmd_delete)

    c = _sub(
        sub,
        "compact",
        "merge segments and drop deleted documents (--retrain: also retrain the codebook)",
        "  colbert-index compact my-index\n  colbert-index compact my-index --retrain\n",
    )
    c.add_argument("index", help="index directory")
    c.add_argument("--retrain", action="store_true", help="re-run k-means and the bucket tables on the live docs")
    c.add_argument("--n-centroids", type=int, help="K of a retrained codebook (default: the build rule)")
    c.add_argument("--seed", type=int, default=0)
    c.set_defaults(func=cmd_compact)

    s = _sub(
        sub,
        "search",
        "search an index with query embeddings (.npy), query texts and a model, or words (BM25), or both fused",
        "  colbert-index search my-index --queries Q.npy -k 10\n"
        "  colbert-index search my-index --queries Q.npy --explain\n"
        '  colbert-index search my-index --queries Q.npy --filter \'{"lang": "en", "year": {"$gte": 2020}}\'\n'
        '  colbert-index search --model models/colbert --index my-index "what does PLAID do?"\n'
        '  colbert-index search my-index --text "centroid pruning" -k 5\n'
        '  colbert-index search my-index --queries Q.npy --text "centroid pruning" --fusion relative --alpha 0.7\n'
        '  colbert-index search --model models/colbert --index my-index --hybrid "what does PLAID do?"\n',
        usage="colbert-index search INDEX --queries Q.npy [--text WORDS] [options]\n"
        '       colbert-index search --model DIR --index INDEX "query text" ... [--hybrid | --text WORDS] [options]\n'
        "       colbert-index search INDEX --text WORDS [options]",
        description="Embeddings: --queries holds [q_len, dim] or [n_q, q_len, dim]; prints one line per query "
        "of id:score. Texts: each query is encoded with --model; prints '# query' then rank<TAB>id<TAB>score. "
        "--text searches the stored texts by BM25 (one --text per query): alone, a lexical search; with "
        "embeddings or a model, fused with MaxSim (docs/hybrid.md). --hybrid uses each query text for both.",
    )
    s.add_argument("args", nargs="*", metavar="INDEX | QUERY", help="the index (unless --index), then query texts")
    s.add_argument("--index", help="index directory")
    s.add_argument("--queries", help=".npy query embeddings")
    s.add_argument("--model", help="local checkpoint directory: the arguments are query texts")
    s.add_argument("--device", default="cpu", help="device of the model")
    _add_search_options(s)
    s.add_argument("--exact", action="store_true", help="brute-force exact MaxSim instead")
    s.add_argument(
        "--explain",
        action="store_true",
        help="also print, per query, the parameters used and each stage's candidates and milliseconds (JSON lines "
        "starting with '# explain')",
    )
    s.add_argument("--text", action="append", metavar="WORDS", help="words searched by BM25 (once per query)")
    s.add_argument("--hybrid", action="store_true", help="with --model: each query text also searched by BM25")
    s.add_argument("--text-mode", choices=("any", "all", "fts5"), default="any", help="any / all words, or FTS5 syntax")
    s.add_argument("--fusion", choices=("rrf", "relative"), default="rrf", help="how the two lists are fused")
    s.add_argument("--alpha", type=float, default=0.5, help="weight of the MaxSim list in the fusion (0..1)")
    s.add_argument("--fusion-depth", type=int, help="candidates of each list fused (default: max(k, 100))")
    s.set_defaults(func=cmd_search)

    v = _sub(
        sub,
        "serve",
        "serve an index over HTTP (FastAPI + uvicorn; needs the server extra)",
        "  colbert-index serve my-index --port 8000\n"
        "  COLBERT_INDEX_API_KEY=secret colbert-index serve my-index --model models/colbert --host 0.0.0.0\n"
        "  curl -s localhost:8000/search -H 'Authorization: Bearer secret' -H 'Content-Type: application/json' \\\n"
        '       -d \'{"text": "what does PLAID do?", "k": 5, "filter": {"lang": "en"}}\'\n',
        description="Endpoints: GET /health, GET /stats, POST /search, POST /search/batch, POST /documents, "
        "POST /documents/upsert, POST /documents/delete, POST /compact (colbert_index.server; docs/server.md).",
    )
    v.add_argument("index", help="index directory")
    v.add_argument("--model", help="local checkpoint directory: enables text queries and text documents")
    v.add_argument("--device", default="cpu", help="device of the model")
    v.add_argument("--host", default="127.0.0.1")
    v.add_argument("--port", type=int, default=8000)
    v.add_argument(
        "--api-key", help="require Authorization: Bearer KEY (default: $COLBERT_INDEX_API_KEY; unset: no key)"
    )
    v.add_argument("--workers", type=int, help="search threads (default: one per core)")
    v.add_argument("--refresh-s", type=float, default=1.0, help="how often to look for other writers' commits")
    v.add_argument("--max-body-mb", type=float, default=64.0, help="larger request bodies get 413")
    v.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))
    v.set_defaults(func=cmd_serve)

    i = _sub(
        sub,
        "info",
        "show an index's manifest, sizes and segments, and validate it (exit status 1 when invalid)",
        "  colbert-index info my-index\n  colbert-index info my-index --no-verify --json\n",
    )
    i.add_argument("index", help="index directory")
    i.add_argument(
        "--no-verify",
        dest="verify",
        action="store_false",
        help="skip the full check (checksums of every file, ids live once); sizes and shapes are still checked",
    )
    i.add_argument("--json", action="store_true", help="print JSON")
    i.set_defaults(func=cmd_info)

    m = _sub(
        sub,
        "bench",
        "measure search latency (p50/p95/p99), batch throughput and recall vs exact on an index or a synthetic one",
        "  colbert-index bench my-index --queries Q.npy -k 10 --threads 1\n"
        "  colbert-index bench --synthetic 10000 --dim 64 --ndocs 1024\n"
        '  colbert-index bench my-index --queries Q.npy --filter \'{"lang": "en"}\' --json\n',
    )
    m.add_argument("index", nargs="?", help="index directory (default: build a synthetic one)")
    m.add_argument("--queries", help=".npy [n_q, q_len, dim] query embeddings")
    m.add_argument("--synthetic", type=int, default=3000, help="documents of the synthetic corpus (no INDEX)")
    m.add_argument("--dim", type=int, default=64, help="dim of the synthetic corpus")
    m.add_argument("--nbits", type=int, default=2, choices=(2, 4), help="nbits of the synthetic index")
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--n-queries", type=int, default=100, help="queries to time")
    m.add_argument("--exact-queries", type=int, default=20, help="queries checked against search_exact")
    m.add_argument("--threads", type=int, help="Numba threads (default: all)")
    m.add_argument("--json", action="store_true", help="print JSON")
    _add_search_options(m)
    m.set_defaults(func=cmd_bench)

    d = _sub(
        sub,
        "demo",
        "build and search a built-in synthetic corpus, report recall and speed; with --model, index and "
        "search a built-in text collection",
        "  colbert-index demo\n  colbert-index demo --n-docs 10000 --nbits 4\n  colbert-index demo --model DIR\n",
    )
    d.add_argument("--model", help="local checkpoint directory: run the text demo with it")
    d.add_argument("--device", default="cpu", help="device of the model (text demo)")
    d.add_argument("--n-docs", type=int, default=3000)
    d.add_argument("--dim", type=int, default=64)
    d.add_argument("--nbits", type=int, default=2, choices=(2, 4))
    d.add_argument("--n-queries", type=int, default=50)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--index", help="keep the demo index at this path")
    d.set_defaults(func=cmd_demo)
    return p
