"""The index commands: build, add, delete, compact, search, info, serve."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

from colbert_index.cli.inputs import load_shards, parse_filter, read_ids, read_metadata, search_params, typed_ids
from colbert_index.cli.texts import TextSpool, cmd_index_texts, encoded_batches, load_encoder


def cmd_build(args: argparse.Namespace) -> int:
    from colbert_index import Index

    if args.input is not None:
        if args.model is None or args.embeddings:
            raise ValueError("build --input PASSAGES.jsonl needs --model DIR (and no --embeddings)")
        return cmd_index_texts(args)
    emb, lengths = load_shards(args)
    ids = read_ids(args.ids) if args.ids else None
    metadata = read_metadata(args.metadata) if args.metadata else None
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
        pool_factor=args.pool_factor,
        keep_originals=args.keep_originals,
    )
    print(f"built {idx} in {time.perf_counter() - t0:.1f}s, {idx.disk_bytes() / idx.n_tokens:.2f} bytes/token")
    return 0


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
        texts = TextSpool() if args.store_texts else None
        batches = encoded_batches(args, load_encoder(args, idx.dim), ids, metas, id_type, texts)
        # ids, metas and texts are read after the documents
        info = op(batches, ids, metadata=metas, progress=False, pool_factor=args.pool_factor, texts=texts)
    else:
        emb, lengths = load_shards(args)
        ids = read_ids(args.ids, id_type) if args.ids else None
        if args.upsert and ids is None:
            raise ValueError("add --upsert needs --ids (the documents to replace)")
        metadata = read_metadata(args.metadata) if args.metadata else None
        info = op(emb, ids, doc_lengths=lengths, metadata=metadata, progress=False, pool_factor=args.pool_factor)
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
    ids = typed_ids(list(args.ids), id_type) + (read_ids(args.ids_file, id_type) if args.ids_file else [])
    if args.filter is not None:
        if ids:
            raise ValueError("delete takes ids or --filter, not both")
        info = idx.delete(filter=parse_filter(args.filter))
        print(f"deleted {info.docs_deleted} documents; generation {info.generation}; {len(idx)} live")
        return 0
    if not ids:
        raise ValueError("delete needs ids: colbert-index delete INDEX ID [ID ...], --ids-file FILE or --filter JSON")
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


def cmd_search(args: argparse.Namespace) -> int:
    from colbert_index import Index

    positional = list(args.args)
    index = args.index or (positional.pop(0) if positional else None)
    if index is None:
        raise ValueError("search needs an index: colbert-index search --index PATH ... (or the path first)")
    text = list(args.text) if args.text else None
    if args.hybrid:
        if args.model is None or text is not None:
            raise ValueError("--hybrid searches each query text of --model by BM25 too (and takes no --text)")
        text = positional
    if args.model is None and (positional or (args.queries is None and text is None)):
        raise ValueError("search takes --queries Q.npy (embeddings), --model DIR and query texts, or --text WORDS")
    if args.model is not None and (args.queries is not None or not positional):
        raise ValueError('text search takes query texts after the options: --model DIR --index PATH "query"')
    if args.exact and text is not None:
        raise ValueError("--exact is brute-force MaxSim; it takes no --text or --hybrid")
    if args.explain and (args.exact or text is not None):
        raise ValueError("--explain describes the staged search; it takes no --exact, --text or --hybrid")
    idx = Index.open(index)
    Q, lengths = None, None
    flt = parse_filter(args.filter)
    if args.model is not None:
        Q, lengths = load_encoder(args, idx.dim).encode_queries(positional, progress=False)
    elif args.queries is not None:
        Q = np.load(args.queries)
    if args.exact:
        res = idx.search_exact(Q, k=args.k, query_lengths=lengths, filter=flt)
    else:
        hybrid = {"text_mode": args.text_mode, "fusion": args.fusion, "alpha": args.alpha}
        hybrid = {"text_query": text, **hybrid, "fusion_depth": args.fusion_depth} if text is not None else {}
        explain = {"explain": True} if args.explain else {}
        res = idx.search(
            Q, k=args.k, params=search_params(args), query_lengths=lengths, filter=flt, **hybrid, **explain
        )
    for qi in range(len(res)):
        if res.explain is not None:
            print(f"# explain {json.dumps(res.explain[qi])}")
        hits = [(i, s) for i, s in zip(res.ids[qi], res.scores[qi]) if np.isfinite(s)]  # short rows are padded
        if args.model is None and args.queries is not None:
            print("\t".join(f"{i}:{s:.4f}" for i, s in hits))
            continue
        print(f"# {positional[qi] if args.model is not None else text[qi]}")
        for rank, (i, s) in enumerate(hits, start=1):
            print(f"{rank}\t{i}\t{s:.4f}")
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
        meta = entry["files"].get("metadata") or {}
        size = sum(int(f["bytes"]) for f in files)
        kept = (entry["files"].get("originals") or {}).get("bytes")
        extra = {"originals_bytes": kept, "metadata_rows": meta.get("rows"), "texts": meta.get("texts")}
        segments.append({**seg, "bytes": size, **extra})
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
        "pool_factor": m.get("pool_factor", 1),
        "keep_originals": bool(m.get("keep_originals", False)),
        "originals_bytes": sum(s["originals_bytes"] or 0 for s in segments),
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
    if info["pool_factor"] != 1:
        print(f"pooling     factor {info['pool_factor']} (about 1 vector kept per {info['pool_factor']} tokens)")
    if info["keep_originals"] or info["originals_bytes"]:
        print(
            f"originals   {'kept' if info['keep_originals'] else 'not kept by new segments'}: float16 vectors, "
            f"{info['originals_bytes'] / 2**20:.2f} MiB of the disk (the full-precision rerank)"
        )
    print(f"last write  {info['last_op'] or 'build'}")
    print(f"segments    {len(segments)}")
    for s in segments:
        meta = f", metadata ({s['metadata_rows']} rows)" if s["metadata_rows"] else ""
        meta += f", {s['texts']:,} texts" if s["texts"] is not None else ""
        meta += f", pooled by {s['pool_factor']}" if s["pool_factor"] != 1 else ""
        meta += f", originals {s['originals_bytes'] / 2**20:.2f} MiB" if s["originals_bytes"] else ""
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
