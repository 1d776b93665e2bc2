// The broker's HTTP API as the actions use it: `POST /v1/decisions` (a dry run)
// and `POST /v1/credentials`, with the initiator's Backstage user token as the
// bearer. Error answers (RFC 9457 problem+json) become one StackpassError whose
// message carries the broker's title, detail, hint and per-rule reasons.

import { StackpassError } from './errors';

/** The body of `/v1/decisions` and `/v1/credentials` (stackpass's wire::CredentialRequest). */
export interface CredentialRequest {
  stack: string;
  provider: string;
  duration_seconds?: number;
  reason?: string;
}

export interface RuleMiss {
  rule: string;
  reasons: string[];
}

export interface Grant {
  rule: string;
  provider: string;
  role: string;
  duration: string;
  max_duration: string;
}

/** The answer to `/v1/decisions` (wire::Decision, tagged by `decision`). */
export type Decision =
  | ({ decision: 'allow' } & Grant)
  | {
      decision: 'needs_approval';
      grant: Grant;
      approval: { count: number; approvers: string[]; window: string };
    }
  | {
      decision: 'deny';
      summary: string;
      denied_by?: string | null;
      rules: RuleMiss[];
    };

/** The answer to `/v1/credentials` (wire::IssuedCredential). `credentials` holds secrets. */
export interface IssuedCredential {
  issuance_id: string;
  requester: string;
  stack: string;
  provider: string;
  rule: string;
  role: string;
  duration_seconds: number;
  expires_at: string;
  credentials: Record<string, unknown>;
}

interface ProblemBody {
  title?: string;
  detail?: string;
  hint?: string;
  request_id?: string;
  rules?: RuleMiss[];
}

const REQUEST_TIMEOUT_MS = 30_000;

export class StackpassClient {
  private readonly baseUrl: string;

  constructor(baseUrl: string) {
    let url: URL;
    try {
      url = new URL(baseUrl);
    } catch {
      throw new StackpassError(
        `stackpass.baseUrl ${JSON.stringify(baseUrl)} is not a URL`,
      );
    }
    if (url.protocol !== 'https:' && url.protocol !== 'http:') {
      throw new StackpassError(
        `stackpass.baseUrl must be an http(s) URL, not ${url.protocol}`,
      );
    }
    this.baseUrl = url.toString().replace(/\/+$/, '');
  }

  decide(
    token: string,
    body: CredentialRequest,
    signal?: AbortSignal,
  ): Promise<Decision> {
    return this.post<Decision>('/v1/decisions', token, body, signal);
  }

  issue(
    token: string,
    body: CredentialRequest,
    signal?: AbortSignal,
  ): Promise<IssuedCredential> {
    return this.post<IssuedCredential>('/v1/credentials', token, body, signal);
  }

  private async post<T>(
    path: string,
    token: string,
    body: CredentialRequest,
    signal?: AbortSignal,
  ): Promise<T> {
    const timeout = AbortSignal.timeout(REQUEST_TIMEOUT_MS);
    const url = `${this.baseUrl}${path}`;
    let response: Response;
    try {
      response = await fetch(url, {
        method: 'POST',
        headers: {
          authorization: `Bearer ${token}`,
          'content-type': 'application/json',
          accept: 'application/json, application/problem+json',
        },
        body: JSON.stringify(body),
        signal: signal ? AbortSignal.any([signal, timeout]) : timeout,
        redirect: 'error',
      });
    } catch (err) {
      const why =
        timeout.aborted
          ? `no answer within ${REQUEST_TIMEOUT_MS / 1000}s`
          : signal?.aborted
            ? 'the task was cancelled'
            : String((err as Error)?.cause ?? err);
      throw new StackpassError(`stackpass at ${url} could not be reached: ${why}`);
    }
    const text = await response.text();
    if (!response.ok) {
      throw new StackpassError(problemMessage(response.status, body, text));
    }
    try {
      return JSON.parse(text) as T;
    } catch {
      throw new StackpassError(
        `stackpass answered ${path} with HTTP ${response.status} but not JSON`,
      );
    }
  }
}

/** One message for a failed call: what was asked, the broker's problem details, and why each rule did not match. */
export function problemMessage(
  status: number,
  request: CredentialRequest,
  text: string,
): string {
  let problem: ProblemBody = {};
  try {
    const parsed = JSON.parse(text);
    if (parsed && typeof parsed === 'object') problem = parsed as ProblemBody;
  } catch {
    // Not problem+json (a proxy's error page, say): say only the status.
  }
  const what = `stackpass refused ${request.provider} credentials for ${request.stack} (HTTP ${status}`;
  const lines = [
    `${what}${problem.title ? `: ${problem.title}` : ''})`,
  ];
  if (problem.detail) lines.push(problem.detail);
  lines.push(...ruleLines(problem.rules));
  if (problem.hint) lines.push(`hint: ${problem.hint}`);
  else if (status === 401)
    lines.push(
      "hint: stackpass did not accept the task's Backstage user token; is the Backstage issuer configured on the broker, and has the token expired (tasks must start within the token's lifetime)?",
    );
  if (problem.request_id) lines.push(`request id: ${problem.request_id}`);
  return lines.join('\n');
}

export function ruleLines(rules: RuleMiss[] | undefined): string[] {
  return (rules ?? []).map(
    miss => `  rule ${miss.rule}: ${(miss.reasons ?? []).join('; ')}`,
  );
}
