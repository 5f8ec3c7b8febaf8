"""A Python client for ``colbert-index serve`` (:mod:`colbert_index.server`), on httpx (``pip install -e ".[client]"``).

::

    from colbert_index.client import Client

    with Client("http://127.0.0.1:8000", api_key="secret") as client:
        res = client.search(Q, k=10, filter={"lang": "en"})  # Q: [q_len, dim]; res.ids, res.scores: [1, k]
        res = client.search_batch([Q1, Q2], k=10)  # [2, k]
        client.add([doc], ["doc-1"], metadata=[{"lang": "en"}])
        client.delete(["doc-1"])

Numpy arrays (or torch tensors) go in; searches come back as :class:`RemoteSearchResult`, a
:class:`colbert_index.SearchResult` (``ids``, ``scores``: ``[n_q, k]``) that also carries the metadata and the
index generation. Writes, ``stats`` and ``health`` return the server's JSON answer as a dict. An error answer
raises a :class:`ClientError` subclass carrying the server's ``detail``; a server that cannot be reached raises
:class:`ServerUnreachableError`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

try:
    import httpx
except ImportError as e:  # pragma: no cover - the extra is missing
    raise ImportError(f'the client needs httpx: pip install -e ".[client]" ({e})') from e

from colbert_index.search import SearchParams, SearchResult

__all__ = [
    "AuthError",
    "Client",
    "ClientError",
    "ConflictError",
    "NotFoundError",
    "PayloadTooLargeError",
    "RemoteSearchResult",
    "ServerError",
    "ServerUnreachableError",
    "ValidationError",
]


class ClientError(Exception):
    """An error answer from the server (``status``: its HTTP status, ``detail``: its message), or no answer."""

    def __init__(self, detail: str, status: int | None = None) -> None:
        super().__init__(detail if status is None else f"{status}: {detail}")
        self.detail, self.status = detail, status


class AuthError(ClientError):
    """401: the API key is missing or wrong."""


class NotFoundError(ClientError):
    """404: ids not in the index (a delete without ``missing_ok``), or an unknown endpoint."""


class ConflictError(ClientError):
    """409: another writer holds the index's lock."""


class PayloadTooLargeError(ClientError):
    """413: the request body is over the server's ``--max-body-mb``."""


class ValidationError(ClientError):
    """422 (400 for malformed JSON): a field failed validation; ``detail`` names it."""


class ServerError(ClientError):
    """5xx: the server failed (500: the index on disk is damaged)."""


class ServerUnreachableError(ClientError):
    """No answer: nothing listens at the URL, the connection broke, or the timeout passed."""


_ERRORS: dict[int, type[ClientError]] = {
    400: ValidationError,
    401: AuthError,
    404: NotFoundError,
    409: ConflictError,
    413: PayloadTooLargeError,
    422: ValidationError,
}


@dataclass
class RemoteSearchResult(SearchResult):
    """A :class:`colbert_index.SearchResult` from the server: ``ids`` (int64, or object for string ids) and
    ``scores`` (float32), ``[n_q, k]`` best first; ``metadata`` (``[n_q][k]`` dicts or ``None``, when asked for
    with ``include_metadata``) and the ``generation`` of the index version that answered."""

    metadata: list[list[dict | None]] | None = None
    generation: int | None = None


