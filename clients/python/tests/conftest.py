"""The dev-mode billd the flow tests run against: started by
crates/billd/tests/billd/clients.rs, which passes its addresses."""

from __future__ import annotations

import os

import pytest


def _env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        pytest.fail(f"{name} is not set: run this through cargo test -p billd --test billd clients::")
    return value


@pytest.fixture
def billd_url() -> str:
    return _env("BILLD_URL")


@pytest.fixture
def api_key() -> str:
    return _env("BILLD_API_KEY")


@pytest.fixture
def sim_url() -> str:
    return _env("BILLD_SIM_URL")
