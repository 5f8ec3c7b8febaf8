"""``colbert-index`` command line: build | index-texts | search | demo."""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np


def cmd_build(args: argparse.Namespace) -> int:
    from colbert_index import Index

    emb = np.load(args.embeddings, mmap_mode="r")
    lengths = np.load(args.doclens)
    ids = [line.rstrip("\n") for line in open(args.ids, encoding="utf-8")] if args.ids else None
    t0 = time.perf_counter()
    idx = Index.build(
        args.index,
        emb,
        doc_ids=ids,
        nbits=args.nbits,
        n_centroids=args.n_centroids,
        doc_lengths=lengths,
        overwrite=args.overwrite,
        seed=args.seed,
    )
    print(f"built {idx} in {time.perf_counter() - t0:.1f}s, {idx.disk_bytes() / idx.n_tokens:.2f} bytes/token")
    return 0


def iter_passages(path, fmt: str = "auto", id_key: str = "id", text_key: str = "text") -> Iterator[tuple[str, str]]:
    """Stream ``(id, text)`` pairs from a JSONL file (one object per line with ``id_key`` and ``text_key``) or a
    TSV file (``id<TAB>text`` per line, as MS MARCO's collection.tsv). Blank lines are skipped; ids are read as
    strings; an empty text, a missing field or a repeated id raises ValueError naming the line."""
    path = Path(path)
    if fmt == "auto":
        fmt = {".jsonl": "jsonl", ".json": "jsonl", ".tsv": "tsv"}.get(path.suffix.lower())
        if fmt is None:
            raise ValueError(f"{path}: cannot tell the format from the suffix; pass --format jsonl or tsv")
    seen: set[str] = set()
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            if fmt == "jsonl":
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{where}: not a JSON object ({e})") from None
                if not isinstance(obj, dict) or id_key not in obj or text_key not in obj:
                    raise ValueError(f"{where}: each line needs the keys {id_key!r} and {text_key!r}")
                pid, text = obj[id_key], obj[text_key]
            else:
                pid, tab, text = line.rstrip("\r\n").partition("\t")
                if not tab:
                    raise ValueError(f"{where}: expected id<TAB>text")
            pid = str(pid)
            if not isinstance(text, str) or not text.strip():
                raise ValueError(f"{where}: the text of passage {pid!r} is empty or not a string")
            if pid in seen:
                raise ValueError(f"{where}: passage id {pid!r} appears twice")
            seen.add(pid)
            yield pid, text


