"""``colbert-index`` command line: build | index-texts | add | delete | compact | search | serve | info | bench |
demo. Each subcommand's ``--help`` ends with examples."""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np


def _typed_ids(ids: list[str], id_type: str | None) -> list:
    """Ids read as text, converted to ints for an index of integer ids."""
    if id_type != "int":
        return ids
    out = []
    for x in ids:
        try:
            out.append(int(x))
        except ValueError:
            raise ValueError(f"id {x!r} is not an integer, and this index has integer ids") from None
    return out


def _read_ids(path, id_type: str | None = None) -> list:
    """One id per line (strings, or ints for an index of integer ids)."""
    return _typed_ids([line.rstrip("\r\n") for line in open(path, encoding="utf-8")], id_type)


def _read_metadata(path) -> list[dict | None]:
    """One JSON object (or ``null``) per line, one line per document."""
    out: list[dict | None] = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(
                    f"{path}:{lineno}: not JSON ({e}); write null for a document without metadata"
                ) from None
            if obj is not None and not isinstance(obj, dict):
                raise ValueError(f"{path}:{lineno}: expected a JSON object or null, got {type(obj).__name__}")
            out.append(obj)
    return out


def _load_shards(args: argparse.Namespace):
    """``--embeddings`` / ``--doclens``: one flat array and its lengths, or lists of shards (memory-mapped)."""
    if not args.embeddings or not args.doclens:
        raise ValueError("give --embeddings X.npy [...] and --doclens L.npy [...] (or --input with --model)")
    if len(args.embeddings) != len(args.doclens):
        raise ValueError(f"{len(args.embeddings)} --embeddings shards but {len(args.doclens)} --doclens files")
    emb = [np.load(e, mmap_mode="r") for e in args.embeddings]
    lengths = [np.load(d) for d in args.doclens]
    return (emb[0], lengths[0]) if len(emb) == 1 else (emb, lengths)


def cmd_build(args: argparse.Namespace) -> int:
    from colbert_index import Index

    if args.input is not None:
        if args.model is None or args.embeddings:
            raise ValueError("build --input PASSAGES.jsonl needs --model DIR (and no --embeddings)")
        return cmd_index_texts(args)
    emb, lengths = _load_shards(args)
    ids = _read_ids(args.ids) if args.ids else None
    metadata = _read_metadata(args.metadata) if args.metadata else None
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
        metadata=metadata,
        device=args.build_device,
    )
    print(f"built {idx} in {time.perf_counter() - t0:.1f}s, {idx.disk_bytes() / idx.n_tokens:.2f} bytes/token")
    return 0


def iter_passages(
    path, fmt: str = "auto", id_key: str = "id", text_key: str = "text", with_fields: bool = False
) -> Iterator[tuple]:
    """Stream ``(id, text)`` pairs from a JSONL file (one object per line with ``id_key`` and ``text_key``) or a
    TSV file (``id<TAB>text`` per line, as MS MARCO's collection.tsv). Blank lines are skipped; ids are read as
    strings; an empty text, a missing field or a repeated id raises ValueError naming the line. ``with_fields``:
    yield ``(id, text, fields)`` triples, ``fields`` the line's other JSONL keys (empty for TSV)."""
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
                fields = {key: v for key, v in obj.items() if key not in (id_key, text_key)}
            else:
                fields = {}
                pid, tab, text = line.rstrip("\r\n").partition("\t")
                if not tab:
                    raise ValueError(f"{where}: expected id<TAB>text")
            pid = str(pid)
            if not isinstance(text, str) or not text.strip():
                raise ValueError(f"{where}: the text of passage {pid!r} is empty or not a string")
            if pid in seen:
                raise ValueError(f"{where}: passage id {pid!r} appears twice")
            seen.add(pid)
            yield (pid, text, fields) if with_fields else (pid, text)


def _metadata_of(fields: dict, keys: str | None) -> dict | None:
    """The metadata ``--metadata-keys`` keeps of a passage's other JSONL fields ("*": all of them)."""
    if not keys:
        return None
    kept = fields if keys == "*" else {k: fields[k] for k in keys.split(",") if k in fields}
    return kept or None


