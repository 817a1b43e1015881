"""SiteSmith: an AI website generator whose plans (free, standard, pro)
limit generations per month and websites at a time, billed through billd
with its Python client. Users are identified by a `user` cookie set at
sign-up (a demo: bring your own authentication); websites live in memory."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from html import escape

from fastapi import Cookie, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from pydantic import BaseModel

from billd_client import AsyncBilld, BilldError

APP_URL = os.environ.get("APP_URL", "http://127.0.0.1:8000")
websites: dict[str, dict[str, str]] = {}  # id → owner, prompt, html


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    url = os.environ.get("BILLD_URL", "http://127.0.0.1:8080")
    async with AsyncBilld(url, os.environ["BILLD_API_KEY"]) as client:
        app.state.billd = client
        yield


app = FastAPI(title="SiteSmith", lifespan=lifespan)


def billd(request: Request) -> AsyncBilld:
    client: AsyncBilld = request.app.state.billd
    return client


def signed_in(user: str | None) -> str:
    if not user:
        raise HTTPException(401, "sign up first")
    return user


@app.exception_handler(BilldError)
async def refused(_: Request, error: BilldError) -> JSONResponse:
    if error.code == "quota_exceeded":
        limit = error.details.get("limit")
        return JSONResponse({"error": "upgrade_required", "limit": limit, "upgrade": "/pricing"}, 402)
    if error.status in (403, 404, 409):
        return JSONResponse({"error": error.code, "message": error.message}, error.status)
    return JSONResponse({"error": "billing_unavailable"}, 503)


def page(title: str, body: str) -> HTMLResponse:
    return HTMLResponse(f"<!doctype html><title>{title}</title><h1>{title}</h1>{body}")


def button(action: str, label: str) -> str:
    return f'<form method="post" action="{action}"><button>{escape(label)}</button></form>'


class Signup(BaseModel):
    email: str


class Prompt(BaseModel):
    prompt: str
    request_id: str | None = None  # a retry with the same id is counted once


@app.post("/signup")
async def signup(body: Signup, request: Request) -> JSONResponse:
    user = uuid.uuid4().hex
    await billd(request).put_customer(user, email=body.email)
    answer = JSONResponse({"user": user}, 201)
    answer.set_cookie("user", user, httponly=True, samesite="lax")
    return answer


@app.get("/pricing")
async def pricing(request: Request, user: str | None = Cookie(None)) -> HTMLResponse:
    view = await billd(request).customer_plans(signed_in(user))
    rows = []
    for plan in view["plans"]:
        price = plan["prices"].get(view["currency"], {}).get("month", {}).get("formatted") or "free"
        limits = ", ".join(f"{f['limit']} {name}" for name, f in plan["features"].items())
        choice = next((c["eligibility"] for c in plan["choices"] if c.get("interval") in (None, "month")), "")
        action = button(f"/upgrade?plan={plan['name']}", f"Choose {plan['name']}") if choice in ("upgrade", "downgrade") else choice
        rows.append(f"<tr><td>{plan['name']}</td><td>{price}</td><td>{limits}</td><td>{action}</td></tr>")
    return page("Pricing", f"<table>{''.join(rows)}</table>")


@app.post("/upgrade")
async def upgrade(plan: str, request: Request, user: str | None = Cookie(None)) -> RedirectResponse:
    user = signed_in(user)
    if (await billd(request).get_entitlements(user))["plan"] != "free":
        await billd(request).change_plan(user, plan=plan)
        return RedirectResponse("/billing", 303)
    checkout = await billd(request).create_checkout(
        user, plan=plan, cancel_url=f"{APP_URL}/pricing",
        success_url=f"{APP_URL}/billing/done?session={{CHECKOUT_SESSION_ID}}",
    )
    return RedirectResponse(checkout["url"], 303)


@app.get("/billing/done")
async def checkout_done(session: str, request: Request, user: str | None = Cookie(None)) -> RedirectResponse:
    # Access now, without waiting for Stripe's webhooks.
    await billd(request).sync_checkout(signed_in(user), session_id=session)
    return RedirectResponse("/billing", 303)


@app.get("/billing")
async def billing(request: Request, user: str | None = Cookie(None)) -> HTMLResponse:
    now = await billd(request).get_entitlements(signed_in(user))
    usage = "".join(f"<li>{name}: {f['used']} of {f['limit']}</li>" for name, f in now["features"].items())
    ending = now["cancel_at_period_end"]
    actions = button("/billing/portal", "Invoices and card") + (
        button("/billing/resume", "Keep my plan") if ending else button("/billing/cancel", "Cancel")
    ) if now["plan"] != "free" else button("/pricing", "Upgrade")
    status = " (ends at the period end)" if ending else ""
    return page("Billing", f"<p>Plan: {now['plan']}{status}</p><ul>{usage}</ul>{actions}")


@app.post("/billing/portal")
async def portal(request: Request, user: str | None = Cookie(None)) -> RedirectResponse:
    answer = await billd(request).create_portal(signed_in(user), return_url=f"{APP_URL}/billing")
    return RedirectResponse(answer["url"], 303)


@app.post("/billing/{action}")
async def cancel_or_resume(action: str, request: Request, user: str | None = Cookie(None)) -> RedirectResponse:
    calls = {"cancel": billd(request).cancel_subscription, "resume": billd(request).resume_subscription}
    if action not in calls:
        raise HTTPException(404)
    await calls[action](signed_in(user))
    return RedirectResponse("/billing", 303)


@app.post("/generate")
async def generate(body: Prompt, request: Request, user: str | None = Cookie(None)) -> dict[str, str]:
    key = body.request_id or uuid.uuid4().hex
    await billd(request).consume_usage(signed_in(user), "generations", idempotency_key=f"gen-{key}")
    return {"html": f"<h1>{escape(body.prompt)}</h1><p>Generated by SiteSmith.</p>"}


@app.post("/websites", status_code=201)
async def create_website(body: Prompt, request: Request, user: str | None = Cookie(None)) -> dict[str, str]:
    site = body.request_id or uuid.uuid4().hex
    # Counted before it exists: a website over the plan's limit is never made.
    await billd(request).consume_usage(signed_in(user), "websites", idempotency_key=f"site-{site}")
    websites[site] = {"id": site, "owner": signed_in(user), "prompt": body.prompt}
    return websites[site]


@app.delete("/websites/{site}")
async def delete_website(site: str, request: Request, user: str | None = Cookie(None)) -> dict[str, str]:
    if websites.get(site, {}).get("owner") != signed_in(user):
        raise HTTPException(404)
    await billd(request).release_usage(signed_in(user), "websites", idempotency_key=f"site-{site}-deleted")
    return websites.pop(site)


@app.post("/account/delete")
async def delete_account(request: Request, user: str | None = Cookie(None)) -> JSONResponse:
    user = signed_in(user)
    await billd(request).delete_customer(user)  # cancels at Stripe, erases personal data
    for site in [s for s, w in websites.items() if w["owner"] == user]:
        del websites[site]
    answer = JSONResponse({"deleted": user})
    answer.delete_cookie("user")
    return answer
