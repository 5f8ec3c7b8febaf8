"""Search filters: structured metadata filters compiled to SQL, and the rule that picks how a filtered
search runs (exact scoring of the allowed documents, or the staged search with a wider probe).

A structured filter is a dict of conditions on metadata fields, all of which must hold::

    {"lang": "en", "year": {"$gte": 2020, "$lt": 2025}, "$or": [{"tag": {"$in": ["a", "b"]}}, {"draft": False}]}

A field maps to a value (equality) or to a dict of operators: ``$eq $ne $gt $gte $lt $lte $in``. ``$or`` /
``$and`` take a list of such dicts. Field names are dotted paths of identifiers (``author.name``); values are
strings, numbers, booleans or ``None``. A comparison holds only between values of the same JSON type (a
string never equals or exceeds a number; ``True`` is not ``1``), a document without the field matches only
``$ne`` and ``{"$eq": None}``, and fields holding lists or objects match no comparison.

The compiled SQL contains fixed fragments only: every field path and every value is a bound parameter, and
field names must match :data:`FIELD_PATTERN` besides. Unknown operators, bad field names and bad values raise
``ValueError`` naming them.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace

import numpy as np

from colbert_index.search import SearchParams, final_scores, staged_search
from colbert_index.snapshot import Snapshot, as_id_list
from colbert_index.storage import metadata as meta_files

FIELD_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}(\.[A-Za-z_][A-Za-z0-9_]{0,63}){0,7}")
OPERATORS = ("$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in")
MAX_CONDITIONS = 256  # comparisons in one filter ($in values count one each)
MAX_DEPTH = 8  # nesting of $or / $and
MAX_STRING = 1024  # characters of one string value
_SQL_CMP = {"$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}
_INT64 = 1 << 63

# How a filtered search runs (docs/filters.md; bench/filters.py measures both ways): up to this many tokens in
# the allowed documents (~300 documents of 100 tokens) scoring them all exactly is as fast as the staged search,
# and exact; beyond, the staged search runs on them with the probe widened by 1 / selectivity.
EXACT_MAX_TOKENS = 30_000
MAX_NPROBE_WIDENING = 32


def _type_test(value) -> tuple[str, list]:
    """SQL testing that ``json_type(meta, ?)`` is the JSON type of ``value`` (the ``?`` is bound later)."""
    if isinstance(value, bool):
        return "json_type(meta, ?) = ?", ["true" if value else "false"]
    if isinstance(value, (int, float)):
        return "json_type(meta, ?) IN ('integer', 'real')", []
    return "json_type(meta, ?) = 'text'", []


def _check_value(field: str, op: str, value, comparable: bool = False):
    """A scalar operand: str (bounded), finite float, int within int64, bool, None (equality only)."""
    if value is None:
        if comparable:
            raise ValueError(f"filter field {field!r}: {op} needs a number or a string, got None")
        return None
    if isinstance(value, bool):
        if comparable:
            raise ValueError(f"filter field {field!r}: {op} needs a number or a string, got a boolean")
        return value
    if isinstance(value, int):
        if not -_INT64 <= value < _INT64:
            raise ValueError(f"filter field {field!r}: {op} value {value} is outside the 64-bit integer range")
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"filter field {field!r}: {op} value must be finite, got {value}")
        return value
    if isinstance(value, str):
        if len(value) > MAX_STRING:
            raise ValueError(f"filter field {field!r}: {op} string longer than {MAX_STRING} characters")
        return value
    raise ValueError(
        f"filter field {field!r}: {op} takes a string, number, boolean or null, got {type(value).__name__}"
    )


class _Compiler:
    def __init__(self) -> None:
        self.n_conditions = 0

    def _count(self, n: int = 1) -> None:
        self.n_conditions += n
        if self.n_conditions > MAX_CONDITIONS:
            raise ValueError(f"filter has more than {MAX_CONDITIONS} conditions")

    def equal(self, path: str, value) -> tuple[str, list]:
        """SQL true (1) when the field equals ``value`` (same JSON type), false (0) otherwise, never NULL."""
        self._count()
        if value is None:  # missing or JSON null
            return "COALESCE(json_type(meta, ?), 'null') = 'null'", [path]
        test, extra = _type_test(value)
        if isinstance(value, bool):
            return f"COALESCE({test}, 0)", [path, *extra]
        return f"COALESCE({test} AND json_extract(meta, ?) = ?, 0)", [path, *extra, path, value]

    def field(self, name: str, cond) -> tuple[str, list]:
        if not isinstance(name, str) or not FIELD_PATTERN.fullmatch(name):
            raise ValueError(
                f"invalid filter field name {name!r}: use letters, digits and underscores (dotted for nested "
                "fields), starting with a letter or underscore, or one of $or / $and"
            )
        path = "$." + name
        if not isinstance(cond, dict):
            return self.equal(path, _check_value(name, "$eq", cond))
        if not cond:
            raise ValueError(f"filter field {name!r}: empty condition")
        parts, params = [], []
        for op, value in cond.items():
            if op not in OPERATORS:
                raise ValueError(f"filter field {name!r}: unknown operator {op!r}; use one of {', '.join(OPERATORS)}")
            if op == "$eq":
                sql, p = self.equal(path, _check_value(name, op, value))
            elif op == "$ne":
                sql, p = self.equal(path, _check_value(name, op, value))
                sql = f"NOT {sql}"
            elif op == "$in":
                if not isinstance(value, (list, tuple)) or not value:
                    raise ValueError(f"filter field {name!r}: $in takes a non-empty list of values")
                alts = [self.equal(path, _check_value(name, op, v)) for v in value]
                sql, p = "(" + " OR ".join(s for s, _ in alts) + ")", [x for _, q in alts for x in q]
            else:
                self._count()
                value = _check_value(name, op, value, comparable=True)
                test, extra = _type_test(value)
                sql = f"COALESCE({test} AND json_extract(meta, ?) {_SQL_CMP[op]} ?, 0)"
                p = [path, *extra, path, value]
            parts.append(sql)
            params += p
        return "(" + " AND ".join(parts) + ")", params

    def all_of(self, spec, depth: int) -> tuple[str, list]:
        if depth > MAX_DEPTH:
            raise ValueError(f"filter nests $or / $and deeper than {MAX_DEPTH}")
        if not isinstance(spec, dict):
            raise ValueError(f"a structured filter is a dict of field conditions, got {type(spec).__name__}")
        if not spec:
            return "1", []
        parts, params = [], []
        for key, cond in spec.items():
            if key in ("$or", "$and"):
                if not isinstance(cond, (list, tuple)) or not cond:
                    raise ValueError(f"filter {key} takes a non-empty list of filters")
                subs = [self.all_of(c, depth + 1) for c in cond]
                joiner = " OR " if key == "$or" else " AND "
                sql, p = "(" + joiner.join(s for s, _ in subs) + ")", [x for _, q in subs for x in q]
            elif isinstance(key, str) and key.startswith("$"):
                raise ValueError(f"unknown filter operator {key!r} at the top level; use $or or $and")
            else:
                sql, p = self.field(key, cond)
            parts.append(sql)
            params += p
        return "(" + " AND ".join(parts) + ")", params


def compile_filter(spec: dict) -> tuple[str, tuple]:
    """Compile a structured filter to ``(sql, params)``: an SQL boolean expression over a column ``meta``
    (a document's metadata as JSON text, or NULL) with ``?`` placeholders, and the values to bind to them.

    >>> compile_filter({"lang": "en"})[1]
    ('$.lang', '$.lang', 'en')
    """
    sql, params = _Compiler().all_of(spec, 0)
    return sql, tuple(params)


def is_structured(filter) -> bool:
    """A structured filter (a dict), as opposed to a list of allowed ids."""
    return isinstance(filter, dict)


def allowed(snap: Snapshot, filter: dict | list) -> list[np.ndarray]:
    """bool ``[n_docs]`` per segment: the live documents ``filter`` allows (see :meth:`colbert_index.Index.search`)."""
    segs = snap.segments
    if is_structured(filter):
        sql, params = compile_filter(filter)
        out, without = [], None
        for s in segs:
            if s.meta is None:
                if without is None:
                    without = meta_files.holds_without_metadata(sql, params)
                out.append(np.full(s.n_docs, without) & s.live())
            else:
                out.append(s.meta.matching(sql, params) & s.live())
        return out
    if isinstance(filter, (str, bytes)) or not isinstance(filter, (list, tuple, set, frozenset, np.ndarray)):
        raise TypeError(
            f"filter: a list of allowed ids or a dict of metadata conditions, got {type(filter).__name__}"
        )
    pos = snap.lookup(as_id_list(list(filter), snap.id_type))
    out = [np.zeros(s.n_docs, bool) for s in segs]
    for i, slots in snap.locate(pos[pos >= 0]):
        out[i][slots] = True
    return out


@dataclass(frozen=True)
class FilterPlan:
    """How one filtered search call runs: either ``slots``, the allowed live documents' slots (int32) per
    segment, all scored exactly; or ``excluded`` (bool ``[n_docs]`` per segment: deleted or not allowed) and
    ``params``, the staged search's parameters widened for the filter's selectivity. ``originals``: exact scores
    on the stored vectors where segments keep them (``SearchParams.rerank`` is not 0)."""

    excluded: list[np.ndarray] | None
    slots: list[np.ndarray] | None
    params: SearchParams | None
    n_allowed: int
    selectivity: float
    originals: bool = True


def plan(allowed: list[np.ndarray], doclens: list[np.ndarray], n_live: int, params: SearchParams) -> FilterPlan:
    """Score the allowed documents exactly when they hold at most :data:`EXACT_MAX_TOKENS` tokens; otherwise
    run the staged search on them (the others dropped right after the probe, with the tombstones), its
    ``nprobe`` multiplied by ``1 / selectivity`` (at most :data:`MAX_NPROBE_WIDENING` times): the probed
    cells then hold about as many allowed documents as an unfiltered probe holds documents.
    ``params``: resolved for ``k`` (:meth:`SearchParams.resolved`)."""
    n_allowed = sum(int(np.count_nonzero(a)) for a in allowed)
    selectivity = n_allowed / n_live if n_live else 0.0
    tokens = sum(int(d[a].sum(dtype=np.int64)) for a, d in zip(allowed, doclens))
    if tokens <= EXACT_MAX_TOKENS or not n_allowed:
        slots = [np.flatnonzero(a).astype(np.int32) for a in allowed]
        return FilterPlan(None, slots, None, n_allowed, selectivity, params.uses_originals)
    widen = min(MAX_NPROBE_WIDENING, math.ceil(1.0 / selectivity))
    excluded = [~a for a in allowed]
    return FilterPlan(excluded, None, replace(params, nprobe=int(params.nprobe) * widen), n_allowed, selectivity)


def exact_subset(
    Q: np.ndarray, k: int, datas: list, slots: list[np.ndarray], backend, originals: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Exact MaxSim (the last stage's kernels: the stored vectors where a segment keeps them and ``originals``, else
    decompressed residuals) of one query over the given slots of each segment; returns the top-``k`` ``(scores,
    global positions)``."""
    scores, positions, base = [], [], 0
    for d, s in zip(datas, slots):
        if len(s):
            scores.append(final_scores(Q, d, s, backend, originals))
            positions.append(s.astype(np.int64) + base)
        base += d.n_docs
    if not scores:
        return np.zeros(0, np.float32), np.zeros(0, np.int64)
    return backend.top_k(np.concatenate(scores), np.concatenate(positions), k)


def search_filtered(Q: np.ndarray, k: int, how: FilterPlan, datas: list, backend) -> tuple[np.ndarray, np.ndarray]:
    """One query of a filtered search, as :func:`plan` decided."""
    if how.slots is not None:
        return exact_subset(Q, k, datas, how.slots, backend, how.originals)
    return staged_search(Q, k, how.params, datas, backend, deleted=how.excluded)