def _encoded_batches(args: argparse.Namespace, enc, ids: list, metas: list | None, id_type: str | None = None):
    """One list of ``[n_i, dim]`` arrays per chunk of passages of ``args.input`` (only the current chunk is held
    in memory); each chunk's ids (and metadata) are appended to ``ids`` (``metas``) as it is yielded."""
    from tqdm.auto import tqdm

    from colbert_index.encoder import merge_windows

    bar = tqdm(desc="encode", unit="passage", disable=not sys.stderr.isatty())
    passages = iter_passages(args.input, args.format, args.id_key, args.text_key, with_fields=True)
    while chunk := list(itertools.islice(passages, args.chunk_size)):
        chunk_ids, texts, fields = zip(*chunk)
        out = enc.encode_documents(
            list(texts),
            args.batch_size,
            args.max_length,
            windows=args.windows,
            overlap=args.overlap,
            dtype=np.float16,
            progress=False,
        )
        ids.extend(_typed_ids(list(chunk_ids), id_type))
        if metas is not None:
            metas.extend(_metadata_of(f, args.metadata_keys) for f in fields)
        bar.update(len(texts))
        yield merge_windows(*out) if args.windows else out
    bar.close()


def _encoder(args: argparse.Namespace, dim: int | None = None):
    from colbert_index import Encoder

    enc = Encoder.from_pretrained(args.model, device=args.device)
    if dim is not None and enc.dim != dim:
        raise ValueError(f"the model gives {enc.dim}-dim vectors, the index {dim}: use the model that built it")
    return enc


def cmd_index_texts(args: argparse.Namespace) -> int:
    from colbert_index import Index

    enc = _encoder(args)
    print(f"loaded {enc}")
    ids: list[str] = []
    metas: list | None = [] if args.metadata_keys else None
    t0 = time.perf_counter()
    # Index.build consumes every batch before it reads doc_ids and metadata, so the lists are complete by then.
    idx = Index.build(
        args.index,
        _encoded_batches(args, enc, ids, metas),
        doc_ids=ids,
        nbits=args.nbits,
        n_centroids=args.n_centroids,
        overwrite=args.overwrite,
        seed=args.seed,
        progress=False,
        metadata=metas,
        device=args.build_device,
    )
    s = time.perf_counter() - t0
    print(f"indexed {idx.n_docs} passages ({idx.n_tokens} tokens) in {s:.1f}s ({idx.n_docs / s:.1f} passages/s): {idx}")
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from colbert_index import Index

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
    flt = _parse_filter(args.filter)
    if args.model is None:
        Q = np.load(args.queries)
    else:
        Q, lengths = _encoder(args, idx.dim).encode_queries(positional, progress=False)
    if args.exact:
        res = idx.search_exact(Q, k=args.k, query_lengths=lengths, filter=flt)
    else:
        res = idx.search(Q, k=args.k, params=_search_params(args), query_lengths=lengths, filter=flt)
    for qi in range(len(res)):
        if args.model is None:
            print("\t".join(f"{i}:{s:.4f}" for i, s in zip(res.ids[qi], res.scores[qi])))
            continue
        print(f"# {positional[qi]}")
        for rank, (i, s) in enumerate(zip(res.ids[qi], res.scores[qi]), start=1):
            print(f"{rank}\t{i}\t{s:.4f}")
    return 0


def _parse_filter(text: str | None):
    """``--filter``: JSON, a list of allowed ids or a dict of metadata conditions (``@FILE`` reads a file)."""
    if text is None:
        return None
    if text.startswith("@"):
        text = Path(text[1:]).read_text(encoding="utf-8")
    try:
        flt = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"--filter: not JSON ({e})") from None
    if not isinstance(flt, (dict, list)):
        raise ValueError("--filter: a JSON list of ids or an object of metadata conditions")
    return flt


