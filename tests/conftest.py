"""Shared fixtures: privilege checks and network namespaces that clean up after themselves."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from netns import Host, NetNS, delete_leftover_namespaces, require_privilege
from olmproc import OlmProcess, start_up


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Apply the skip-or-fail privilege policy to every test marked ``privileged``."""
    if item.get_closest_marker("privileged") is not None:
        require_privilege()


@pytest.fixture(scope="session", autouse=True)
def _delete_leftover_namespaces() -> Iterator[None]:
    """Session safety net: delete any olmtest-<our pid>-* namespace still present at the end."""
    yield
    delete_leftover_namespaces()


@pytest.fixture
def privileged() -> None:
    """Skip (or fail when CI=true) unless namespaces and TUN devices can be created."""
    require_privilege()


@pytest.fixture
def netns(privileged: None) -> Iterator[NetNS]:
    """A fresh network namespace with lo up, deleted (with its processes) after the test."""
    with NetNS.create() as ns:
        yield ns


@pytest.fixture
def netns_factory(privileged: None) -> Iterator[Callable[[], NetNS]]:
    """A function making more namespaces, all deleted (with their processes) after the test."""
    made: list[NetNS] = []

    def make() -> NetNS:
        ns = NetNS.create()
        made.append(ns)
        return ns

    try:
        yield make
    finally:
        for ns in reversed(made):
            ns.close()


@pytest.fixture
def host() -> Iterator[Host]:
    """Processes started on this machine (its loopback only), stopped after the test."""
    with Host() as here:
        yield here


@pytest.fixture
def olm() -> Iterator[list[OlmProcess]]:
    """The olm processes a test starts; those still running are stopped after it."""
    started: list[OlmProcess] = []
    yield started
    for proc in started:
        if proc.proc.poll() is None:
            proc.stop()


@pytest.fixture
def olm_up(netns: NetNS, olm: list[OlmProcess]) -> Callable[..., OlmProcess]:
    """Start ``olm up --tun olmdns0 --stats ARGS...`` in the test's namespace (stopped after)."""

    def start(*args: str) -> OlmProcess:
        return start_up(netns, olm, "olmdns0", *args)

    return start
