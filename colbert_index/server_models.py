"""The HTTP server's JSON shapes (pydantic; :mod:`colbert_index.server` serves them): request bodies, answers, the
error body, the limits on requests, and the error statuses each endpoint declares in its OpenAPI schema.

Requests are strict: numbers must be JSON numbers (``"5"`` is not a ``k``; ``5.0`` is), vector values within
float16's range (``MAX_VALUE``); unknown fields are refused. Every error answer is an :class:`ErrorResponse`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictStr, model_validator

from colbert_index.search import SearchParams

MAX_K = 1000
MAX_QUERY_TOKENS = 512
MAX_BATCH = 256  # queries in one batch request
MAX_DOCS = 1000  # documents in one add / upsert request
MAX_DOC_TOKENS = 8192
MAX_ROW = 4096  # values in one vector row (it must also have the index's dim)
MAX_TEXT = 100_000  # characters of one text
MAX_IDS = 100_000  # ids in one delete request or id-list filter
MAX_BODY_BYTES = 64 << 20
MAX_VALUE = 65504.0  # |a vector value|: float16's range (an index may keep its vectors as float16); scores stay finite

ROW_MARK = "x-embedding-row"  # in the OpenAPI schema: an embedding row, given the index's dim by pin_row_length


def _integral(value: Any) -> Any:
    """``5.0`` as ``5``: JSON has one kind of number, and JSON Schema's ``integer`` includes 5.0."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


INTEGRAL = BeforeValidator(_integral)  # after the bounds in an Annotated, so the schema keeps them
Id = Annotated[int, Field(ge=-(1 << 63), le=(1 << 63) - 1), INTEGRAL] | StrictStr  # an int64 or a string
Value = Annotated[float, Field(ge=-MAX_VALUE, le=MAX_VALUE)]
Row = Annotated[list[Value], Field(min_length=1, max_length=MAX_ROW, json_schema_extra={ROW_MARK: True})]
Vectors = Annotated[list[Row], Field(min_length=1)]
Text = Annotated[str, Field(min_length=1, max_length=MAX_TEXT)]
Batch = Field(min_length=1, max_length=MAX_BATCH)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)


# ---------------------------------------------------------------------------------------------------- requests
class Params(_Model):
    """:class:`colbert_index.SearchParams`; unset fields follow the defaults for ``k``."""

    nprobe: Annotated[int, Field(ge=1, le=1 << 16), INTEGRAL] | None = None
    ndocs: Annotated[int, Field(ge=1, le=1 << 20), INTEGRAL] | None = None
    centroid_score_threshold: float | None = None
    nbound: Annotated[int, Field(ge=1, le=1 << 20), INTEGRAL] | None = None
    bound_cells: Annotated[int, Field(ge=0, le=1 << 10), INTEGRAL] = 16
    rerank: Annotated[int, Field(ge=0, le=1 << 20), INTEGRAL] | None = None
    agree_cells: Annotated[int, Field(ge=0, le=1 << 10), INTEGRAL] | None = None

    def search_params(self) -> SearchParams:
        """The engine's :class:`colbert_index.SearchParams` (the same field names)."""
        return SearchParams(**self.model_dump())


class _SearchOptions(_Model):
    k: Annotated[int, Field(ge=1, le=MAX_K), INTEGRAL] = 10
    filter: dict[str, Any] | Annotated[list[Id], Field(max_length=MAX_IDS)] | None = None
    params: Params | None = None
    include_metadata: bool = False
    text_mode: Literal["any", "all", "fts5"] = "any"
    fusion: Literal["rrf", "relative"] = "rrf"
    alpha: float = Field(0.5, ge=0.0, le=1.0)
    fusion_depth: Annotated[int, Field(ge=1, le=10 * MAX_K), INTEGRAL] | None = None
    hybrid: bool = False

    def _check(self, dense: tuple, text, text_query, names: tuple[str, str, str]) -> None:
        """One dense kind at most; some query; ``hybrid`` with a text and no separate text query."""
        if all(x is not None for x in dense):
            raise ValueError(f"give {names[0]} (embeddings) or {names[1]}, not both")
        if self.hybrid and (text is None or text_query is not None):
            raise ValueError(f"hybrid: true searches the {names[1]} by BM25 too: give {names[1]}, no {names[2]}")
        if not self.hybrid and all(x is None for x in dense) and text_query is None:
            raise ValueError(f"give {names[0]} (embeddings), {names[1]} (with a model) or {names[2]} (BM25)")

    def lexical(self, text_query) -> dict:
        """The keyword arguments of ``Index.search`` for the text query (none without one)."""
        keys = {"text_mode", "fusion", "alpha", "fusion_depth"}
        return {} if text_query is None else {"text_query": text_query, **self.model_dump(include=keys)}


class SearchRequest(_SearchOptions):
    """One query: ``query`` (token embeddings ``[q_len, dim]``) or ``text`` (needs a model), and/or ``text_query``
    (BM25 over the stored texts; with a dense query, fused)."""

    query: Annotated[Vectors, Field(max_length=MAX_QUERY_TOKENS)] | None = None
    text: Text | None = None
    text_query: Text | None = None

    @model_validator(mode="after")
    def _one_query(self) -> SearchRequest:
        self._check((self.query, self.text), self.text, self.text_query, ("query", "text", "text_query"))
        return self


