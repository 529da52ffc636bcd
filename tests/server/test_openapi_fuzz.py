"""schemathesis against a real server's ``/openapi.json``: no 5xx (but the deliberate 501 of a
missing feature), every answer's status, content type and body as the document states (error
answers in the envelope).

Bounded: a fixed seed, a few examples per operation and generation mode, positive and negative
(the whole run stays under two minutes on two cores). The data-plane operations are pointed at
a real, ready sandbox (its id as ``sandbox_id``) so that commands, uploads, downloads, glob and
grep really run; the control plane's names are fuzzed freely (mostly unknown names, 404).

Left out, because they cannot be fuzzed meaningfully here:

* the WebSockets (``/execute/ws``, ``/tunnel``, service URLs): not in the OpenAPI document, and
  fuzzed by ``test_exec_bad_input.py``;
* the SSE streams (``/execute/stream/start``, ``/execute/stream/resume``): long-lived answers
  that last as long as the command they follow (a fuzzed ``sleep`` or a reader of stdin would
  hold the run for its timeout); ``test_sse_exec.py`` covers their bad input;
* the two aliases of the control plane (``/api/v2/sandboxes``, ``/api/v1/v2/sandboxes``): the
  same routers under another prefix; fuzzing them three times would only triple the time.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, seed, settings
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from hutch import SandboxClient
from tests.conftest import (
    TIME_SCALE,
    Server,
    data_dir_with_busybox,
    remove_all_sandboxes,
    start_server,
    stop_server,
)

pytestmark = pytest.mark.root

SEED = 20261203
#: Examples per operation and generation mode (HUTCH_FUZZ_EXAMPLES for a longer run).
EXAMPLES = int(os.environ.get("HUTCH_FUZZ_EXAMPLES", "10"))
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
#: 501 is not a fault: it is how hutch refuses a feature it does not have (``persistent=false``,
#: memory snapshots, volumes), on purpose and as documented, where a 404 would mislead an SDK.
CONFIG = schemathesis.Config.from_dict(
    {"checks": {"not_a_server_error": {"expected-statuses": ["2XX", "3XX", "4XX", "501"]}}}
)
#: See the module docstring for why each is left out.
EXCLUDED_PATHS = r"^/api/|/execute/stream/"


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory, busybox_tar: Path) -> Iterator[Server]:
    """A server of its own: the fuzzer creates and deletes what it likes."""
    data = data_dir_with_busybox(tmp_path_factory.mktemp("fuzz"), busybox_tar)
    srv = start_server(data)
    try:
        yield srv
    finally:
        stop_server(srv)
        remove_all_sandboxes(data)


@pytest.fixture(scope="module")
def sandbox_id(fuzz_server: Server) -> str:
    """A ready busybox sandbox whose id the data-plane operations get."""
    with fuzz_server.client() as client:
        _ready_sandbox(client)
        sb = client.get_sandbox("fuzz-target")
        assert sb.id is not None
        return sb.id


def _ready_sandbox(client: SandboxClient) -> None:
    client.create_template("fuzz-bb", "local/busybox", cpu="500m", memory="128Mi")
    client.create_sandbox("fuzz-bb", name="fuzz-target")


def _operations(server: Server) -> list[Any]:
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json", config=CONFIG).exclude(
        path_regex=EXCLUDED_PATHS
    )
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) > 20
    return operations


def test_openapi_conformance(fuzz_server: Server, sandbox_id: str) -> None:
    """Fuzzed requests to every documented operation get no 5xx and answers as documented."""
    session = requests.Session()
    headers = {"X-Api-Key": fuzz_server.key}
    timeout = 30 * TIME_SCALE
    failures: list[str] = []
    for operation in _operations(fuzz_server):
        fixed = {"sandbox_id": sandbox_id} if "{sandbox_id}" in operation.path else None
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @seed(SEED)
            @settings(
                max_examples=EXAMPLES,
                deadline=None,
                database=None,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            @given(case=operation.as_strategy(mode, path_parameters=fixed))
            def fuzz(case: schemathesis.Case) -> None:
                case.call_and_validate(
                    base_url=fuzz_server.url,
                    session=session,
                    headers=headers,
                    checks=CHECKS,
                    timeout=timeout,
                )

            try:
                fuzz()
            except Exception as exc:  # every operation's failures at once, not the first only
                failures.append(f"{operation.label} ({mode.value}): {exc}")
    assert fuzz_server.alive()
    assert not failures, "\n\n".join(failures)
