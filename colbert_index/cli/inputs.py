"""The command line's input files and option values: ids, metadata, embeddings, filters, search parameters."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def typed_ids(ids: list[str], id_type: str | None) -> list:
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


def read_ids(path, id_type: str | None = None) -> list:
    """One id per line (strings, or ints for an index of integer ids)."""
    return typed_ids([line.rstrip("\r\n") for line in open(path, encoding="utf-8")], id_type)


def read_metadata(path) -> list[dict | None]:
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


def load_shards(args: argparse.Namespace):
    """``--embeddings`` / ``--doclens``: one flat array and its lengths, or lists of shards (memory-mapped)."""
    if not args.embeddings or not args.doclens:
        raise ValueError("give --embeddings X.npy [...] and --doclens L.npy [...] (or --input with --model)")
    if len(args.embeddings) != len(args.doclens):
        raise ValueError(f"{len(args.embeddings)} --embeddings shards but {len(args.doclens)} --doclens files")
    emb = [np.load(e, mmap_mode="r") for e in args.embeddings]
    lengths = [np.load(d) for d in args.doclens]
    return (emb[0], lengths[0]) if len(emb) == 1 else (emb, lengths)


def parse_filter(text: str | None):
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


def search_params(args: argparse.Namespace):
    from colbert_index import SearchParams

    fields = (args.nprobe, args.threshold, args.ndocs, args.nbound, args.bound_cells, args.rerank, args.agree_cells)
    return SearchParams(*fields)
