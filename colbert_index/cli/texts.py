"""Texts on the command line: passage files (JSONL / TSV) streamed through a local checkpoint into an index
(``index-texts``, ``build --input``, ``add --input``)."""

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

from colbert_index.cli.inputs import typed_ids


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


class TextSpool:
    """Texts written to a temporary file as they come (``extend``) and read back once (iteration), so storing the
    passages' texts does not hold the corpus in memory."""

    def __init__(self) -> None:
        self._file = tempfile.TemporaryFile("w+", encoding="utf-8")

    def extend(self, texts) -> None:
        self._file.writelines(json.dumps(t, ensure_ascii=False) + "\n" for t in texts)

    def __iter__(self):
        self._file.seek(0)
        for line in self._file:
            yield json.loads(line)
        self._file.close()


def encoded_batches(
    args: argparse.Namespace, enc, ids: list, metas: list | None, id_type: str | None = None, texts=None
):
    """One list of ``[n_i, dim]`` arrays per chunk of passages of ``args.input`` (only the current chunk is held
    in memory); each chunk's ids (metadata, texts) are appended to ``ids`` (``metas``, ``texts``) as it is
    yielded."""
    from tqdm.auto import tqdm

    from colbert_index.encoder import merge_windows

    bar = tqdm(desc="encode", unit="passage", disable=not sys.stderr.isatty())
    passages = iter_passages(args.input, args.format, args.id_key, args.text_key, with_fields=True)
    while chunk := list(itertools.islice(passages, args.chunk_size)):
        chunk_ids, texts_chunk, fields = zip(*chunk)
        out = enc.encode_documents(
            list(texts_chunk),
            args.batch_size,
            args.max_length,
            windows=args.windows,
            overlap=args.overlap,
            dtype=np.float16,
            progress=False,
        )
        ids.extend(typed_ids(list(chunk_ids), id_type))
        if metas is not None:
            metas.extend(_metadata_of(f, args.metadata_keys) for f in fields)
        if texts is not None:
            texts.extend(texts_chunk)
        bar.update(len(texts_chunk))
        yield merge_windows(*out) if args.windows else out
    bar.close()


def load_encoder(args: argparse.Namespace, dim: int | None = None):
    from colbert_index import Encoder

    enc = Encoder.from_pretrained(args.model, device=args.device)
    if dim is not None and enc.dim != dim:
        raise ValueError(f"the model gives {enc.dim}-dim vectors, the index {dim}: use the model that built it")
    return enc


def cmd_index_texts(args: argparse.Namespace) -> int:
    from colbert_index import Index

    enc = load_encoder(args)
    print(f"loaded {enc}")
    ids: list[str] = []
    metas: list | None = [] if args.metadata_keys else None
    texts = TextSpool() if args.store_texts else None
    t0 = time.perf_counter()
    # Index.build consumes every batch before it reads doc_ids, metadata and texts, so they are complete by then.
    idx = Index.build(
        args.index,
        encoded_batches(args, enc, ids, metas, texts=texts),
        doc_ids=ids,
        nbits=args.nbits,
        n_centroids=args.n_centroids,
        overwrite=args.overwrite,
        seed=args.seed,
        progress=False,
        metadata=metas,
        device=args.build_device,
        pool_factor=args.pool_factor,
        keep_originals=args.keep_originals,
        texts=texts,
    )
    s = time.perf_counter() - t0
    print(f"indexed {idx.n_docs} passages ({idx.n_tokens} tokens) in {s:.1f}s ({idx.n_docs / s:.1f} passages/s): {idx}")
    return 0