def _rows(x: Any, what: str) -> list[list[float]]:
    """A 2-D float array (numpy, torch or nested lists) as JSON rows."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().float().numpy()
    a = np.asarray(x)
    if a.dtype.kind not in "fiu" or a.dtype == np.bool_ or a.ndim != 2:
        raise ValueError(f"{what}: expected a 2-D [tokens, dim] float array, got dtype {a.dtype}, shape {a.shape}")
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        raise ValueError(f"{what}: contains NaN or inf")
    return a.astype(np.float64).tolist()  # float32 -> float64 is exact; JSON gets the float32 values


def _queries(queries: Any) -> list[list[list[float]]]:
    if hasattr(queries, "detach"):
        queries = queries.detach().cpu().float().numpy()
    if isinstance(queries, np.ndarray):
        if queries.ndim != 3:
            raise ValueError(f"queries: expected [n_q, q_len, dim] or a list of [q_len, dim], got {queries.shape}")
        queries = list(queries)
    return [_rows(q, f"queries[{i}]") for i, q in enumerate(queries)]


def _jsonable_ids(ids: Any) -> list:
    """Ids (one or a sequence; numpy integers become int) as a JSON list."""
    if isinstance(ids, (str, int, np.integer)):
        ids = [ids]
    return [i if isinstance(i, str) else int(i) for i in (ids.tolist() if isinstance(ids, np.ndarray) else ids)]


def _filter(flt: Any) -> Any:
    if flt is None or isinstance(flt, dict):
        return flt
    return _jsonable_ids(flt)


def _params(params: SearchParams | dict | None) -> dict | None:
    if params is None:
        return None
    if isinstance(params, SearchParams):
        params = asdict(params)
    if not isinstance(params, dict):
        raise TypeError(f"params: a SearchParams or a dict, got {type(params).__name__}")
    return {name: value for name, value in params.items() if value is not None}


class Client:
    """A connection to ``colbert-index serve`` at ``url`` (``http://host:port``).

    Args:
        api_key: sent as ``Authorization: Bearer KEY`` (the server's ``--api-key``).
        timeout: seconds to wait for the connection and for each answer.

    Use as a context manager, or call :meth:`close`.
    """

    def __init__(self, url: str, api_key: str | None = None, timeout: float = 60.0) -> None:
        if api_key is not None and not api_key:
            raise ValueError("api_key must not be empty (leave it None for a server without a key)")
        self.url = url.rstrip("/")
        headers = {} if api_key is None else {"Authorization": f"Bearer {api_key}"}
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client({self.url!r})"

    # ------------------------------------------------------------------ transport
    def _request(self, method: str, path: str, body: dict | None = None) -> Any:
        try:
            r = self._http.request(method, path, json=body)
        except httpx.TimeoutException as e:
            raise ServerUnreachableError(f"no answer from {self.url}{path} within the timeout ({e!r})") from e
        except httpx.TransportError as e:
            raise ServerUnreachableError(
                f"cannot reach the colbert_index server at {self.url} ({e}); is `colbert-index serve` running there?"
            ) from e
        if r.status_code >= 400:
            try:
                detail = r.json().get("detail", r.text)
            except ValueError:
                detail = r.text
            error = _ERRORS.get(r.status_code, ServerError if r.status_code >= 500 else ClientError)
            raise error(str(detail), r.status_code)
        try:
            return r.json()
        except ValueError as e:
            raise ClientError(f"{self.url}{path} answered {r.status_code} without JSON: {r.text[:200]!r}") from e

    # ------------------------------------------------------------------ reads
    def health(self) -> dict:
        """``{"status": "ok", "generation": g}`` (never needs the key)."""
        return self._request("GET", "/health")

    def stats(self) -> dict:
        """``docs``, ``tokens``, ``bytes``, ``segments``, ``deleted``, ``generation``, ``dim``, ``nbits``,
        ``n_centroids``, ``model``, ``warmup_s``."""
        return self._request("GET", "/stats")

    def search(
        self,
        query: Any = None,
        k: int = 10,
        *,
        text: str | None = None,
        text_query: str | None = None,
        hybrid: bool = False,
        filter: dict | Sequence | None = None,
        params: SearchParams | dict | None = None,
        include_metadata: bool = False,
        **lexical: Any,
    ) -> RemoteSearchResult:
        """Top-``k`` documents for one query: ``query`` (``[q_len, dim]`` embeddings) or ``text`` (the server needs
        ``--model``), and/or ``text_query`` (BM25 over the stored texts; with a dense query, fused). ``hybrid``: the
        ``text`` is searched by BM25 too and fused. ``filter``: a list of allowed ids or a metadata filter;
        ``params``: a :class:`colbert_index.SearchParams` or a dict of its fields; ``lexical``: ``text_mode``
        (``"any"``, ``"all"``, ``"fts5"``), ``fusion`` (``"rrf"``, ``"relative"``), ``alpha``, ``fusion_depth``, as
        ``Index.search`` takes them. The result has one row."""
        if query is not None and text is not None:
            raise ValueError("give query (embeddings) or text, not both")
        if query is None and text is None and text_query is None:
            raise ValueError("give query (embeddings), text or text_query")
        body = self._options(k, filter, params, include_metadata, hybrid, lexical)
        if query is not None:
            body["query"] = _rows(query, "query (one [q_len, dim] query; search_batch takes several)")
        if text is not None:
            body["text"] = text
        if text_query is not None:
            body["text_query"] = text_query
        answer = self._request("POST", "/search", body)
        return self._result([answer["results"]], answer["generation"], include_metadata)

    def search_batch(
        self,
        queries: Any = None,
        k: int = 10,
        *,
        texts: Sequence[str] | None = None,
        text_queries: Sequence[str] | None = None,
        hybrid: bool = False,
        filter: dict | Sequence | None = None,
        params: SearchParams | dict | None = None,
        include_metadata: bool = False,
        **lexical: Any,
    ) -> RemoteSearchResult:
        """Top-``k`` documents for each of several queries, all with the same options: ``queries`` (a list of
        ``[q_len_i, dim]`` arrays or a ``[n_q, q_len, dim]`` array) or ``texts``, and/or ``text_queries`` (BM25,
        one per query); ``hybrid`` and ``lexical`` as in :meth:`search`. One row per query."""
        if queries is not None and texts is not None:
            raise ValueError("give queries (embeddings) or texts, not both")
        if queries is None and texts is None and text_queries is None:
            raise ValueError("give queries (embeddings), texts or text_queries")
        body = self._options(k, filter, params, include_metadata, hybrid, lexical)
        if queries is not None:
            body["queries"] = _queries(queries)
        for name, values in (("texts", texts), ("text_queries", text_queries)):
            if values is not None:
                if isinstance(values, str):
                    raise TypeError(f"{name}: a list of strings (search takes one)")
                body[name] = list(values)
        answer = self._request("POST", "/search/batch", body)
        return self._result(answer["results"], answer["generation"], include_metadata)

    @staticmethod
    def _options(k: int, flt, params, include_metadata: bool, hybrid: bool, lexical: dict) -> dict:
        unknown = set(lexical) - {"text_mode", "fusion", "alpha", "fusion_depth"}
        if unknown:
            raise TypeError(f"unknown search options: {sorted(unknown)}")
        body: dict[str, Any] = {"k": k, "include_metadata": include_metadata, **lexical}
        if hybrid:
            body["hybrid"] = True
        if flt is not None:
            body["filter"] = _filter(flt)
        if params is not None:
            body["params"] = _params(params)
        return body

    @staticmethod
    def _result(rows: list[list[dict]], generation: int, include_metadata: bool) -> RemoteSearchResult:
        """Rows of hits as arrays; a row shorter than the longest (fewer matches) is padded with score ``-inf``
        and id ``-1`` (integer ids) or ``None`` (string ids), as ``Index.search`` pads its rows."""
        string_ids = any(isinstance(h["id"], str) for row in rows for h in row)
        width = max((len(row) for row in rows), default=0)
        ids = np.full((len(rows), width), None if string_ids else -1, dtype=object if string_ids else np.int64)
        scores = np.full((len(rows), width), -np.inf, dtype=np.float32)
        for i, row in enumerate(rows):
            for j, h in enumerate(row):
                ids[i, j], scores[i, j] = h["id"], h["score"]
        metadata = [[h.get("metadata") for h in row] for row in rows] if include_metadata else None
        return RemoteSearchResult(ids=ids, scores=scores, metadata=metadata, generation=generation)

    # ------------------------------------------------------------------ writes
    def _documents(self, path: str, doc_embeddings, doc_ids, texts, metadata) -> dict:
        if doc_embeddings is None and texts is None:
            raise ValueError("give doc_embeddings, texts, or both (the embeddings indexed, the texts stored)")
        if isinstance(texts, str):
            raise TypeError("texts: a list of strings")
        if doc_embeddings is not None:
            if isinstance(doc_embeddings, np.ndarray) or hasattr(doc_embeddings, "detach"):
                raise ValueError("doc_embeddings: a list of [n_tokens, dim] arrays, one per document")
            docs = [{"embeddings": _rows(d, f"doc_embeddings[{i}]")} for i, d in enumerate(doc_embeddings)]
            if texts is not None:
                if len(texts) != len(docs):
                    raise ValueError(f"{len(texts)} texts for {len(docs)} documents")
                for d, t in zip(docs, texts):
                    d["text"] = t
        else:
            docs = [{"text": t} for t in texts]
        if doc_ids is not None:
            ids = _jsonable_ids(doc_ids)
            if len(ids) != len(docs):
                raise ValueError(f"{len(ids)} doc_ids for {len(docs)} documents")
            for d, i in zip(docs, ids):
                d["id"] = i
        if metadata is not None:
            if len(metadata) != len(docs):
                raise ValueError(f"{len(metadata)} metadata entries for {len(docs)} documents")
            for d, m in zip(docs, metadata):
                if m is not None:
                    d["metadata"] = m
        return self._request("POST", path, {"documents": docs})

    def add(
        self,
        doc_embeddings: Sequence[Any] | None = None,
        doc_ids: Sequence | None = None,
        *,
        texts: Sequence[str] | None = None,
        metadata: Sequence[dict | None] | None = None,
    ) -> dict:
        """Add documents in one commit: ``doc_embeddings`` (a list of ``[n_tokens, dim]`` arrays) or ``texts`` (the
        server needs ``--model``), or both (the embeddings are indexed and the texts stored for BM25), ids (needed
        for string-id indexes; an integer-id index hands out the next ones when none are given) and optional
        metadata. Returns ``generation``, ``added``, ``replaced``, ``tokens``,
        ``seconds``. Ids already in the index: :class:`ValidationError` (use :meth:`upsert`)."""
        return self._documents("/documents", doc_embeddings, doc_ids, texts, metadata)

    def upsert(
        self,
        doc_embeddings: Sequence[Any] | None = None,
        doc_ids: Sequence | None = None,
        *,
        texts: Sequence[str] | None = None,
        metadata: Sequence[dict | None] | None = None,
    ) -> dict:
        """Add documents, replacing those with the same ids, in one commit (every id needed); returns what
        :meth:`add` returns, ``replaced`` counting the replaced documents."""
        if doc_ids is None:
            raise ValueError("upsert needs doc_ids")
        return self._documents("/documents/upsert", doc_embeddings, doc_ids, texts, metadata)

    def delete(self, doc_ids: Any = None, *, filter: dict | None = None, missing_ok: bool = False) -> dict:
        """Delete documents by id (one or a list) or every document a metadata ``filter`` matches; returns
        ``generation``, ``deleted``, ``seconds``. Ids not in the index raise :class:`NotFoundError` naming them,
        unless ``missing_ok``."""
        if (doc_ids is None) == (filter is None):
            raise ValueError("give doc_ids or filter (a metadata filter), not both")
        if filter is not None:
            return self._request("POST", "/documents/delete", {"filter": _filter(filter)})
        return self._request("POST", "/documents/delete", {"ids": _jsonable_ids(doc_ids), "missing_ok": missing_ok})

    def compact(self, *, retrain: bool = False) -> dict:
        """Merge the segments and drop deleted documents; returns ``generation``, ``removed``, ``seconds``."""
        return self._request("POST", "/compact", {"retrain": retrain})