def cmd_add(args: argparse.Namespace) -> int:
    from colbert_index import Index

    idx = Index.open(args.index)
    op = idx.upsert if args.upsert else idx.add
    id_type = idx.manifest["id_type"]
    if args.input is not None:
        if args.model is None or args.embeddings:
            raise ValueError("add --input PASSAGES.jsonl needs --model DIR (and no --embeddings)")
        ids: list = []
        metas: list | None = [] if args.metadata_keys else None
        batches = _encoded_batches(args, _encoder(args, idx.dim), ids, metas, id_type)
        info = op(batches, ids, metadata=metas, progress=False)  # ids / metas are read after the documents
    else:
        emb, lengths = _load_shards(args)
        ids = _read_ids(args.ids, id_type) if args.ids else None
        if args.upsert and ids is None:
            raise ValueError("add --upsert needs --ids (the documents to replace)")
        metadata = _read_metadata(args.metadata) if args.metadata else None
        info = op(emb, ids, doc_lengths=lengths, metadata=metadata, progress=False)
    print(
        f"{info.op}: {info.docs_added} documents ({info.tokens_added} tokens) added, {info.docs_deleted} replaced; "
        f"generation {info.generation} in {info.seconds:.2f}s; drift {info.drift:.3f} "
        f"(expected {info.drift_expected:.3f}), {info.centroids_added} centroids added"
    )
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    from colbert_index import Index

    idx = Index.open(args.index)
    id_type = idx.manifest["id_type"]
    ids = _typed_ids(list(args.ids), id_type) + (_read_ids(args.ids_file, id_type) if args.ids_file else [])
    if not ids:
        raise ValueError("delete needs ids: colbert-index delete INDEX ID [ID ...] or --ids-file FILE")
    info = idx.delete(ids, missing_ok=args.missing_ok)
    print(f"deleted {info.docs_deleted} documents; generation {info.generation}; {len(idx)} live")
    return 0


