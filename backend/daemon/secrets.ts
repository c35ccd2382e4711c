/**
 * Store URIs may carry a password (`redis://:s3cret@10.0.0.5:6379`). The daemon keeps
 * the URI as given only where it must re-open the store: its sessions' store pool and
 * the state file (mode 0600, for a restarted daemon). Everything it shows (CLI answers,
 * --json, stats, logs, error messages) goes through these functions first.
 */
import { parseStoreUri, redactUri } from '../../kvstore/uri.ts';

/** The URI as shown to anyone: the password replaced by '***'. */
export function shownUri(uri: string): string {
  return redactUri(uri);
}

/** Passwords in a store URI, as written and %-decoded (empty when there are none or it does not parse). */
export function secretsOf(uri: string | undefined): string[] {
  if (!uri) return [];
  const out = new Set<string>();
  // As written in the URI, whether or not the rest of it parses.
  const m = /^[a-z][a-z0-9+.-]*:\/\/[^@/]*?:([^@/]*)@/i.exec(uri.trim());
  if (m?.[1]) out.add(m[1]);
  try {
    const spec = parseStoreUri(uri) as { password?: string };
    if (spec.password) out.add(spec.password);
  } catch { /* not a valid URI: what was written is all there is */ }
  return [...out];
}

/** A user:password@ inside any URI in free text. */
const URI_CRED = /([a-z][a-z0-9+.-]*:\/\/)([^@/\s'"]*?):([^@/\s'"]*)@/gi;

/**
 * Text with every password of `uris` replaced by '***', and any other
 * `scheme://user:password@` as well. A password shorter than 3 characters is only
 * masked inside a URI: replacing it everywhere would garble the message.
 */
export function scrub(text: string, uris: (string | undefined)[] = []): string {
  let out = text.replace(URI_CRED, (_, s: string, u: string) => `${s}${u}:***@`);
  const secrets = uris.flatMap(secretsOf).filter((p) => p.length >= 3).sort((a, b) => b.length - a.length);
  for (const p of secrets) out = out.split(p).join('***');
  return out;
}

/**
 * Every store URI the daemon was given (config, attach requests, the state file), so
 * that the log and error answers can mask their passwords wherever they turn up.
 */
const known = new Set<string>();

export function rememberStoreUri(uri: string | undefined): void {
  if (uri && secretsOf(uri).length > 0) known.add(uri);
}

/** scrub() against every store URI the daemon was given. */
export function scrubKnown(text: string, more: (string | undefined)[] = []): string {
  return scrub(text, [...known, ...more]);
}
