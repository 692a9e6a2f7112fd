"""One error vocabulary: the codes the broker answers with are ErrorCode, each with the
status STATUS gives it, documented in the README's error table and the OpenAPI document;
every error the broker raises on purpose is a BrokerError."""

from __future__ import annotations

import importlib
import itertools
import pkgutil
import re
from pathlib import Path

import pytest

import broker
from broker.core.errors import (
    STATUS,
    ApiError,
    BrokerError,
    ErrorCode,
    FailureCode,
    FailureKind,
    TokenUnavailableError,
    UnknownProviderError,
    http_layer_code,
)
from broker.web.app import create_app
from broker.web.security import Denied
from tests.support import settings_from

README = Path(__file__).resolve().parent.parent / "README.md"

CODES = frozenset(code.value for code in ErrorCode)

PATTERN = "http_<status>"
"""The README's row for any other refusal of the HTTP layer."""

CONFIG = """
providers:
  idp:
    type: oauth2
    token_url: "http://127.0.0.1:9/oauth/token"
    grant: client_credentials
    client_id: app
    client_secret: app-secret
"""


def readme_error_table(text: str) -> list[tuple[str, str]]:
    """``(status, code)`` for each code of the table after "Errors are JSON" in the
    README's "## HTTP API" section, in order (a row may name several codes)."""
    section = text.split("\n## HTTP API\n", 1)[1].split("\n## ", 1)[0]
    after = section.split("Errors are JSON", 1)[1].splitlines()
    table = itertools.dropwhile(lambda line: not line.startswith("|"), after)
    rows: list[tuple[str, str]] = []
    for line in itertools.takewhile(lambda line: line.startswith("|"), table):
        status, codes, _ = (cell.strip() for cell in line.strip().strip("|").split("|", 2))
        if status in ("status", "---"):
            continue  # the header and its rule
        rows += [(status, code) for code in re.findall(r"`([^`]+)`", codes)]
    return rows


def test_the_readme_table_documents_every_code_with_its_status() -> None:
    rows = readme_error_table(README.read_text(encoding="utf-8"))
    documented = [code for _, code in rows]
    assert len(documented) == len(set(documented)), f"codes listed twice: {documented}"
    assert ("other", PATTERN) in rows
    missing = CODES - set(documented)
    assert not missing, f"codes the broker answers with that README.md does not list: {missing}"
    unknown = set(documented) - CODES - {PATTERN}
    assert not unknown, f"codes README.md lists that ErrorCode lacks: {unknown}"
    wrong = {
        code: (status, STATUS[ErrorCode(code)])
        for status, code in rows
        if code != PATTERN and status != str(STATUS[ErrorCode(code)])
    }
    assert not wrong, f"README status vs STATUS: {wrong}"


def readme_failure_table(text: str) -> dict[str, str]:
    """``{code: kind}`` from the table of the broker's own failure codes in the README's
    "### When things break" (the one whose header is ``| code | kind | when |``)."""
    section = text.split("\n### When things break\n", 1)[1].split("\n## ", 1)[0]
    table = section.split("| code | kind | when |", 1)[1].splitlines()[2:]
    rows: dict[str, str] = {}
    for line in itertools.takewhile(lambda line: line.startswith("|"), table):
        code, kind, _ = (cell.strip() for cell in line.strip().strip("|").split("|", 2))
        rows[code.strip("`")] = kind
    return rows


def test_the_readme_documents_every_failure_code_with_its_kind() -> None:
    """Each FailureCode once, with the kind it is raised with (a code raised with one kind
    only: the kinds are read from the README, and checked against FailureKind's values)."""
    rows = readme_failure_table(README.read_text(encoding="utf-8"))
    assert set(rows) == {code.value for code in FailureCode}
    assert set(rows.values()) <= {kind.value for kind in FailureKind}
    assert rows[FailureCode.STORE_UNAVAILABLE] == FailureKind.TRANSIENT.value