def cmd_compact(args: argparse.Namespace) -> int:
    from colbert_index import Index

    idx = Index.open(args.index)
    before = (len(idx.segment_info()), idx.disk_bytes())
    info = idx.compact(retrain=args.retrain, n_centroids=args.n_centroids, seed=args.seed)
    print(
        f"compact: {before[0]} -> {len(idx.segment_info())} segments, {info.docs_deleted} deleted documents removed, "
        f"{before[1] / 2**20:.1f} -> {idx.disk_bytes() / 2**20:.1f} MiB; generation {info.generation} "
        f"in {info.seconds:.2f}s"
    )
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from colbert_index import Index, IndexFormatError

    try:
        idx = Index.open(args.index, verify=args.verify)
        problem = None
    except IndexFormatError as e:
        idx, problem = None, str(e)
    if idx is None:
        print(json.dumps({"valid": False, "error": problem}) if args.json else f"INVALID: {problem}")
        return 1
    m = idx.manifest
    segments = []
    for entry, seg in zip(m["segments"], idx.segment_info()):
        files = list(entry["files"].values()) + ([entry["deleted"]] if entry.get("deleted") else [])
        meta = entry["files"].get("metadata")
        segments.append({**seg, "bytes": sum(int(f["bytes"]) for f in files), "metadata_rows": meta and meta["rows"]})
    info = {
        "path": str(idx.path),
        "valid": True,
        "verified": args.verify,
        "format_version": m["version"],
        "generation": idx.generation,
        "uuid": m.get("uuid"),
        "dim": idx.dim,
        "nbits": idx.nbits,
        "n_centroids": idx.n_centroids,
        "normalize": idx.codec.normalize,
        "id_type": m["id_type"],
        "docs": idx.n_docs,
        "deleted": idx.n_deleted,
        "tokens": idx.n_tokens,
        "bytes": idx.disk_bytes(),
        "bytes_per_token": round(idx.disk_bytes() / max(1, idx.n_tokens), 2),
        "drift": idx.drift(),
        "last_op": m.get("last_op"),
        "build": m.get("build"),
        "segments": segments,
    }
    if args.json:
        print(json.dumps(info, indent=1))
        return 0
    check = "every file checksummed, no id live twice" if args.verify else "sizes, shapes, small-file checksums"
    print(f"index       {info['path']} (format {info['format_version']}, generation {info['generation']})")
    print(f"documents   {info['docs']:,} live, {info['deleted']:,} deleted; {info['tokens']:,} live tokens")
    print(
        f"codec       dim {info['dim']}, {info['nbits']} bits, {info['n_centroids']:,} centroids, {info['id_type']} ids"
    )
    print(f"disk        {info['bytes'] / 2**20:.2f} MiB ({info['bytes_per_token']} bytes per live token)")
    print(f"last write  {info['last_op'] or 'build'}")
    print(f"segments    {len(segments)}")
    for s in segments:
        meta = f", metadata ({s['metadata_rows']} rows)" if s["metadata_rows"] else ""
        print(
            f"  seg {s['id']:>6}  {s['n_docs']:,} docs ({s['n_deleted']:,} deleted), {s['n_tokens']:,} tokens, "
            f"{s['bytes'] / 2**20:.2f} MiB{meta}"
        )
    print(f"validation  ok ({check})")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from colbert_index.server import serve

    key = args.api_key or os.environ.get("COLBERT_INDEX_API_KEY") or None
    if key is None and args.host not in ("127.0.0.1", "localhost", "::1"):
        print(
            f"warning: serving on {args.host} without an API key (--api-key or COLBERT_INDEX_API_KEY)", file=sys.stderr
        )
    serve(
        args.index,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        model=args.model,
        device=args.device,
        api_key=key,
        workers=args.workers,
        refresh_s=args.refresh_s,
        max_body_bytes=int(args.max_body_mb * 2**20),
    )
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    import numba

    from colbert_index import Index
    from colbert_index.metrics import recall_at

    with tempfile.TemporaryDirectory() as tmp:
        if args.index is None:
            from colbert_index.synthetic import make_corpus

            corpus = make_corpus(args.synthetic, dim=args.dim, n_queries=args.n_queries, seed=args.seed)
            t0 = time.perf_counter()
            idx = Index.build(Path(tmp) / "bench-index", corpus.documents(), nbits=args.nbits, seed=args.seed)
            print(f"built {idx} in {time.perf_counter() - t0:.1f}s")
            Q = corpus.queries
        elif args.queries is None:
            raise ValueError(
                "bench INDEX needs --queries Q.npy ([n_q, q_len, dim]); or leave out INDEX for --synthetic"
            )
        else:
            idx, Q = Index.open(args.index), np.load(args.queries)
            Q = Q[None] if Q.ndim == 2 else Q
        if args.threads:
            numba.set_num_threads(args.threads)
        params, flt = _search_params(args), _parse_filter(args.filter)
        Q = Q[: args.n_queries]
        for q in Q[:3]:
            idx.search(q, k=args.k, params=params, filter=flt)  # compile / warm up
        times, found = [], []
        for q in Q:
            t0 = time.perf_counter()
            found.append(idx.search(q, k=args.k, params=params, filter=flt).ids[0])
            times.append((time.perf_counter() - t0) * 1e3)
        t0 = time.perf_counter()
        idx.search(Q, k=args.k, params=params, filter=flt)
        batch_qps = len(Q) / (time.perf_counter() - t0)
        n_exact = min(args.exact_queries, len(Q))
        exact = idx.search_exact(Q[:n_exact], k=args.k, filter=flt).ids
        width = min(args.k, exact.shape[1]) if exact.size else 0
        rec = recall_at(np.stack(found[:n_exact]), exact, width) if n_exact and width else float("nan")
        p50, p95, p99 = np.percentile(times, [50, 95, 99])
        result = {
            "queries": len(Q),
            "k": args.k,
            "threads": numba.get_num_threads(),
            "p50_ms": round(float(p50), 3),
            "p95_ms": round(float(p95), 3),
            "p99_ms": round(float(p99), 3),
            "batch_qps": round(batch_qps, 1),
            f"recall@{args.k}_vs_exact": round(rec, 4),
            "exact_queries": n_exact,
        }
        print(json.dumps(result) if args.json else "\n".join(f"{k:>16}  {v}" for k, v in result.items()))
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


