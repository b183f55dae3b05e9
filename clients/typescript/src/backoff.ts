/**
 * Reconnect delays: exponential growth, capped, with random jitter so that
 * many clients dropped at once do not come back at once.
 *
 * @module
 */

/**
 * How reconnect delays grow. Attempt `n` (0 for the first retry) waits a
 * random time in `[base * (1 - jitter), base]`, where
 * `base = min(maxMs, initialMs * multiplier ** n)`.
 *
 * @example
 * ```ts
 * const backoff: BackoffOptions = { initialMs: 250, maxMs: 10_000 };
 * ```
 */
export interface BackoffOptions {
  /** Base delay of the first retry, in ms (default 500). */
  initialMs?: number;
  /** Largest base delay, in ms (default 20 000). */
  maxMs?: number;
  /** Growth factor per attempt (default 2). */
  multiplier?: number;
  /** Share of the base delay that is randomised, 0 to 1 (default 0.5). */
  jitter?: number;
}

/**
 * {@link BackoffOptions} with every field filled in.
 *
 * @example
 * ```ts
 * const policy: BackoffPolicy = backoffPolicy({ initialMs: 250 });
 * ```
 */
export type BackoffPolicy = Required<BackoffOptions>;

/**
 * Fills in the defaults and checks the values.
 *
 * @example
 * ```ts
 * backoffPolicy({ initialMs: 100 }); // { initialMs: 100, maxMs: 20000, multiplier: 2, jitter: 0.5 }
 * ```
 */
export function backoffPolicy(options: BackoffOptions = {}): BackoffPolicy {
  const policy = {
    initialMs: options.initialMs ?? 500,
    maxMs: options.maxMs ?? 20_000,
    multiplier: options.multiplier ?? 2,
    jitter: options.jitter ?? 0.5,
  };
  if (!(policy.initialMs >= 0) || !(policy.maxMs >= policy.initialMs)) {
    throw new RangeError(`backoff needs 0 <= initialMs <= maxMs, got ${policy.initialMs} and ${policy.maxMs}`);
  }
  if (!(policy.multiplier >= 1)) throw new RangeError(`backoff multiplier must be >= 1, got ${policy.multiplier}`);
  if (!(policy.jitter >= 0 && policy.jitter <= 1)) throw new RangeError(`backoff jitter must be in 0..1, got ${policy.jitter}`);
  return policy;
}

/**
 * The delay before retry number `attempt` (0-based), in whole ms.
 *
 * @param random a source of numbers in [0, 1), `Math.random` by default.
 * @example
 * ```ts
 * backoffDelay(backoffPolicy(), 3, () => 0.5); // between 2000 and 4000: 3000
 * ```
 */
export function backoffDelay(policy: BackoffPolicy, attempt: number, random: () => number = Math.random): number {
  const base = Math.min(policy.maxMs, policy.initialMs * policy.multiplier ** attempt);
  return Math.round(base * (1 - policy.jitter * random()));
}