def cmd_index_texts(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from colbert_index import Encoder, Index
    from colbert_index.encoder import merge_windows

    enc = Encoder.from_pretrained(args.model, device=args.device)
    print(f"loaded {enc}")
    ids: list[str] = []
    bar = tqdm(desc="encode", unit="passage", disable=not sys.stderr.isatty())

    def batches():
        """One list of [n_i, dim] arrays per chunk of passages: only the current chunk is held in memory."""
        passages = iter_passages(args.input, args.format, args.id_key, args.text_key)
        while chunk := list(itertools.islice(passages, args.chunk_size)):
            chunk_ids, texts = zip(*chunk)
            out = enc.encode_documents(
                list(texts),
                args.batch_size,
                args.max_length,
                windows=args.windows,
                overlap=args.overlap,
                dtype=np.float16,
                progress=False,
            )
            ids.extend(chunk_ids)
            bar.update(len(texts))
            yield merge_windows(*out) if args.windows else out

    t0 = time.perf_counter()
    # Index.build consumes every batch before it reads doc_ids, so the list is complete by then.
    idx = Index.build(
        args.index,
        batches(),
        doc_ids=ids,
        nbits=args.nbits,
        n_centroids=args.n_centroids,
        overwrite=args.overwrite,
        seed=args.seed,
        progress=False,
    )
    bar.close()
    s = time.perf_counter() - t0
    print(f"indexed {idx.n_docs} passages ({idx.n_tokens} tokens) in {s:.1f}s ({idx.n_docs / s:.1f} passages/s): {idx}")
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from colbert_index import Index, SearchParams

    positional = list(args.args)
    index = args.index or (positional.pop(0) if positional else None)
    if index is None:
        raise ValueError("search needs an index: colbert-index search --index PATH ... (or the path first)")
    if args.model is None and (args.queries is None or positional):
        raise ValueError("search takes --queries Q.npy (embeddings), or --model DIR and query texts")
    if args.model is not None and (args.queries is not None or not positional):
        raise ValueError('text search takes query texts after the options: --model DIR --index PATH "query"')
    idx = Index.open(index)
    lengths = None
    if args.model is None:
        Q = np.load(args.queries)
    else:
        from colbert_index import Encoder

        enc = Encoder.from_pretrained(args.model, device=args.device)
        if enc.dim != idx.dim:
            raise ValueError(f"the model gives {enc.dim}-dim vectors, the index {idx.dim}: use the model that built it")
        Q, lengths = enc.encode_queries(positional, progress=False)
    if args.exact:
        res = idx.search_exact(Q, k=args.k, query_lengths=lengths)
    else:
        res = idx.search(
            Q, k=args.k, params=SearchParams(args.nprobe, args.threshold, args.ndocs), query_lengths=lengths
        )
    for qi in range(len(res)):
        if args.model is None:
            print("\t".join(f"{i}:{s:.4f}" for i, s in zip(res.ids[qi], res.scores[qi])))
            continue
        print(f"# {positional[qi]}")
        for rank, (i, s) in enumerate(zip(res.ids[qi], res.scores[qi]), start=1):
            print(f"{rank}\t{i}\t{s:.4f}")
    return 0


def cmd_demo_texts(args: argparse.Namespace) -> int:
    """Index the built-in passages (colbert_index.demo_texts) with a real model and run its queries."""
    from colbert_index import Encoder, Index
    from colbert_index.demo_texts import PASSAGES, QUERIES

    t0 = time.perf_counter()
    enc = Encoder.from_pretrained(args.model, device=args.device)
    print(f"loaded {enc} in {time.perf_counter() - t0:.1f}s")
    ids, texts = list(PASSAGES), list(PASSAGES.values())
    t0 = time.perf_counter()
    docs = enc.encode_documents(texts, progress=False)
    print(f"encoded {len(docs)} passages ({sum(map(len, docs))} tokens) in {time.perf_counter() - t0:.1f}s")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(args.index or Path(tmp) / "demo-index")
        idx = Index.build(path, docs, doc_ids=ids, nbits=args.nbits, overwrite=True, seed=args.seed, progress=False)
        print(f"built {idx}: {idx.disk_bytes() / idx.n_tokens:.2f} bytes/token")
        Q, lengths = enc.encode_queries([q for q, _ in QUERIES], progress=False)
        res = idx.search(Q, k=3, query_lengths=lengths)
        hits = 0
        for qi, (query, answer) in enumerate(QUERIES):
            hits += res.ids[qi][0] == answer
            print(f"\n{query!r}  (answered by {answer!r})")
            for rank, (i, s) in enumerate(zip(res.ids[qi], res.scores[qi]), start=1):
                print(f"  {rank}. {i:20s} {s:6.2f}  {PASSAGES[i][:70]}...")
        print(f"\nthe answering passage ranks first for {hits} of {len(QUERIES)} queries")
        if args.index:
            print(f"index kept at {path}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    if args.model:
        return cmd_demo_texts(args)
    from colbert_index import Index
    from colbert_index.backend import get_backend
    from colbert_index.metrics import found_at, recall_at
    from colbert_index.search import brute_force
    from colbert_index.synthetic import make_corpus

    print(f"generating a synthetic clustered corpus: {args.n_docs} docs, dim {args.dim} ...")
    corpus = make_corpus(args.n_docs, dim=args.dim, n_queries=args.n_queries, seed=args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(args.index or Path(tmp) / "demo-index")
        t0 = time.perf_counter()
        idx = Index.build(path, corpus.documents(), nbits=args.nbits, overwrite=True, seed=args.seed)
        build_s = time.perf_counter() - t0
        print(f"built {idx} in {build_s:.1f}s: {idx.disk_bytes() / idx.n_tokens:.2f} bytes/token on disk")
        idx.search(corpus.queries[:2], k=10)  # compile / warm up
        t0 = time.perf_counter()
        res = idx.search(corpus.queries, k=10)
        ms = (time.perf_counter() - t0) * 1000 / len(corpus.queries)
        t0 = time.perf_counter()
        exact = idx.search_exact(corpus.queries, k=10)
        exact_ms = (time.perf_counter() - t0) * 1000 / len(corpus.queries)
        seg = get_backend().segment_max_sum
        raw = brute_force(list(corpus.queries), corpus.offsets, lambda lo, hi: corpus.embeddings[lo:hi], 10, seg)
        raw_ids = np.stack([slots for _, slots in raw])
        for qi in range(min(3, len(res))):
            top = ", ".join(f"{i} ({s:.2f})" for i, s in zip(res.ids[qi, :5], res.scores[qi, :5]))
            print(f"query {qi} (made from doc {corpus.targets[qi]}): {top}")
        import numba

        print(
            f"search: {ms:.2f} ms/query; exact brute force: {exact_ms:.1f} ms/query ({exact_ms / ms:.0f}x slower); "
            f"{numba.get_num_threads()} Numba threads"
        )
        print(f"recall@10 vs the index's exact search: {recall_at(res.ids, exact.ids, 10):.3f}")
        print(f"recall@10 vs exact MaxSim on the raw float embeddings: {recall_at(res.ids, raw_ids, 10):.3f}")
        print(f"query's source doc in top-10: {found_at(res.ids, corpus.targets):.3f}")
        if args.index:
            print(f"index kept at {path}")
    return 0


def _add_build_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--nbits", type=int, default=2, choices=(2, 4))
    p.add_argument("--n-centroids", type=int)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="colbert-index", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    b = sub.add_parser("build", help="build an index from a flat .npy of token embeddings")
    b.add_argument("index", help="output index directory")
    b.add_argument("--embeddings", required=True, help=".npy float [n_tokens, dim]")
    b.add_argument("--doclens", required=True, help=".npy int [n_docs], tokens per document")
    b.add_argument("--ids", help="text file with one document id per line (default 0..n-1)")
    _add_build_options(b)
    b.set_defaults(func=cmd_build)

    t = sub.add_parser(
        "index-texts",
        help="encode passages from a .jsonl / .tsv file with a local ColBERT checkpoint and build an index",
        description="Streams the file: passages are encoded chunk by chunk and spilled to the build, so memory "
        "does not grow with their number (apart from their ids). JSONL: one object per line with an id and a "
        "text (keys --id-key / --text-key); TSV: id<TAB>text per line. Ids are kept as strings.",
    )
    t.add_argument("--model", required=True, help="local checkpoint directory (PyLate or Stanford ColBERT format)")
    t.add_argument("--input", required=True, help="passages.jsonl or passages.tsv")
    t.add_argument("--index", required=True, help="output index directory")
    t.add_argument("--format", choices=("auto", "jsonl", "tsv"), default="auto", help="default: from the suffix")
    t.add_argument("--id-key", default="id", help="JSONL key of the passage id (BEIR: _id)")
    t.add_argument("--text-key", default="text", help="JSONL key of the passage text")
    t.add_argument("--batch-size", type=int, default=32, help="passages per forward pass")
    t.add_argument("--chunk-size", type=int, default=1024, help="passages read and encoded at a time")
    t.add_argument("--max-length", type=int, help="tokens per passage (default: the model's document_length)")
    t.add_argument("--windows", action="store_true", help="split long passages into overlapping windows")
    t.add_argument("--overlap", type=int, help="tokens shared by consecutive windows (default: a quarter)")
    t.add_argument("--device", default="cpu")
    _add_build_options(t)
    t.set_defaults(func=cmd_index_texts)

    s = sub.add_parser(
        "search",
        help="search an index with query embeddings (.npy) or with query texts and a model",
        usage="colbert-index search INDEX --queries Q.npy [options]\n"
        '       colbert-index search --model DIR --index INDEX "query text" ... [options]',
        description="Embeddings: --queries holds [q_len, dim] or [n_q, q_len, dim]; prints one line per query "
        "of id:score. Texts: each query is encoded with --model; prints '# query' then rank<TAB>id<TAB>score.",
    )
    s.add_argument("args", nargs="*", metavar="INDEX | QUERY", help="the index (unless --index), then query texts")
    s.add_argument("--index", help="index directory")
    s.add_argument("--queries", help=".npy query embeddings")
    s.add_argument("--model", help="local checkpoint directory: the arguments are query texts")
    s.add_argument("--device", default="cpu", help="device of the model")
    s.add_argument("-k", type=int, default=10)
    s.add_argument("--nprobe", type=int)
    s.add_argument("--threshold", type=float, help="centroid_score_threshold")
    s.add_argument("--ndocs", type=int)
    s.add_argument("--exact", action="store_true", help="brute-force exact MaxSim instead")
    s.set_defaults(func=cmd_search)

    d = sub.add_parser(
        "demo",
        help="build and search a built-in synthetic corpus, report recall and speed; with --model, index and "
        "search a built-in text collection",
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


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # argparse stops filling a "*" positional at the first option: `search INDEX --model M "text"` leaves "text" over.
    if extra and args.command == "search" and not any(e.startswith("-") for e in extra):
        args.args += extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return args.func(args)
    except (ValueError, ImportError, FileExistsError, FileNotFoundError) as e:
        print(f"colbert-index: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
