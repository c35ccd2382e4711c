/**
 * Start a program that the monitor will ptrace (inject syscalls into) as a grandchild,
 * never as our own child, and talk to it line by line.
 *
 * libuv's SIGCHLD handler calls waitpid() on its own children, and would swallow the
 * ptrace stops of the thread elasticmem injects into and report them as an exit. So a
 * small sh starts the program in the background and waits for it, exactly as QEMU is
 * never the monitor's child either. `exec 3<&0` hands our stdin pipe to the background
 * job (sh gives background jobs /dev/null otherwise).
 *
 * Callers word their own errors (messages), and say which pid the program has once it
 * told them (setPid), so that kill() signals the program and not only its launcher.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';

export interface ExitInfo {
  code: number | null;
  signal: NodeJS.Signals | null;
}

/** The error messages a caller gives the failures of next(). */
export interface GrandchildMessages {
  /** The program exited while a line was awaited. */
  exited(exit: ExitInfo): string;
  /** The launcher could not be spawned. */
  spawnFailed(e: Error): string;
  /** A line was asked for after the program had exited. */
  notRunning(exit: ExitInfo, what: string): string;
  /** No line came within timeoutMs. */
  timeout(what: string, timeoutMs: number): string;
}

export interface GrandchildOptions {
  /** The launcher's $0 (what ps shows for the sh). */
  launcherName: string;
  /** Shell commands the launcher runs before it starts the program (it may `exit N` to refuse). */
  prelude?: string;
  /** Environment of the launcher and the program (default: ours). */
  env?: NodeJS.ProcessEnv;
  messages: GrandchildMessages;
}

export interface Grandchild {
  /** The sh launcher: our child, the program's parent. */
  proc: ChildProcess;
  /** The program's own pid (as it reported it): kill() signals it first. */
  setPid(pid: number): void;
  /** Write one line to the program's stdin. */
  send(line: string): void;
  /** The next stdout line; rejects on timeout or when the program exits first. */
  next(timeoutMs: number, what: string): Promise<string>;
  /** SIGKILL the program (and its launcher if the program never started) and wait until it is gone. Idempotent. */
  kill(): Promise<void>;
  /** Resolves when the launcher has exited (code as a shell reports it: 128+N after signal N). */
  exited: Promise<ExitInfo>;
  /** How the launcher exited, once it has (all stdout lines have been read by then). */
  exitInfo(): ExitInfo | undefined;
  /** Everything the program wrote to stderr so far. */
  stderr(): string;
}

/** Start `argv` as a grandchild under sh, cwd /, with stdin, stdout and stderr as pipes. */
export function spawnGrandchild(argv: string[], o: GrandchildOptions): Grandchild {
  const script = `${o.prelude ?? ''}exec 3<&0; "$@" <&3 3<&- & exec 3<&-; wait $!`;
  const proc = spawn('sh', ['-c', script, o.launcherName, ...argv], { stdio: ['pipe', 'pipe', 'pipe'], cwd: '/', env: o.env });

  let pid = 0; // known once the program said it
  let stderrText = '';
  proc.stderr!.setEncoding('utf8');
  proc.stderr!.on('data', (d: string) => {
    stderrText += d;
  });
  // A write to a dead program's stdin must not become an unhandled 'error': the next read reports it.
  proc.stdin!.on('error', () => {});

  let exitInfo: ExitInfo | undefined;
  // Lines arrive in order; each next() takes the next one.
  const lines: string[] = [];
  let waiter: { resolve: (l: string) => void; reject: (e: Error) => void } | undefined;
  function failPending(e: Error): void {
    const w = waiter;
    waiter = undefined;
    w?.reject(e);
  }
  const exited = new Promise<ExitInfo>((resolve) => {
    // 'close' (not 'exit'): every stdout line has been read by then.
    proc.on('close', (code, signal) => {
      exitInfo = { code, signal };
      failPending(new Error(o.messages.exited(exitInfo)));
      resolve(exitInfo);
    });
    proc.on('error', (e) => {
      exitInfo = { code: null, signal: null };
      failPending(new Error(o.messages.spawnFailed(e)));
      resolve(exitInfo);
    });
  });
  const rl = createInterface({ input: proc.stdout! });
  rl.on('line', (l) => {
    if (waiter) {
      const w = waiter;
      waiter = undefined;
      w.resolve(l);
    } else lines.push(l);
  });

  function next(timeoutMs: number, what: string): Promise<string> {
    if (lines.length) return Promise.resolve(lines.shift()!);
    if (exitInfo) return Promise.reject(new Error(o.messages.notRunning(exitInfo, what)));
    return new Promise<string>((resolve, reject) => {
      const timer = setTimeout(() => {
        waiter = undefined;
        reject(new Error(o.messages.timeout(what, timeoutMs)));
      }, timeoutMs);
      waiter = {
        resolve: (l) => {
          clearTimeout(timer);
          resolve(l);
        },
        reject: (e) => {
          clearTimeout(timer);
          reject(e);
        },
      };
    });
  }

  async function kill(): Promise<void> {
    if (!exitInfo) {
      // The program itself (the launcher then exits with 137); the launcher too if the
      // program never started.
      for (const p of [pid, proc.pid]) {
        if (!p) continue;
        try {
          process.kill(p, 'SIGKILL');
        } catch {
          /* already gone */
        }
        if (p === pid) break;
      }
      await exited;
    }
    rl.close();
  }

  return {
    proc,
    setPid: (p) => {
      pid = p;
    },
    send: (line) => {
      proc.stdin!.write(line + '\n');
    },
    next,
    kill,
    exited,
    exitInfo: () => exitInfo,
    stderr: () => stderrText,
  };
}
