// Redacts secret values from a child process's output stream before it reaches
// the task log. Output arrives in arbitrary chunks, so a secret can be split
// across two of them: text is held back until a line ends (or, for a very long
// line, until no secret can straddle the cut), and only then redacted and
// emitted.

export const REDACTED = '[redacted by stackpass]';

/** Longest run of output held back waiting for a newline. */
const MAX_PENDING_CHARS = 64 * 1024;

export class LineRedactor {
  private pending = '';
  private readonly secrets: string[];
  private readonly longest: number;

  /**
   * @param secrets values that must never be emitted; empty strings are ignored.
   * @param emit receives each redacted line (without its newline).
   */
  constructor(
    secrets: Iterable<string>,
    private readonly emit: (line: string) => void,
  ) {
    // Longest first, so a secret that contains another is replaced whole.
    this.secrets = [...new Set([...secrets].filter(s => s.length > 0))].sort(
      (a, b) => b.length - a.length,
    );
    this.longest = this.secrets.reduce((n, s) => Math.max(n, s.length), 0);
  }

  /** Replaces every occurrence of every secret in `text`. */
  redact(text: string): string {
    let out = text;
    for (const secret of this.secrets) {
      out = out.split(secret).join(REDACTED);
    }
    return out;
  }

  write(chunk: string): void {
    this.pending += chunk;
    let newline = this.pending.indexOf('\n');
    while (newline >= 0) {
      const line = this.pending.slice(0, newline).replace(/\r$/, '');
      this.pending = this.pending.slice(newline + 1);
      this.emit(this.redact(line));
      newline = this.pending.indexOf('\n');
    }
    if (this.pending.length > MAX_PENDING_CHARS) {
      this.flushLongLine();
    }
  }

  /** Emits whatever is held back (call once the stream has ended). */
  end(): void {
    if (this.pending.length > 0) {
      const rest = this.pending;
      this.pending = '';
      this.emit(this.redact(rest));
    }
  }

  // A line longer than the buffer: emit its head, keeping back enough of the
  // tail that a secret starting before the cut is never split by it.
  private flushLongLine(): void {
    let cut = this.pending.length - Math.max(this.longest - 1, 0);
    for (const secret of this.secrets) {
      let at = this.pending.indexOf(secret);
      while (at >= 0 && at < cut) {
        if (at + secret.length > cut) {
          cut = at;
          break;
        }
        at = this.pending.indexOf(secret, at + secret.length);
      }
    }
    if (cut <= 0) return;
    const head = this.pending.slice(0, cut);
    this.pending = this.pending.slice(cut);
    this.emit(this.redact(head));
  }
}
