/** Running helper programs (virsh) with a timeout, output captured, errors with stderr. */
import { execFile } from 'node:child_process';

export interface ExecResult { stdout: string; stderr: string; code: number; timedOut?: boolean }

export function exec(cmd: string, args: string[], timeoutMs = 30_000): Promise<ExecResult> {
  return new Promise((resolve) => {
    execFile(cmd, args, { timeout: timeoutMs, maxBuffer: 32 * 1024 * 1024, encoding: 'utf8' }, (err, stdout, stderr) => {
      const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? (err as { code: number }).code : -1) : 0;
      // Killed by our timeout: say so (Node's own message is a bare "Command failed: ...").
      const timedOut = !!err && (err as { killed?: boolean }).killed === true;
      resolve({ stdout, stderr: timedOut ? `no answer within ${timeoutMs / 1000} s` : stderr || (err && code === -1 ? err.message : ''), code, timedOut });
    });
  });
}
