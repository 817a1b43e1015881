// Types of core.js, the hand-written part of @billd/client.

/** An answer of billd that is not a 2xx: `{"error":{"code","message",…}}`. */
export declare class BilldError extends Error {
  /** The HTTP status, e.g. 402. */
  readonly status: number;
  /**
   * billd's stable snake_case code, e.g. `quota_exceeded`, `no_access`,
   * `customer_not_found` (the HTTP API reference lists them per route);
   * `unexpected_response` when the body was not billd's error.
   */
  readonly code: string;
  /**
   * The error's other fields: `quota_exceeded` carries `feature`, `limit`,
   * `used`, `remaining` and `requested`; `no_access` carries `access`.
   */
  readonly details: Record<string, unknown>;
  /** The answer's headers (`Retry-After` on `429 rate_limited`). */
  readonly headers: Headers;
  constructor(status: number, code: string, message: string, details: Record<string, unknown>, headers: Headers);
}

/** How a client reaches billd. */
export interface ClientOptions {
  /** billd's address, e.g. `http://127.0.0.1:8080`. */
  baseUrl: string;
  /** An app key (`BILLD_API_KEYS`) or, for the admin operations, an admin key. */
  apiKey: string;
  /** The fetch to use (default: the platform's). */
  fetch?: typeof globalThis.fetch;
  /** Retries of a `503` (and of a lost connection for idempotent requests); default 3. */
  maxRetries?: number;
  /** The first retry waits up to this, each next one twice as long (full jitter); default 250. */
  retryBaseDelayMs?: number;
  /** No retry waits longer, `Retry-After` included; default 8000. */
  retryMaxDelayMs?: number;
  /** Per attempt; default 30000. */
  timeoutMs?: number;
  /** Extra headers on every request. */
  headers?: Record<string, string>;
}

/** Options of one call. */
export interface RequestOptions {
  /** Aborts the call, retries included. */
  signal?: AbortSignal;
  /** This call's per-attempt timeout. */
  timeoutMs?: number;
  /** Extra headers on this call. */
  headers?: Record<string, string>;
}

/** Options of a call billd deduplicates by idempotency key. */
export interface KeyedRequestOptions extends RequestOptions {
  /**
   * The key (1 to 255 printable ASCII characters; kept 24 hours, per
   * customer). Default: a new random UUID per call. Pass your own (the id
   * of the work being paid for, say) to make repeats of the same work
   * count once across processes.
   */
  idempotencyKey?: string;
}

/** The transport every generated method goes through. */
export declare class BilldCore {
  constructor(options: ClientOptions);
  /** The delay before retry number `attempt` (0-based), in milliseconds. */
  protected backoffMs(attempt: number, suggested?: number): number;
}
