"""The hand-written part of billd-client: transport, retries, idempotency
keys and errors. The generated `_client.py` calls `_request` once per
operation."""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from typing import Any, Callable, Literal, Mapping, TypeVar
from urllib.parse import quote as _quote

import httpx

__all__ = ["AsyncCore", "BilldError", "SyncCore", "quote"]

# Safe to send again after a lost connection: they change nothing, or change
# it to the same thing (PUT, DELETE), or carry an idempotency key.
_IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE"})
_RETRIED_STATUS = 503

KeyPlace = Literal["body", "header"]
_Sync = TypeVar("_Sync", bound="SyncCore")
_Async = TypeVar("_Async", bound="AsyncCore")


def quote(segment: str) -> str:
    """A path segment, percent-encoded (`/` included)."""
    return _quote(segment, safe="")


class BilldError(Exception):
    """An answer of billd that is not a 2xx: `{"error":{"code","message",…}}`.

    `code` is billd's stable snake_case code (`quota_exceeded`, `no_access`,
    `customer_not_found`, … — the HTTP API reference lists them per route),
    or `unexpected_response` when the body was not billd's error. `details`
    holds the error's other fields: `quota_exceeded` carries `feature`,
    `limit`, `used`, `remaining` and `requested`; `no_access` carries
    `access`.
    """

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: dict[str, Any],
        headers: httpx.Headers,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details
        self.headers = headers

    def __repr__(self) -> str:
        return f"BilldError(status={self.status}, code={self.code!r}, message={self.message!r})"

    def __str__(self) -> str:
        return f"{self.status} {self.code}: {self.message}"


def _error_of(response: httpx.Response) -> BilldError:
    try:
        parsed = response.json()
    except ValueError:
        parsed = None
    error = parsed.get("error") if isinstance(parsed, dict) else None
    if isinstance(error, dict) and isinstance(error.get("code"), str):
        details = {k: v for k, v in error.items() if k not in ("code", "message")}
        return BilldError(
            response.status_code, error["code"], str(error.get("message", "")), details, response.headers
        )
    # Not billd's answer (a proxy's page, say): the status is all there is.
    return BilldError(
        response.status_code, "unexpected_response", response.text[:200], {}, response.headers
    )


def _retry_after(response: httpx.Response) -> float | None:
    """Seconds of a `Retry-After` header (only the delta form billd sends)."""
    value = response.headers.get("retry-after", "").strip()
    return float(value) if value.isdigit() else None


class _Base:
    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        max_retries: int = 3,
        retry_base_delay: float = 0.25,
        retry_max_delay: float = 8.0,
        timeout: float = 30.0,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self._base_url = base_url.rstrip("/")
        self._api_key = api_key
        self.max_retries = max_retries
        self.retry_base_delay = retry_base_delay
        self.retry_max_delay = retry_max_delay
        self._timeout = timeout
        self._headers = dict(headers or {})
        # Seconds to wait before retry number `attempt` (0-based), given a
        # suggested delay (`Retry-After`): exponential with full jitter.
        self.backoff: Callable[[int, float | None], float] = self._backoff

    def _backoff(self, attempt: int, suggested: float | None) -> float:
        if suggested is not None:
            return min(suggested, self.retry_max_delay)
        return random.uniform(0, min(self.retry_max_delay, self.retry_base_delay * 2**attempt))

    def _prepare(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None,
        query: dict[str, Any] | None,
        key: tuple[KeyPlace, str | None] | None,
    ) -> tuple[httpx.Request, bool]:
        """The request every attempt sends, and whether a lost connection
        may be retried."""
        headers = {
            **self._headers,
            "Authorization": f"Bearer {self._api_key}",
            "Accept": "application/json",
        }
        params = {
            name: _query_value(value) for name, value in (query or {}).items() if value is not None
        }
        content = None
        if body is not None:
            body = {k: v for k, v in body.items() if v is not None}
        if key is not None:
            # One key per call, the same on every retry: billd answers a
            # repeat with the first answer and counts nothing twice.
            place, given = key
            chosen = given if given is not None else str(uuid.uuid4())
            if place == "body":
                body = {**(body or {}), "idempotency_key": chosen}
            else:
                headers["Idempotency-Key"] = chosen
        if body is not None:
            content = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        request = httpx.Request(
            method, self._base_url + path, params=params, headers=headers, content=content
        )
        return request, key is not None or method in _IDEMPOTENT_METHODS

    def _answer(self, response: httpx.Response) -> Any:
        if response.is_success:
            return response.json() if response.content else {}
        raise _error_of(response)


