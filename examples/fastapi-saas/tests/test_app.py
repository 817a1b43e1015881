"""SiteSmith against a dev-mode billd and its Stripe emulator (started by
crates/billd/tests/billd/clients.rs, which passes BILLD_URL, BILLD_API_KEY
and BILLD_SIM_URL): a user signs up, hits the free plan's limits, upgrades
through Checkout, manages billing and deletes the account."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

import app as sitesmith


@pytest.fixture
def client() -> Iterator[TestClient]:
    for name in ("BILLD_URL", "BILLD_API_KEY", "BILLD_SIM_URL"):
        if not os.environ.get(name):
            pytest.fail(f"{name} is not set: run this through cargo test -p billd --test billd clients::")
    with TestClient(sitesmith.app, follow_redirects=False) as client:
        yield client


def pay_in_emulator(checkout_url: str) -> str:
    """What the user does on Stripe's Checkout page; the session id."""
    session = checkout_url.rstrip("/").rsplit("/", 1)[1]
    answer = httpx.post(
        f"{os.environ['BILLD_SIM_URL']}/_sim/checkout/sessions/{session}/complete",
        auth=("sk_test_billd_dev", ""),
        data={"payment_method": "pm_card_visa"},
    )
    assert answer.status_code == 200, answer.text
    return session


def test_a_user_from_the_free_plan_through_checkout_to_account_deletion(client: TestClient) -> None:
    assert client.get("/pricing").status_code == 401
    assert client.post("/signup", json={"email": "maker@example.com"}).status_code == 201

    pricing = client.get("/pricing").text
    for plan in ("free", "standard", "pro"):
        assert f"<td>{plan}</td>" in pricing
    assert 'action="/upgrade?plan=standard"' in pricing
    assert "3 generations" in pricing and "1 websites" in pricing

    # The free plan: 3 generations a month, 1 website at a time.
    for i in range(3):
        assert client.post("/generate", json={"prompt": f"bakery {i}"}).status_code == 200
    again = client.post("/generate", json={"prompt": "bakery 0", "request_id": "r0"})
    assert again.status_code == 402
    assert again.json() == {"error": "upgrade_required", "limit": 3, "upgrade": "/pricing"}
    site = client.post("/websites", json={"prompt": "a bakery"}).json()
    assert client.post("/websites", json={"prompt": "a florist"}).status_code == 402
    assert client.delete(f"/websites/{site['id']}").status_code == 200
    assert client.delete(f"/websites/{site['id']}").status_code == 404
    site = client.post("/websites", json={"prompt": "a florist", "request_id": "florist"}).json()
    # A retried creation is counted once.
    assert client.post("/websites", json={"prompt": "a florist", "request_id": "florist"}).status_code == 201

    upgrade = client.post("/upgrade?plan=standard")
    assert upgrade.status_code == 303
    session = pay_in_emulator(upgrade.headers["location"])
    done = client.get(f"/billing/done?session={session}")
    assert (done.status_code, done.headers["location"]) == (303, "/billing")
    billing = client.get("/billing").text
    assert "Plan: standard" in billing
    assert "generations: 0 of 10" in billing
    assert 'action="/billing/cancel"' in billing
    assert client.post("/generate", json={"prompt": "bakery 4"}).status_code == 200

    portal = client.post("/billing/portal")
    assert portal.status_code == 303 and portal.headers["location"].startswith("http")
    assert client.post("/billing/cancel").status_code == 303
    billing = client.get("/billing").text
    assert "ends at the period end" in billing and 'action="/billing/resume"' in billing
    assert client.post("/billing/resume").status_code == 303
    assert "ends at the period end" not in client.get("/billing").text

    assert client.post("/upgrade?plan=pro").headers["location"] == "/billing"
    assert "Plan: pro" in client.get("/billing").text

    deleted = client.post("/account/delete")
    assert deleted.status_code == 200
    assert site["id"] not in sitesmith.websites
    client.cookies.set("user", deleted.json()["deleted"])
    gone = client.get("/billing")
    assert (gone.status_code, gone.json()["error"]) == (404, "customer_deleted")


def test_the_app_is_at_most_150_lines_of_code() -> None:
    lines = Path(sitesmith.__file__).read_text().splitlines()
    code = [l for l in lines if l.strip() and not re.match(r"\s*#", l)]
    assert len(code) <= 150, len(code)
