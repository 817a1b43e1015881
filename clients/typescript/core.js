// The hand-written part of @billd/client: transport, retries, idempotency
// keys and errors. The generated `client.js` calls `request` once per
// operation. No runtime dependencies: the platform's fetch, AbortSignal and
// crypto.randomUUID (Node 18+, browsers, Deno, Bun).

/** An answer of billd that is not a 2xx: `{"error":{"code","message",…}}`. */
export class BilldError extends Error {
  constructor(status, code, message, details, headers) {
    super(message);
    this.name = "BilldError";
    this.status = status;
    this.code = code;
    this.details = details;
    this.headers = headers;
  }
}

const RETRIED_STATUS = 503;
// Safe to send again after a lost connection: they change nothing, or
// change it to the same thing (PUT, DELETE), or carry an idempotency key.
const IDEMPOTENT_METHODS = new Set(["GET", "HEAD", "PUT", "DELETE"]);

function sleep(ms, signal) {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const timer = setTimeout(resolve, ms);
    signal?.addEventListener(
      "abort",
      () => {
        clearTimeout(timer);
        reject(signal.reason);
      },
      { once: true },
    );
  });
}

/** Seconds of a `Retry-After` header (only the delta form billd sends). */
function retryAfterMs(headers) {
  const value = headers.get("retry-after");
  if (value === null || !/^\d+$/.test(value.trim())) return undefined;
  return Number(value.trim()) * 1000;
}

export class BilldCore {
  constructor(options) {
    if (!options || typeof options.baseUrl !== "string" || typeof options.apiKey !== "string") {
      throw new TypeError("new Billd({ baseUrl, apiKey }) needs both");
    }
    this.baseUrl = options.baseUrl.replace(/\/+$/, "");
    this.apiKey = options.apiKey;
    this.fetch = options.fetch ?? globalThis.fetch.bind(globalThis);
    this.maxRetries = options.maxRetries ?? 3;
    this.retryBaseDelayMs = options.retryBaseDelayMs ?? 250;
    this.retryMaxDelayMs = options.retryMaxDelayMs ?? 8000;
    this.timeoutMs = options.timeoutMs ?? 30000;
    this.headers = options.headers ?? {};
  }

  /** The delay before retry number `attempt` (0-based): exponential with full jitter, capped. */
  backoffMs(attempt, suggested) {
    if (suggested !== undefined) return Math.min(suggested, this.retryMaxDelayMs);
    const ceiling = Math.min(this.retryMaxDelayMs, this.retryBaseDelayMs * 2 ** attempt);
    return Math.random() * ceiling;
  }

  async request({ method, path, body, query, key, options = {} }) {
    let url = this.baseUrl + path;
    if (query) {
      const params = new URLSearchParams();
      for (const [name, value] of Object.entries(query)) {
        if (value !== undefined && value !== null) params.append(name, String(value));
      }
      const text = params.toString();
      if (text) url += `?${text}`;
    }
    const headers = {
      ...this.headers,
      ...options.headers,
      Authorization: `Bearer ${this.apiKey}`,
      Accept: "application/json",
    };
    // One key per call, the same on every retry: billd answers a repeat
    // with the first answer and counts nothing twice.
    const idempotencyKey = key ? (options.idempotencyKey ?? globalThis.crypto.randomUUID()) : undefined;
    let payload;
    if (body !== undefined) {
      const sent = key === "body" ? { ...body, idempotency_key: idempotencyKey } : body;
      payload = JSON.stringify(sent);
      headers["Content-Type"] = "application/json";
    }
    if (key === "header") headers["Idempotency-Key"] = idempotencyKey;
    const retriesConnections = key !== undefined || IDEMPOTENT_METHODS.has(method);

    for (let attempt = 0; ; attempt++) {
      const signals = [AbortSignal.timeout(options.timeoutMs ?? this.timeoutMs)];
      if (options.signal) signals.push(options.signal);
      let response;
      try {
        response = await this.fetch(url, {
          method,
          headers,
          body: payload,
          signal: signals.length === 1 ? signals[0] : AbortSignal.any(signals),
        });
      } catch (error) {
        if (options.signal?.aborted || !retriesConnections || attempt >= this.maxRetries) throw error;
        await sleep(this.backoffMs(attempt), options.signal);
        continue;
      }
      if (response.status === RETRIED_STATUS && attempt < this.maxRetries) {
        // Drain the body so the connection can be reused.
        await response.arrayBuffer().catch(() => undefined);
        await sleep(this.backoffMs(attempt, retryAfterMs(response.headers)), options.signal);
        continue;
      }
      const text = await response.text();
      if (response.ok) return text === "" ? {} : JSON.parse(text);
      throw errorOf(response, text);
    }
  }
}

function errorOf(response, text) {
  let parsed;
  try {
    parsed = JSON.parse(text);
  } catch {
    parsed = undefined;
  }
  const error = parsed && typeof parsed === "object" ? parsed.error : undefined;
  if (error && typeof error.code === "string") {
    const { code, message, ...details } = error;
    return new BilldError(response.status, code, String(message ?? ""), details, response.headers);
  }
  // Not billd's answer (a proxy's page, say): the status is all there is.
  return new BilldError(response.status, "unexpected_response", text.slice(0, 200), {}, response.headers);
}
