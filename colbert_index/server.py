"""HTTP server: an index behind a small JSON API (FastAPI + uvicorn; ``pip install -e ".[server]"``; docs/server.md).

``create_app(path, model=..., api_key=...)`` returns the app; ``colbert-index serve PATH`` runs it. Endpoints:

==========================  ============================================================================
``GET  /health``            liveness (never needs the API key)
``GET  /stats``             docs, tokens, bytes, segments, deleted, generation, dim, nbits, centroids
``POST /search``            ``query`` (``[q_len, dim]`` embeddings) or ``text`` (a model), and/or ``text_query`` (BM25)
``POST /search/batch``      ``queries`` or ``texts``, and/or ``text_queries``; run in parallel over the cores
``POST /documents``         ``{"documents": [{"id", "embeddings" | "text", "metadata"}], "store_text": true}``
``POST /documents/upsert``  the same, replacing live documents with the same ids
``POST /documents/delete``  ``{"ids": [...], "missing_ok": false}`` or ``{"filter": {...}}``
``POST /compact``           ``{"retrain": false}``
==========================  ============================================================================

Searches take ``k``, ``filter`` (:mod:`colbert_index.filters`), ``params``, ``include_metadata``, and with text
queries ``text_mode``, ``fusion``, ``alpha``, ``fusion_depth`` and ``hybrid`` (:mod:`colbert_index.hybrid`). They
run in a pool of one thread per core (each query's kernels on one thread), not micro-batched (no faster:
docs/design-notes.md). Writes run one at a time in their own thread, holding the index's writer lock. Before a
search the server picks up versions other processes committed (``Index.refresh``, at most every ``refresh_s``).

Bad input gets a 4xx whose ``detail`` names the field (``400`` malformed JSON, ``401`` missing or wrong API
key, ``404`` unknown ids, ``409`` another writer holds the index, ``413`` body too large, ``422`` invalid
field). With ``api_key`` set, every endpoint but ``/health`` requires ``Authorization: Bearer KEY``. The request,
answer and error bodies are the pydantic models of :mod:`colbert_index.server_models`; the OpenAPI schema
(``/openapi.json``) declares each endpoint's error statuses and gives embedding rows the index's dim.
"""

from __future__ import annotations

import asyncio
import errno
import hmac
import math
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated

import numba
import numpy as np

try:
    from fastapi import Depends, FastAPI, HTTPException, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
except ImportError as e:  # pragma: no cover - the extra is missing
    raise ImportError(f'the server needs the "server" extra: pip install -e ".[server]" ({e})') from e

from colbert_index.errors import IndexFormatError, IndexLockedError
from colbert_index.index import Index
from colbert_index.server_models import (
    MAX_BODY_BYTES,
    AddAnswer,
    BatchSearchAnswer,
    BatchSearchRequest,
    CompactAnswer,
    CompactRequest,
    DeleteAnswer,
    DeleteRequest,
    DocumentsRequest,
    Health,
    SearchAnswer,
    SearchRequest,
    Stats,
    error_responses,
    pin_row_length,
)

_BEARER = HTTPBearer(auto_error=False, description="the server's API key (--api-key)")
UNAUTHORIZED = "missing or wrong API key: send Authorization: Bearer KEY"


