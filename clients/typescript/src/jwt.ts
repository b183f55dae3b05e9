/**
 * Reads a JWT's expiry. The client only needs to know when to fetch a fresh
 * token; the broker verifies signatures, so nothing here does.
 *
 * @module
 */

/**
 * The `exp` claim of a JWT (seconds since the epoch), or `undefined` when
 * the token is not a JWT or has no numeric `exp` (an API key, for example).
 *
 * @example
 * ```ts
 * jwtExpiry(token); // 1767225600
 * jwtExpiry('not-a-jwt'); // undefined
 * ```
 */
export function jwtExpiry(token: string): number | undefined {
  return jwtClaim(token, 'exp');
}

function decodeBase64Url(text: string): string {
  const base64 = text.replace(/-/g, '+').replace(/_/g, '/');
  const padded = base64 + '='.repeat((4 - (base64.length % 4)) % 4);
  // atob exists in browsers and in Node.js 16+; it yields one char per byte.
  const binary = atob(padded);
  const bytes = Uint8Array.from(binary, (char) => char.charCodeAt(0));
  return new TextDecoder('utf-8', { fatal: true }).decode(bytes);
}

/**
 * How long to wait before fetching a fresh token for a connection that just
 * authenticated with `token`: at 80% of the token's remaining life, but at
 * least `minLeadMs` before it expires, never earlier than half its remaining
 * life (so a very short token cannot cause a tight loop), and never sooner
 * than 1 s. `undefined` when the token has no readable `exp`.
 *
 * The broker has just accepted the token, so it has not expired; if this
 * machine's clock says otherwise it runs ahead, and the token's own lifetime
 * (`exp - iat`) counted from now is used instead.
 *
 * @example
 * ```ts
 * tokenRefreshDelay(tokenExpiringIn60s, Date.now()); // about 48 000
 * ```
 */
export function tokenRefreshDelay(token: string, nowMs: number, minLeadMs = 5_000): number | undefined {
  const exp = jwtExpiry(token);
  if (exp === undefined) return undefined;
  let remaining = exp * 1000 - nowMs;
  if (remaining <= 0) {
    const iat = jwtClaim(token, 'iat');
    remaining = iat !== undefined && iat < exp ? (exp - iat) * 1000 : 0;
  }
  const delay = Math.max(Math.min(remaining * 0.8, remaining - minLeadMs), remaining / 2);
  return Math.max(1_000, Math.round(delay));
}

function jwtClaim(token: string, claim: string): number | undefined {
  const parts = token.split('.');
  if (parts.length !== 3) return undefined;
  try {
    const value = (JSON.parse(decodeBase64Url(parts[1]!)) as Record<string, unknown>)[claim];
    return typeof value === 'number' && Number.isFinite(value) ? value : undefined;
  } catch {
    return undefined;
  }
}