def _query_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


class SyncCore(_Base):
    """The synchronous transport: an `httpx.Client` of its own, or yours."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        http_client: httpx.Client | None = None,
        max_retries: int = 3,
        retry_base_delay: float = 0.25,
        retry_max_delay: float = 8.0,
        timeout: float = 30.0,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(
            base_url,
            api_key,
            max_retries=max_retries,
            retry_base_delay=retry_base_delay,
            retry_max_delay=retry_max_delay,
            timeout=timeout,
            headers=headers,
        )
        self._owned = http_client is None
        self._http = http_client if http_client is not None else httpx.Client(timeout=timeout)
        self.sleep: Callable[[float], None] = time.sleep

    def close(self) -> None:
        """Closes the HTTP client, unless it was passed in."""
        if self._owned:
            self._http.close()

    def __enter__(self: _Sync) -> _Sync:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(
        self,
        method: str,
        path: str,
        *,
        body: dict[str, Any] | None = None,
        query: dict[str, Any] | None = None,
        key: tuple[KeyPlace, str | None] | None = None,
    ) -> Any:
        request, retry_connections = self._prepare(method, path, body, query, key)
        attempt = 0
        while True:
            try:
                response = self._http.send(request)
            except httpx.TransportError:
                if not retry_connections or attempt >= self.max_retries:
                    raise
                self.sleep(self.backoff(attempt, None))
                attempt += 1
                continue
            if response.status_code == _RETRIED_STATUS and attempt < self.max_retries:
                response.close()
                self.sleep(self.backoff(attempt, _retry_after(response)))
                attempt += 1
                continue
            return self._answer(response)


class AsyncCore(_Base):
    """The asynchronous transport: an `httpx.AsyncClient` of its own, or yours."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        http_client: httpx.AsyncClient | None = None,
        max_retries: int = 3,
        retry_base_delay: float = 0.25,
        retry_max_delay: float = 8.0,
        timeout: float = 30.0,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(
            base_url,
            api_key,
            max_retries=max_retries,
            retry_base_delay=retry_base_delay,
            retry_max_delay=retry_max_delay,
            timeout=timeout,
            headers=headers,
        )
        self._owned = http_client is None
        self._http = http_client if http_client is not None else httpx.AsyncClient(timeout=timeout)
        self.sleep: Callable[[float], Any] = asyncio.sleep

    async def aclose(self) -> None:
        """Closes the HTTP client, unless it was passed in."""
        if self._owned:
            await self._http.aclose()

    async def __aenter__(self: _Async) -> _Async:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _request(
        self,
        method: str,
        path: str,
        *,
        body: dict[str, Any] | None = None,
        query: dict[str, Any] | None = None,
        key: tuple[KeyPlace, str | None] | None = None,
    ) -> Any:
        request, retry_connections = self._prepare(method, path, body, query, key)
        attempt = 0
        while True:
            try:
                response = await self._http.send(request)
            except httpx.TransportError:
                if not retry_connections or attempt >= self.max_retries:
                    raise
                await self.sleep(self.backoff(attempt, None))
                attempt += 1
                continue
            if response.status_code == _RETRIED_STATUS and attempt < self.max_retries:
                await response.aclose()
                await self.sleep(self.backoff(attempt, _retry_after(response)))
                attempt += 1
                continue
            return self._answer(response)