class BatchSearchRequest(_SearchOptions):
    """Many queries, all with the same options: ``queries`` (embeddings) or ``texts``, and/or ``text_queries``."""

    queries: Annotated[list[Annotated[Vectors, Field(max_length=MAX_QUERY_TOKENS)]], Batch] | None = None
    texts: Annotated[list[Text], Batch] | None = None
    text_queries: Annotated[list[Text], Batch] | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> BatchSearchRequest:
        self._check((self.queries, self.texts), self.texts, self.text_queries, ("queries", "texts", "text_queries"))
        dense = self.queries if self.queries is not None else self.texts
        if dense is not None and self.text_queries is not None and len(dense) != len(self.text_queries):
            raise ValueError(f"text_queries: {len(self.text_queries)} text queries for {len(dense)} queries")
        return self


class Document(_Model):
    """A document to add: ``embeddings`` (``[n_tokens, dim]``) or ``text`` (encoded by the model), or both (the
    embeddings are indexed), an optional ``id`` (required for string-id indexes and upserts) and optional
    ``metadata``. A ``text`` is stored with the document (for lexical search) unless the request says
    ``store_text: false``."""

    id: Id | None = None
    embeddings: Annotated[Vectors, Field(max_length=MAX_DOC_TOKENS)] | None = None
    text: Text | None = None
    metadata: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _some_content(self) -> Document:
        if self.embeddings is None and self.text is None:
            raise ValueError("give embeddings or text (or both: the text is then stored, not encoded)")
        return self


class DocumentsRequest(_Model):
    """Documents to add (``POST /documents``) or upsert (``POST /documents/upsert``)."""

    documents: list[Document] = Field(min_length=1, max_length=MAX_DOCS)
    store_text: bool = True


class DeleteRequest(_Model):
    """``ids`` (``missing_ok``: ignore those not in the index) or a metadata ``filter``."""

    ids: list[Id] | None = Field(None, min_length=1, max_length=MAX_IDS)
    filter: dict[str, Any] | None = None
    missing_ok: bool = False

    @model_validator(mode="after")
    def _ids_or_filter(self) -> DeleteRequest:
        if (self.ids is None) == (self.filter is None):
            raise ValueError("give ids or filter (a metadata filter), not both")
        return self


class CompactRequest(_Model):
    """``retrain``: recompute the centroids and the codec from the live documents."""

    retrain: bool = False


# ----------------------------------------------------------------------------------------------------- answers
class Health(BaseModel):
    """``GET /health``."""

    status: Literal["ok"]
    generation: int


class Stats(BaseModel):
    """``GET /stats``: the index's sizes and shape; ``model``: text queries and documents are accepted;
    ``warmup_s``: how long compiling / loading the search kernels took at start."""

    docs: int
    tokens: int
    bytes: int
    segments: int
    deleted: int
    generation: int
    dim: int
    nbits: int
    n_centroids: int
    model: bool
    warmup_s: float


class Hit(BaseModel):
    """One result: the document's id and score; with ``include_metadata``, its metadata (``null`` without, or for
    a document deleted since the search ran)."""

    id: Id
    score: float
    metadata: dict[str, Any] | None = None


class SearchAnswer(BaseModel):
    """``POST /search``: the hits, best first (a lexical search may find fewer than ``k``)."""

    results: list[Hit]
    generation: int


class BatchSearchAnswer(BaseModel):
    """``POST /search/batch``: one list of hits per query."""

    results: list[list[Hit]]
    generation: int


class AddAnswer(BaseModel):
    """``POST /documents`` and ``/documents/upsert``: ``replaced`` counts the live documents an upsert replaced."""

    generation: int
    added: int
    replaced: int
    tokens: int
    seconds: float


class DeleteAnswer(BaseModel):
    """``POST /documents/delete``."""

    generation: int
    deleted: int
    seconds: float


class CompactAnswer(BaseModel):
    """``POST /compact``: ``removed`` counts the deleted documents dropped from disk."""

    generation: int
    removed: int
    seconds: float


# ------------------------------------------------------------------------------------------------------ errors
class FieldError(BaseModel):
    """One failed check of a request body: where (``["body", "query", "0"]``), what, and pydantic's error type."""

    loc: list[str]
    msg: str
    type: str


class ErrorResponse(BaseModel):
    """Every error answer: ``detail`` names the field or the cause; a 400 or 422 from the request's validation also
    lists each failed check in ``errors``."""

    detail: str
    errors: list[FieldError] | None = Field(None, description="400 and 422 from the request's validation only")


ERRORS = {
    400: "malformed JSON",
    401: "missing or wrong API key",
    404: "ids not in the index",
    409: "another writer holds the index's lock",
    413: "request body larger than the limit",
    422: "a field fails validation, or the index refuses the request's values",
    500: "the index on disk is damaged, or reading or writing it failed",
    507: "no space left on the index's device: the write was not committed",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI ``responses`` of these error statuses: each an :class:`ErrorResponse` (401 with its
    ``WWW-Authenticate`` header)."""
    out: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        out[status] = {"model": ErrorResponse, "description": ERRORS[status]}
        if status == 401:
            out[status]["headers"] = {"WWW-Authenticate": {"schema": {"type": "string"}, "description": "Bearer"}}
    return out


def pin_row_length(schema: Any, dim: int) -> Any:
    """Give every embedding row of an OpenAPI schema the index's ``dim`` (``minItems = maxItems = dim``) in place;
    the server answers any other length with 422 naming the row."""
    if isinstance(schema, dict):
        if schema.pop(ROW_MARK, False):
            schema["minItems"] = schema["maxItems"] = dim
        for value in schema.values():
            pin_row_length(value, dim)
    elif isinstance(schema, list):
        for value in schema:
            pin_row_length(value, dim)
    return schema
