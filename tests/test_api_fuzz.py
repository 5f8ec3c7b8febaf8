"""The HTTP API fuzzed from its own OpenAPI schema (schemathesis) against a real server process with an API key:
every operation, generated valid and invalid bodies (wrong types, huge numbers, wrong dims, empty lists, unicode,
FTS5 syntax); no 5xx, every answer's status, content type, headers and body conform to the schema, invalid bodies
are refused; 401 without the key or with a wrong one. A bounded, seeded run here; ``bench/fuzz_api.py`` sends
thousands of requests."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

httpx = pytest.importorskip("httpx")
schemathesis = pytest.importorskip("schemathesis")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from schemathesis.checks import CHECKS as REGISTERED_CHECKS  # noqa: E402
from schemathesis.checks import load_all_checks  # noqa: E402
from serving import serve, stop  # noqa: E402

from colbert_index import Index  # noqa: E402

KEY = "fuzz-key"
DIM = 8
N_DOCS = 60
EXAMPLES = 20  # per operation and generation mode
WELL_FORMED_EXAMPLES = 16
SEED = 29
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
    "negative_data_rejection",
)


def _checks() -> list:
    """The check functions named in ``CHECKS``."""
    load_all_checks()
    return REGISTERED_CHECKS.get_by_names(CHECKS)


def _build(path) -> None:
    """A small index with metadata, texts (BM25) and kept vectors (the rerank tier), so every path can be hit."""
    rng = np.random.default_rng(0)
    docs = [rng.standard_normal((int(n), DIM)).astype(np.float32) for n in rng.integers(1, 12, size=N_DOCS)]
    meta = [{"lang": ["en", "de"][i % 2], "year": 2000 + i} for i in range(N_DOCS)]
    texts = [f"passage {i} about {['cats', 'ranking', 'pruning'][i % 3]}" for i in range(N_DOCS)]
    ids = [f"d{i}" for i in range(N_DOCS)]
    Index.build(path, docs, doc_ids=ids, metadata=meta, texts=texts, keep_originals=True, progress=False)


@pytest.fixture(scope="module")
def base_url(tmp_path_factory):
    path = tmp_path_factory.mktemp("api") / "index"
    _build(path)
    proc, base = serve(path, "--api-key", KEY, "--max-body-mb", "1")
    yield base
    stop(proc)


@pytest.fixture(scope="module")
def api_schema(base_url):
    config = schemathesis.Config.from_dict(
        {
            "seed": SEED,
            "generation": {"mode": "all", "max-examples": EXAMPLES, "deterministic": True},
            # an invalid request is refused as such: 400 (not JSON), 401 (no key), 413 (over --max-body-mb) or 422
            "checks": {"negative_data_rejection": {"expected-statuses": [400, 401, 413, 422]}},
        }
    )
    return schemathesis.openapi.from_url(f"{base_url}/openapi.json", config=config)


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=EXAMPLES, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_conforms_to_its_schema_and_never_fails_with_5xx(case):
    checks = _checks()
    case.call_and_validate(headers={"Authorization": f"Bearer {KEY}"}, checks=checks, timeout=60)


def _well_formed(route: str, body, serial: int):
    """A generated valid body made to meet what the schema cannot say here (the server has no model and string
    ids; a search needs a query; an added document needs embeddings and a new id); ``None`` if nothing is left."""
    if not isinstance(body, dict):
        return None
    body = dict(body)
    if route == "/search":
        body.pop("text", None)
        body["hybrid"] = False
        if isinstance(body.get("filter"), list):
            body["filter"] = [str(x) for x in body["filter"]]
        return body if body.get("query") is not None or body.get("text_query") is not None else None
    docs = [dict(d, id=f"new-{serial}-{i}") for i, d in enumerate(body["documents"]) if d.get("embeddings")]
    return dict(body, documents=docs) if docs else None


@pytest.mark.parametrize("route", ["/search", "/documents"])
def test_well_formed_requests_reach_the_engine(api_schema, route):
    """Generated searches and adds that the server can serve (generated queries, filters, FTS5 text, embeddings,
    metadata, texts) mostly succeed, and every answer conforms to the schema."""
    statuses = []
    serials = iter(range(1 << 30))

    def repaired(case):
        case.body = _well_formed(route, case.body, next(serials))
        return case

    strategy = api_schema[route]["POST"].as_strategy().map(repaired).filter(lambda case: case.body is not None)

    @settings(
        max_examples=WELL_FORMED_EXAMPLES,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def run(case):
        checks = _checks()
        response = case.call_and_validate(headers={"Authorization": f"Bearer {KEY}"}, checks=checks, timeout=60)
        statuses.append(response.status_code)

    run()
    assert len(statuses) >= WELL_FORMED_EXAMPLES // 2
    assert statuses.count(200) >= len(statuses) // 2, statuses


def test_the_schema_declares_every_error_the_server_sends(base_url):
    """Every operation but /health declares 401; the error bodies are ``ErrorResponse``; rows have the index's dim."""
    spec = httpx.get(f"{base_url}/openapi.json").json()
    operations = [(route, method, op) for route, methods in spec["paths"].items() for method, op in methods.items()]
    assert len(operations) == 8
    for route, method, op in operations:
        declared = set(op["responses"])
        if route == "/health":
            assert declared == {"200"}
            continue
        assert {"200", "401", "500"} <= declared, (method, route)
        if method == "post":
            assert {"400", "413", "422"} <= declared, (method, route)
        for status in declared - {"200"}:
            ref = op["responses"][status]["content"]["application/json"]["schema"]["$ref"]
            assert ref.endswith("/ErrorResponse"), (method, route, status)
    query = spec["components"]["schemas"]["SearchRequest"]["properties"]["query"]["anyOf"][0]
    assert query["items"]["minItems"] == query["items"]["maxItems"] == DIM


def test_every_operation_but_health_needs_the_key(base_url):
    """No key, a wrong key, a bare key or another scheme: 401 on every operation but /health, whatever the body
    (valid, invalid or not JSON at all: nothing about it is answered before the key)."""
    spec = httpx.get(f"{base_url}/openapi.json").json()
    bad = ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}, {"Authorization": f"Basic {KEY}"})
    bodies = ({"json": {}}, {"json": {"k": "x", "query": []}}, {"content": b"{not json"})
    checked = 0
    for route, methods in spec["paths"].items():
        for method in methods:
            for headers, body in itertools.product(bad, bodies):
                r = httpx.request(method, f"{base_url}{route}", headers=headers, timeout=60, **body)
                if route == "/health":
                    assert r.status_code == 200
                    continue
                assert r.status_code == 401, (method, route, headers, body, r.status_code, r.text)
                assert r.headers["WWW-Authenticate"] == "Bearer"
                assert "API key" in r.json()["detail"]
                checked += 1
    assert checked == 4 * 3 * 7
