/**
 * Error helpers of the store layer. Every failure leaves here as the project's one
 * error class (ElasticmemError) with a stable code the pager and the CLI act on:
 *   BAD_STORE_URI      the URI cannot be used; the message names the problem and shows a correct one
 *   BAD_TLS_CA         the TLS CA file (option tlsCaFile) cannot be read or holds no certificate
 *   STORE_UNAVAILABLE  the server cannot be reached or did not answer in time (the pager retries)
 *   STORE_INTEGRITY    a stored page failed its check: never returned to the caller
 *   STORE_FULL         the server refused a write for lack of memory
 *   STORE_ERROR        the server answered with some other error
 *   EM_BAD_ARG         the caller passed bad arguments (nothing was changed)
 */
import { ElasticmemError } from '../native/errors.ts';

export { ElasticmemError };

export function badUri(problem: string, example: string): ElasticmemError {
  return new ElasticmemError(`bad store URI: ${problem}; for example: ${example}`, 'BAD_STORE_URI');
}

export function unavailable(what: string, cause?: unknown): ElasticmemError {
  const why = cause === undefined ? '' : `: ${describe(cause)}`;
  return new ElasticmemError(`store unavailable: ${what}${why}`, 'STORE_UNAVAILABLE');
}

export function integrity(what: string): ElasticmemError {
  return new ElasticmemError(`store integrity check failed: ${what}; the page was not returned`, 'STORE_INTEGRITY');
}

export function badArg(what: string): ElasticmemError {
  return new ElasticmemError(what, 'EM_BAD_ARG');
}

export function describe(e: unknown): string {
  if (e instanceof Error) {
    const code = (e as NodeJS.ErrnoException).code;
    const msg = e.message || e.constructor.name;
    return code && !msg.includes(code) ? `${msg} (${code})` : msg;
  }
  return String(e);
}

/** A promise that rejects with STORE_UNAVAILABLE when it does not settle in `ms`. */
export function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const t = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(unavailable(`${what} did not answer within ${ms} ms`)), ms);
  });
  return Promise.race([p, t]).finally(() => clearTimeout(timer));
}