def _kernels_cached() -> bool:
    """Whether Numba's on-disk cache of the kernels has entries (none on a fresh install)."""
    import colbert_index.kernels

    return any((Path(colbert_index.kernels.__file__).parent / "__pycache__").glob("*.nbi"))


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
    compiling = not _kernels_cached()
    if compiling:
        print("first run on this install: the Numba kernels compile as they are first used (~30 s; cached after)")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(args.index or Path(tmp) / "demo-index")
        t0 = time.perf_counter()
        idx = Index.build(path, corpus.documents(), nbits=args.nbits, overwrite=True, seed=args.seed)
        build_s = time.perf_counter() - t0
        note = " (compiling included)" if compiling else ""
        print(f"built {idx} in {build_s:.1f}s{note}: {idx.disk_bytes() / idx.n_tokens:.2f} bytes/token on disk")
        idx.search(corpus.queries[:2], k=10)  # compile / warm up
        idx.search_exact(corpus.queries[:2], k=10)
        t0 = time.perf_counter()
        res = idx.search(corpus.queries, k=10)
        ms = (time.perf_counter() - t0) * 1000 / len(corpus.queries)
        t0 = time.perf_counter()
        exact = idx.search_exact(corpus.queries, k=10)
        exact_ms = (time.perf_counter() - t0) * 1000 / len(corpus.queries)
        seg = get_backend().segment_max_sums
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
    p.add_argument(
        "--build-device", default="cpu", help="where k-means and compression run: cpu (faiss + Numba) or cuda (torch)"
    )


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


def _search_params(args: argparse.Namespace):
    from colbert_index import SearchParams

    return SearchParams(args.nprobe, args.threshold, args.ndocs, args.nbound, args.bound_cells)


def _add_search_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--nprobe", type=int)
    p.add_argument("--threshold", type=float, help="centroid_score_threshold")
    p.add_argument("--ndocs", type=int)
    p.add_argument(
        "--nbound",
        type=int,
        help="stage 1 also bounds each candidate's centroid interaction and keeps the best NBOUND "
        "(robust to documents unlike the training data; SearchParams.nbound)",
    )
    p.add_argument("--bound-cells", type=int, default=16, help="centroids per query token the bound reads")
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
    p = argparse.ArgumentParser(prog="colbert-index", description=__doc__)
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
    _add_embedding_inputs(a)
    _add_text_options(a)
    a.set_defaults(func=cmd_add)

    x = _sub(
        sub,
        "delete",
        "delete documents by id (tombstones; compact reclaims the space)",
        "  colbert-index delete my-index doc-17 doc-42\n"
        "  colbert-index delete my-index --ids-file stale.txt --missing-ok\n",
    )
    x.add_argument("index", help="index directory")
    x.add_argument("ids", nargs="*", help="ids to delete")
    x.add_argument("--ids-file", help="text file with one id per line")
    x.add_argument("--missing-ok", action="store_true", help="ignore ids that are not in the index")
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
        "search an index with query embeddings (.npy) or with query texts and a model",
        "  colbert-index search my-index --queries Q.npy -k 10\n"
        '  colbert-index search my-index --queries Q.npy --filter \'{"lang": "en", "year": {"$gte": 2020}}\'\n'
        '  colbert-index search --model models/colbert --index my-index "what does PLAID do?"\n',
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
    _add_search_options(s)
    s.add_argument("--exact", action="store_true", help="brute-force exact MaxSim instead")
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
        "POST /documents/upsert, POST /documents/delete, POST /compact (colbert_index.server; README).",
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
    except (ValueError, TypeError, ImportError, OSError) as e:
        print(f"colbert-index: error: {e}", file=sys.stderr)
        return 2
    except KeyError as e:  # unknown ids
        print(f"colbert-index: error: {e.args[0] if e.args else e}", file=sys.stderr)
        return 2
    except RuntimeError as e:
        from colbert_index.device import DeviceUnavailableError
        from colbert_index.storage import IndexLockedError

        if not isinstance(e, (IndexLockedError, DeviceUnavailableError)):
            raise
        print(f"colbert-index: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