class _BodyLimit:
    """ASGI middleware: 413 for a request body over ``limit`` bytes, declared (Content-Length) or streamed."""

    def __init__(self, app, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            response = JSONResponse({"detail": f"request body larger than {self.limit} bytes"}, status_code=413)
            return await response(scope, receive, send)
        seen = 0

        async def limited():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:  # raised inside the endpoint's body parsing: FastAPI answers with it
                    raise HTTPException(413, f"request body larger than {self.limit} bytes")
            return message

        await self.app(scope, limited, send)


def _matrix(rows: list[list[float]], dim: int, field: str) -> np.ndarray:
    """A ``[n, dim]`` float32 array from JSON rows; 422 naming ``field`` when a row has another length."""
    bad = next((i for i, r in enumerate(rows) if len(r) != dim), None)
    if bad is not None:
        raise HTTPException(422, f"{field}[{bad}]: {len(rows[bad])} values, the index has dim {dim}")
    return np.asarray(rows, dtype=np.float32)


class _Service:
    """The state behind the endpoints: the index, the optional encoder, the thread pools."""

    def __init__(self, index_path, model, device: str, workers: int | None, refresh_s: float) -> None:
        self.index = Index.open(index_path)
        self.warmup_s = self.index.warmup()  # compiles / loads the kernels now, not in the first request
        self.encoder = None
        if model is not None:
            from colbert_index.encoder import Encoder

            self.encoder = Encoder.from_pretrained(model, device=device)
            if self.encoder.dim != self.index.dim:
                raise ValueError(f"the model gives {self.encoder.dim}-dim vectors, the index {self.index.dim}")
        self.workers = workers or numba.get_num_threads()
        self.search_pool = ThreadPoolExecutor(self.workers, thread_name_prefix="search")
        self.write_pool = ThreadPoolExecutor(1, thread_name_prefix="write")
        self.write_lock = threading.Lock()  # the writer thread vs refresh()
        self.encode_lock = threading.Lock()
        self.refresh_s, self._refreshed = refresh_s, time.monotonic()

    def close(self) -> None:
        self.search_pool.shutdown(wait=True)
        self.write_pool.shutdown(wait=True)
        self.index.close()

    # -- threads
    def _maybe_refresh(self) -> None:
        """Pick up versions committed by other processes, at most every ``refresh_s`` (skipped during a write)."""
        if time.monotonic() - self._refreshed >= self.refresh_s and self.write_lock.acquire(blocking=False):
            try:
                self._refreshed = time.monotonic()
                self.index.refresh()
            finally:
                self.write_lock.release()

    async def search(self, fn, parallel: bool = False):
        def run():
            # one query: its kernels on this worker's thread only (the pool gives one worker per core);
            # a batch: spread over the cores by Index.search itself
            numba.set_num_threads(numba.config.NUMBA_NUM_THREADS if parallel else 1)
            self._maybe_refresh()
            return fn()

        return await asyncio.get_running_loop().run_in_executor(self.search_pool, run)

    async def write(self, fn):
        def run():
            with self.write_lock:
                return fn()

        return await asyncio.get_running_loop().run_in_executor(self.write_pool, run)

    # -- helpers
    def encode_queries(self, texts: list[str]):
        if self.encoder is None:
            raise HTTPException(422, "text: this server has no model (start it with --model DIR); send embeddings")
        with self.encode_lock:
            return self.encoder.encode_queries(texts, progress=False)

    def encode_documents(self, texts: list[str]) -> list[np.ndarray]:
        if self.encoder is None:
            raise HTTPException(422, "text: this server has no model (start it with --model DIR); send embeddings")
        with self.encode_lock:
            return self.encoder.encode_documents(texts, progress=False)

    def hits(self, res, include_metadata: bool) -> list[list[dict]]:
        """The answer's hits per query: a lexical row's padding dropped, 422 for scores JSON cannot carry."""
        out = []
        for ids, scores in zip(res.ids.tolist(), res.scores.tolist()):
            n = len(scores)
            while n and scores[n - 1] == -math.inf:  # a short row of a lexical search is padded with -inf
                n -= 1
            ids, scores = ids[:n], scores[:n]
            if not all(map(math.isfinite, scores)):
                raise ValueError("query: the scores are not finite (NaN or inf): the vectors' values are too large")
            # as of now: a document deleted since the search ran gets None
            metas = self.index.metadata(ids, missing_ok=True) if include_metadata else None
            out.append(
                [
                    {"id": i, "score": s, **({"metadata": metas[j]} if include_metadata else {})}
                    for j, (i, s) in enumerate(zip(ids, scores))
                ]
            )
        return out


def _error_detail(exc: RequestValidationError) -> tuple[int, dict]:
    """400 for unparsable JSON, else 422; ``detail`` names each bad field (``documents.0.embeddings``)."""
    errors = exc.errors()
    status = 400 if any(e.get("type") == "json_invalid" for e in errors) else 422
    parts, listed = [], []
    for e in errors[:20]:
        loc = ".".join(str(x) for x in e.get("loc", ())[1:] if not str(x).startswith(("function-", "list[", "dict[")))
        msg = e.get("msg", "invalid")
        if e.get("type") == "json_invalid":
            loc, msg = "body", f"malformed JSON (at character {loc}): {(e.get('ctx') or {}).get('error', msg)}"
        parts.append(f"{loc or 'body'}: {msg}")
        listed.append({"loc": [str(x) for x in e.get("loc", ())], "msg": msg, "type": e.get("type")})
    return status, {"detail": "; ".join(parts), "errors": listed}


def create_app(
    index_path: str | os.PathLike,
    *,
    model: str | os.PathLike | None = None,
    device: str = "cpu",
    api_key: str | None = None,
    workers: int | None = None,
    refresh_s: float = 1.0,
    max_body_bytes: int = MAX_BODY_BYTES,
) -> FastAPI:
    """The FastAPI app serving the index at ``index_path`` (see the module docstring for the endpoints).

    Args:
        model: a local checkpoint directory (:class:`colbert_index.Encoder`) for text queries and documents.
        api_key: when set, required as ``Authorization: Bearer KEY`` on every endpoint but ``GET /health``.
        workers: search threads (default: Numba's thread count, one per core).
        refresh_s: how often (at most) searches check for versions committed by other processes.
        max_body_bytes: larger request bodies get 413.
    """
    index_path = Path(index_path)
    if api_key is not None and not api_key:
        raise ValueError("api_key must not be empty (leave it unset to serve without one)")
    service = _Service(index_path, model, device, workers, refresh_s)
    expected = api_key.encode() if api_key is not None else None

    @asynccontextmanager
    async def lifespan(_app):
        yield
        service.close()

    app = FastAPI(title="colbert_index", lifespan=lifespan)
    app.state.service = service

    def has_key(request: Request) -> bool:
        """The request carries ``Authorization: Bearer KEY`` (compared in constant time), or no key is set."""
        if expected is None:
            return True
        scheme, _, token = (request.headers.get("authorization") or "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), expected)

    def authorize(request: Request, _bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)]) -> None:
        """The dependency of every endpoint but /health (``_BEARER`` puts the scheme in the OpenAPI schema)."""
        if not has_key(request):
            raise HTTPException(401, UNAUTHORIZED, headers={"WWW-Authenticate": "Bearer"})

    # what each endpoint may answer besides 200 (the OpenAPI schema declares it: docs/server.md, "Errors")
    auth, keyed = ([Depends(authorize)], (401,)) if expected is not None else ([], ())
    reads = error_responses(*keyed, 500)
    searches = error_responses(400, *keyed, 413, 422, 500)
    writes = error_responses(400, *keyed, 409, 413, 422, 500, 507)
    deletes = error_responses(400, *keyed, 404, 409, 413, 422, 500, 507)

    def openapi() -> dict:
        """FastAPI's schema, with the index's dim as the length of every embedding row."""
        if app.openapi_schema is None:
            app.openapi_schema = pin_row_length(FastAPI.openapi(app), service.index.dim)
        return app.openapi_schema

    app.openapi = openapi

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        if not has_key(request):  # the body was parsed before the key was checked: say nothing about it
            return JSONResponse({"detail": UNAUTHORIZED}, status_code=401, headers={"WWW-Authenticate": "Bearer"})
        status, body = _error_detail(exc)
        return JSONResponse(body, status_code=status)

    def _error(status: int):
        async def handler(_request: Request, exc: Exception):
            msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
            return JSONResponse({"detail": str(msg)}, status_code=status)

        return handler

    # the index's own checks of user input raise ValueError / TypeError (bad queries, ids, filters, metadata)
    app.add_exception_handler(ValueError, _error(422))
    app.add_exception_handler(TypeError, _error(422))
    app.add_exception_handler(KeyError, _error(404))  # unknown ids
    app.add_exception_handler(IndexLockedError, _error(409))
    app.add_exception_handler(IndexFormatError, _error(500))  # a damaged index is not the client's fault

    @app.exception_handler(OSError)
    async def _storage(_request: Request, exc: OSError):
        """A failed read or write of the index: JSON (the connection stays open); a full disk is 507, since the
        write left the index at its last commit and can be retried once space is freed."""
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            detail = f"no space left on the index's device; the write was not committed: {exc}"
            return JSONResponse({"detail": detail}, status_code=507)
        return JSONResponse({"detail": f"storage error: {exc}"}, status_code=500)

    @app.get("/health")
    async def health() -> Health:
        return {"status": "ok", "generation": service.index.generation}

    @app.get("/stats", dependencies=auth, responses=reads)
    async def stats() -> Stats:
        def collect():
            idx = service.index
            return {
                "docs": idx.n_docs,
                "tokens": idx.n_tokens,
                "bytes": idx.disk_bytes(),
                "segments": len(idx.segment_info()),
                "deleted": idx.n_deleted,
                "generation": idx.generation,
                "dim": idx.dim,
                "nbits": idx.nbits,
                "n_centroids": idx.n_centroids,
                "model": service.encoder is not None,
                "warmup_s": round(service.warmup_s, 3),  # search kernels compiled/loaded at start
            }

        return await service.search(collect)

    async def _search(req, queries, texts, text_queries, batch: bool) -> dict:
        """A search or batch search request (one query: lists of one, ``batch`` False)."""
        dim = service.index.dim
        Q, lengths = None, None
        if queries is not None:
            Q = [_matrix(q, dim, f"queries[{i}]" if batch else "query") for i, q in enumerate(queries)]
        elif texts is not None:
            Q, lengths = await service.search(lambda: service.encode_queries(texts))
        params = None if req.params is None else req.params.search_params()
        lexical = req.lexical(texts if req.hybrid else text_queries)

        def run():
            res = service.index.search(Q, k=req.k, params=params, query_lengths=lengths, filter=req.filter, **lexical)
            return service.hits(res, req.include_metadata)

        results = await service.search(run, parallel=batch)
        return {"results": results if batch else results[0], "generation": service.index.generation}

    @app.post("/search", dependencies=auth, responses=searches, response_model_exclude_unset=True)
    async def search(req: SearchRequest) -> SearchAnswer:
        one = [None if x is None else [x] for x in (req.query, req.text, req.text_query)]
        return await _search(req, *one, batch=False)

    @app.post("/search/batch", dependencies=auth, responses=searches, response_model_exclude_unset=True)
    async def search_batch(req: BatchSearchRequest) -> BatchSearchAnswer:
        return await _search(req, req.queries, req.texts, req.text_queries, batch=True)

    async def _documents(req: DocumentsRequest, upsert: bool) -> dict:
        given = [d.id is not None for d in req.documents]
        if any(given) and not all(given):
            raise HTTPException(422, "documents[].id: give an id for every document or for none")
        ids = [d.id for d in req.documents] if all(given) else None
        if upsert and ids is None:
            raise HTTPException(422, "documents[].id: upsert needs the id of every document")
        metadata = [d.metadata for d in req.documents]
        metadata = metadata if any(m is not None for m in metadata) else None

        def arrays() -> list[np.ndarray]:
            """The documents' token embeddings (texts encoded), off the event loop."""
            dim = service.index.dim
            docs = [
                None if d.embeddings is None else _matrix(d.embeddings, dim, f"documents[{i}].embeddings")
                for i, d in enumerate(req.documents)
            ]
            texts = [(i, d.text) for i, d in enumerate(req.documents) if d.text is not None and docs[i] is None]
            if texts:
                for (i, _), e in zip(texts, service.encode_documents([t for _, t in texts])):
                    docs[i] = e
            return docs

        docs = await service.search(arrays)
        idx = service.index
        op = idx.upsert if upsert else idx.add
        texts = [d.text for d in req.documents] if req.store_text else None
        texts = texts if texts is not None and any(t is not None for t in texts) else None
        info = await service.write(lambda: op(docs, ids, metadata=metadata, progress=False, texts=texts))
        return {
            "generation": info.generation,
            "added": info.docs_added,
            "replaced": info.docs_deleted,
            "tokens": info.tokens_added,
            "seconds": round(info.seconds, 4),
        }

    @app.post("/documents", dependencies=auth, responses=writes)
    async def add(req: DocumentsRequest) -> AddAnswer:
        return await _documents(req, upsert=False)

    @app.post("/documents/upsert", dependencies=auth, responses=writes)
    async def upsert(req: DocumentsRequest) -> AddAnswer:
        return await _documents(req, upsert=True)

    @app.post("/documents/delete", dependencies=auth, responses=deletes)
    async def delete(req: DeleteRequest) -> DeleteAnswer:
        idx = service.index
        if req.filter is not None:
            info = await service.write(lambda: idx.delete(filter=req.filter))
        else:
            info = await service.write(lambda: idx.delete(req.ids, missing_ok=req.missing_ok))
        return {"generation": info.generation, "deleted": info.docs_deleted, "seconds": round(info.seconds, 4)}

    @app.post("/compact", dependencies=auth, responses=writes)
    async def compact(req: CompactRequest | None = None) -> CompactAnswer:
        retrain = req.retrain if req is not None else False
        info = await service.write(lambda: service.index.compact(retrain=retrain, progress=False))
        return {"generation": info.generation, "removed": info.docs_deleted, "seconds": round(info.seconds, 3)}

    app.add_middleware(_BodyLimit, limit=max_body_bytes)
    return app


def serve(
    index_path: str | os.PathLike, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info", **options
) -> None:
    """Run :func:`create_app` under uvicorn (one process; searches in its thread pool)."""
    import uvicorn

    uvicorn.run(create_app(index_path, **options), host=host, port=port, log_level=log_level)