def test_the_openapi_document_lists_every_code() -> None:
    spec = create_app(settings_from(CONFIG)).app.openapi()
    described = spec["components"]["schemas"]["ErrorBody"]["properties"]["error"]["description"]
    listed = described.removeprefix("Stable code:").removesuffix(".").split(",")
    assert {code.strip() for code in listed} == {*ErrorCode, PATTERN}
    # The error answers' descriptions name codes only at the status the table gives them.
    for path, methods in spec["paths"].items():
        for method, operation in methods.items():
            for status, response in operation["responses"].items():
                for code in re.findall(r"`([a-z_]+)`", response["description"]):
                    if code in CODES:
                        assert STATUS[ErrorCode(code)] == int(status), (method, path, code)


def test_every_code_has_an_error_status() -> None:
    assert set(STATUS) == set(ErrorCode)
    assert all(400 <= status < 600 for status in STATUS.values())
    assert all(code.status == STATUS[code] for code in ErrorCode)


@pytest.mark.parametrize(
    ("status", "code"),
    [(404, "not_found"), (405, "method_not_allowed"), (400, "http_400"), (413, "http_413")],
)
def test_the_http_layer_names_its_refusals(status: int, code: str) -> None:
    assert http_layer_code(status) == code


def test_answered_errors_carry_the_status_of_their_code() -> None:
    assert UnknownProviderError("x").status == 404
    assert Denied(ErrorCode.UNAUTHORIZED, "no key", challenge=True).status == 401
    limited = TokenUnavailableError("m", retry_after=1, code=ErrorCode.REFRESH_RATE_LIMITED)
    assert (limited.status, TokenUnavailableError("m", retry_after=1).status) == (429, 503)


NOT_RAISED = {
    # A validator's ValueError for pydantic; ends as a ConfigError.
    "broker.config.problems.FieldProblem",
    "broker.config.overrides._EnvProblem",  # one variable: a ConfigError line
}
"""Exceptions that never leave the module that raises them."""

STANDALONE = ("broker.client", "broker.fakes", "broker.__main__")
"""Modules apart from the broker: an app's client helpers (with their own BrokerError),
the fake identity providers, and the command that would run."""


def test_every_error_the_broker_raises_is_a_broker_error() -> None:
    outside = []
    for info in pkgutil.walk_packages(broker.__path__, "broker."):
        if info.name.startswith(STANDALONE):
            continue
        module = importlib.import_module(info.name)
        for value in vars(module).values():
            if (
                isinstance(value, type)
                and issubclass(value, BaseException)
                and value.__module__ == module.__name__
                and f"{value.__module__}.{value.__qualname__}" not in NOT_RAISED
                and not issubclass(value, BrokerError)
            ):
                outside.append(f"{value.__module__}.{value.__qualname__}")
    assert not outside
    assert issubclass(UnknownProviderError, LookupError)
    assert issubclass(Denied, ApiError)


def test_the_openapi_document_and_the_readme_table_agree() -> None:
    """The document's ErrorCode enum and its statuses are the README's table, row for row;
    the token routes document every status their codes have, and the client key as a
    bearer scheme (optional: without clients no key is needed)."""
    spec = create_app(settings_from(CONFIG)).app.openapi()
    enum = spec["components"]["schemas"]["ErrorCode"]
    documented = {
        code: int(status)
        for status, code in readme_error_table(README.read_text(encoding="utf-8"))
        if code != PATTERN
    }
    assert dict(enum["x-status"]) == documented
    assert set(enum["enum"]) == set(documented)
    token = spec["paths"]["/token/{provider}"]["get"]["responses"]
    for status in ("401", "403", "404", "412", "422", "429", "431", "503"):
        assert status in token, status
    assert set(token["200"]["headers"]) == {"ETag", "Cache-Control", "X-Broker-Refresh-Failed"}
    assert spec["components"]["securitySchemes"]["clientKey"]["scheme"] == "bearer"
    assert spec["security"] == [{}, {"clientKey": []}]
    assert "/metrics" in spec["paths"]
