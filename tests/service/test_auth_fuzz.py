"""Bearer auth on /v1/*, and schemathesis-generated requests from the OpenAPI schema: never a 5xx.

The server's Ray has 0 CPUs, so every generated job passes all other admission checks and is then
refused (the cluster cannot hold it): the fuzzing exercises validation without training anything.
"""
from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
import schemathesis
from hes_server import DIGITS_JOB, Server
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

pytestmark = pytest.mark.slow

TOKEN = "test-token-8c1e"
V1 = [("GET", "/v1/jobs"), ("POST", "/v1/jobs"), ("GET", "/v1/jobs/abc"), ("GET", "/v1/jobs/abc/history"),
      ("GET", "/v1/jobs/abc/model"), ("POST", "/v1/jobs/abc/stop"), ("DELETE", "/v1/jobs/abc")]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = Server(tmp_path_factory.mktemp("auth") / "state", HES_API_TOKEN=TOKEN, HES_RAY_NUM_CPUS="0")
    s.start()
    yield s
    s.stop()


def test_v1_needs_the_token_and_the_rest_does_not(server: Server) -> None:
    for token, expect in ((None, 401), ("wrong-token", 401), (TOKEN[:-1], 401), (TOKEN + "x", 401)):
        with server.client(token) as c:
            for method, path in V1:
                r = c.request(method, path, json=DIGITS_JOB if method == "POST" else None)
                assert r.status_code == expect, (token, method, path, r.text)
                assert r.headers["www-authenticate"].startswith("Bearer")
            r = c.post("/v1/jobs", content=b"{not json", headers={"content-type": "application/json"})
            assert r.status_code == 401  # auth comes before the body is read
    with server.client() as c:
        assert c.get("/v1/jobs", headers={"Authorization": f"Basic {TOKEN}"}).status_code == 401
        assert c.get("/healthz").status_code == 200
        assert c.get("/metrics").status_code == 200
        assert c.get("/openapi.json").json()["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    with server.client(TOKEN) as c:
        assert c.get("/v1/jobs").json()["total"] == 0
        assert c.get("/v1/jobs/abc").status_code == 404
        r = c.post("/v1/jobs", json=DIGITS_JOB)
        assert r.status_code == 422 and r.json()["detail"].startswith("cluster.workers"), r.text


def test_generated_requests_never_get_a_5xx(server: Server) -> None:
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    cases = st.one_of(schema.as_strategy(GenerationMode.POSITIVE), schema.as_strategy(GenerationMode.NEGATIVE))
    statuses: list[int] = []
    auth = {"Authorization": f"Bearer {TOKEN}"}

    @settings(max_examples=260, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(case=cases)
    def call(case: schemathesis.Case) -> None:
        response = case.call(base_url=server.url, headers=auth, timeout=60)
        statuses.append(response.status_code)
        assert response.status_code < 500, (case.method, case.formatted_path, case.body, response.text[:500])

    call()
    assert len(statuses) >= 200
    assert any(s == 422 for s in statuses) and any(s == 200 for s in statuses)
    assert httpx.get(f"{server.url}/healthz", timeout=10).status_code == 200


def test_arbitrary_bodies_are_4xx(server: Server) -> None:
    bodies = st.one_of(st.binary(max_size=512), st.text(max_size=256).map(str.encode),
                       st.recursive(st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=20),
                                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
                                        st.sampled_from(["name", "data", "model", "train", "hybrid", "cluster",
                                                         "seed", "x"]), inner, max_size=5), max_leaves=12)
                       .map(lambda doc: json.dumps(doc).encode()))  # NaN and Infinity included
    with server.client(TOKEN) as c:

        @settings(max_examples=80, deadline=None, database=None, phases=[Phase.generate],
                  suppress_health_check=list(HealthCheck))
        @given(body=bodies)
        def post(body: bytes) -> None:
            r = c.post("/v1/jobs", content=body, headers={"content-type": "application/json"})
            assert 400 <= r.status_code < 500, (body, r.status_code, r.text)
            assert r.json()["detail"]

        post()
