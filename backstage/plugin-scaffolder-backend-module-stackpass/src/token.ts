// Finds the token the actions present to stackpass: the Backstage user token of
// the person who started the task. The scaffolder stores it as
// `secrets.backstageToken` when a task is created. Nothing here falls back to
// the scaffolder's own service credentials: a task without a user token fails.
//
// Why not ctx.getInitiatorCredentials() + the auth service: that yields a
// plugin-to-plugin token *on behalf of* the user (typ vnd.backstage.plugin),
// which stackpass does not accept as a person's identity: it verifies user
// tokens (typ vnd.backstage.user) against the auth backend's JWKS.

import { StackpassError } from './errors';

export const USER_TOKEN_TYPE = 'vnd.backstage.user';

/**
 * Returns the task initiator's Backstage user token, or throws a StackpassError
 * saying why there is none. Only the JWT header is read (no verification: the
 * broker verifies the signature); the check exists to fail early with a useful
 * message rather than a bare 401.
 */
export function initiatorUserToken(
  secrets: Record<string, string> | undefined,
): string {
  const token = secrets?.backstageToken;
  if (!token) {
    throw new StackpassError(
      'this task carries no Backstage user token (secrets.backstageToken), so stackpass cannot tell who started it; start the task as a signed-in user',
    );
  }
  const typ = tokenType(token);
  if (!isUserTokenType(typ)) {
    throw new StackpassError(
      `this task's Backstage token is not a user token (typ ${JSON.stringify(typ ?? null)}, expected ${USER_TOKEN_TYPE}); ` +
        'a retried or service-started task carries a token on behalf of the user, which stackpass does not accept: start a new task',
    );
  }
  return token;
}

// The same comparison stackpass makes (media types: case-insensitive, with or
// without the "application/" prefix).
function isUserTokenType(typ: string | undefined): boolean {
  const bare = (typ ?? '').trim().toLowerCase().replace(/^application\//, '');
  return bare === USER_TOKEN_TYPE;
}

function tokenType(token: string): string | undefined {
  const header = token.split('.')[0];
  try {
    const parsed = JSON.parse(Buffer.from(header, 'base64url').toString('utf8'));
    return typeof parsed?.typ === 'string' ? parsed.typ : undefined;
  } catch {
    return undefined;
  }
}
