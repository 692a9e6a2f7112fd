"""The connection cap from the open-file limit, and raising the soft limit at start."""

from __future__ import annotations

import resource

import pytest

from broker.core.errors import ConfigError
from broker.server.fdbudget import (
    CLOSING_HEADROOM,
    FDS_PER_TOKEN_REQUEST,
    MIN_CONNECTIONS,
    connection_cap,
    raise_open_file_limit,
)


@pytest.mark.parametrize(
    ("open_files", "max_connections", "fd_reserve", "requests", "cap"),
    [
        # systemd's default soft limit with the defaults: 1024 - 64 - 2 * 32 - 16
        (1024, 1024, 64, 32, 880),
        # a generous limit: the configured cap is lower
        (524288, 1024, 64, 32, 1024),
        (65536, 50_000, 64, 32, 50_000),
        (65536, 100_000, 64, 32, 65536 - 64 - 64 - 16),
        # more token requests in flight take their share from callers
        (1024, 1024, 64, 200, 1024 - 64 - 400 - 16),
        (1024, 1024, 0, 1, 1024 - 2 - 16),
        # exactly the minimum left
        (64 + 2 * 32 + 16 + MIN_CONNECTIONS, 1024, 64, 32, MIN_CONNECTIONS),
        # no limit at all: the configured cap
        (None, 1024, 64, 32, 1024),
    ],
)
def test_the_cap_is_the_lower_of_the_configured_one_and_what_the_limit_leaves(
    open_files: int | None, max_connections: int, fd_reserve: int, requests: int, cap: int
) -> None:
    assert (
        connection_cap(
            open_files,
            max_connections=max_connections,
            fd_reserve=fd_reserve,
            max_concurrent_requests=requests,
        )
        == cap
    )


@pytest.mark.parametrize("open_files", [0, 64, 150, 64 + 64 + 16 + MIN_CONNECTIONS - 1])
def test_a_limit_that_leaves_too_little_is_a_config_error_naming_the_numbers(
    open_files: int,
) -> None:
    with pytest.raises(ConfigError) as caught:
        connection_cap(open_files, max_connections=1024, fd_reserve=64, max_concurrent_requests=32)
    message = str(caught.value)
    assert message.startswith(f"limits: the open-file limit ({open_files}) leaves ")
    assert f"after {64 + FDS_PER_TOKEN_REQUEST * 32 + CLOSING_HEADROOM} kept" in message
    assert "LimitNOFILE" in message


def test_the_soft_open_file_limit_is_raised_to_the_hard_one() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    lower = min(soft, 256)
    resource.setrlimit(resource.RLIMIT_NOFILE, (lower, hard))
    try:
        in_force = raise_open_file_limit()
        assert resource.getrlimit(resource.RLIMIT_NOFILE) == (hard, hard)
        assert in_force == (None if hard == resource.RLIM_INFINITY else hard)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_limit_that_cannot_be_raised_is_used_as_it_is(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(resource, "getrlimit", lambda _: (1024, resource.RLIM_INFINITY))

    def refuse(resource_id: int, limits: tuple[int, int]) -> None:
        raise ValueError("not allowed to set the resource")

    monkeypatch.setattr(resource, "setrlimit", refuse)
    assert raise_open_file_limit() == 1024
    assert "cannot raise the open-file limit from 1024 to unlimited" in caplog.text
