/**
 * Requests held back, unsent, while a connection is wedged: its oldest request timed out
 * and is still unanswered (the server frozen, or far behind, with the connection up).
 *
 * Timed-out requests stay queued on their connection (a later write of a page must not
 * overtake an older one still in a frozen server's socket buffer). Writing more behind
 * them would only grow the socket's buffer: the pager retries a failed 256-page batch
 * (about 1 MiB) every few seconds, without bound while the server stays frozen. Held
 * requests are sent, in order, once the wedged ones are answered (a server that resumes
 * answers its backlog in milliseconds); one that is still held at its time-out fails
 * unsent. What is held is bounded by the callers waiting, each for one time-out.
 */
import { unavailable } from './errors.ts';

export class HeldRequests {
  private held: { send: (msLeft: number) => void; fail: (e: Error) => void; deadline: number; timer: NodeJS.Timeout }[] = [];

  get size(): number { return this.held.length; }

  /**
   * Hold a request to server `where`: `send(msLeft)` writes it (with what is left of its
   * time-out) when released; `fail` rejects it on time-out or when the connection is
   * dropped.
   */
  hold(where: string, timeoutMs: number, send: (msLeft: number) => void, fail: (e: Error) => void): void {
    const entry = {
      send, fail, deadline: Date.now() + timeoutMs,
      timer: setTimeout(() => {
        this.held = this.held.filter((h) => h !== entry);
        fail(unavailable(`${where} did not answer within ${timeoutMs} ms (still answering older requests; this one was not sent)`));
      }, timeoutMs),
    };
    this.held.push(entry);
  }

  /** The connection answers again: send every held request, in order. */
  release(): void {
    const go = this.held;
    this.held = [];
    for (const h of go) {
      clearTimeout(h.timer);
      h.send(Math.max(1, h.deadline - Date.now()));
    }
  }

  /** The connection is gone: fail every held request. */
  failAll(e: Error): void {
    const go = this.held;
    this.held = [];
    for (const h of go) {
      clearTimeout(h.timer);
      h.fail(e);
    }
  }
}
