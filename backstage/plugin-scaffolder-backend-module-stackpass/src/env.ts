// Turns an issued credential into the environment variables each cloud's tools
// read: the same names `stackpass creds --format env` prints (see the broker's
// providers/*/src/formats.rs), so a command behaves the same under the CLI and
// under the scaffolder.

import { StackpassError } from './errors';
import type { IssuedCredential } from './client';

/** Variables a child must never inherit from the scaffolder itself: it acts as the task's user, never as the Backstage backend. */
const AMBIENT_CLOUD_PREFIXES = [
  'AWS_',
  'GOOGLE_',
  'CLOUDSDK_',
  'AZURE_',
  'ARM_',
  'STACKPASS_',
];

/**
 * Variables a template may not set through `env`: each one points a tool at
 * credentials other than the ones stackpass issued. Plain settings such as
 * AWS_REGION or GOOGLE_CLOUD_PROJECT are allowed.
 */
const CREDENTIAL_SOURCES = new Set([
  'AWS_ACCESS_KEY_ID',
  'AWS_SECRET_ACCESS_KEY',
  'AWS_SESSION_TOKEN',
  'AWS_PROFILE',
  'AWS_DEFAULT_PROFILE',
  'AWS_SHARED_CREDENTIALS_FILE',
  'AWS_CONFIG_FILE',
  'AWS_WEB_IDENTITY_TOKEN_FILE',
  'AWS_ROLE_ARN',
  'AWS_CONTAINER_CREDENTIALS_FULL_URI',
  'AWS_CONTAINER_CREDENTIALS_RELATIVE_URI',
  'AWS_CONTAINER_AUTHORIZATION_TOKEN',
  'AWS_EC2_METADATA_DISABLED',
  'GOOGLE_APPLICATION_CREDENTIALS',
  'GOOGLE_OAUTH_ACCESS_TOKEN',
  'CLOUDSDK_AUTH_ACCESS_TOKEN',
  'CLOUDSDK_AUTH_ACCESS_TOKEN_FILE',
  'CLOUDSDK_AUTH_CREDENTIAL_FILE_OVERRIDE',
  'CLOUDSDK_CONFIG',
  'AZURE_ACCESS_TOKEN',
  'AZURE_CLIENT_SECRET',
  'AZURE_CLIENT_CERTIFICATE_PATH',
  'AZURE_FEDERATED_TOKEN_FILE',
  'AZURE_USERNAME',
  'AZURE_PASSWORD',
  'ARM_CLIENT_SECRET',
  'ARM_CLIENT_CERTIFICATE_PATH',
  'ARM_OIDC_TOKEN',
  'ARM_OIDC_TOKEN_FILE_PATH',
  'ARM_USE_MSI',
  'STACKPASS_TOKEN',
]);

export const SUPPORTED_PROVIDERS = ['aws', 'gcp', 'azure'] as const;
export type Provider = (typeof SUPPORTED_PROVIDERS)[number];

function field(issued: IssuedCredential, name: string): string {
  const value = issued.credentials?.[name];
  if (typeof value !== 'string' || value.length === 0) {
    throw new StackpassError(
      `stackpass's ${issued.provider} credential has no ${name}; is the broker's provider configured for credentials (not federation) mode?`,
    );
  }
  return value;
}

function optionalField(issued: IssuedCredential, name: string): string | undefined {
  const value = issued.credentials?.[name];
  return typeof value === 'string' && value.length > 0 ? value : undefined;
}

/** The variables for one issued credential. */
export function credentialEnv(issued: IssuedCredential): Record<string, string> {
  switch (issued.provider) {
    case 'aws':
      return {
        AWS_ACCESS_KEY_ID: field(issued, 'access_key_id'),
        AWS_SECRET_ACCESS_KEY: field(issued, 'secret_access_key'),
        AWS_SESSION_TOKEN: field(issued, 'session_token'),
        AWS_CREDENTIAL_EXPIRATION: issued.expires_at,
      };
    case 'gcp': {
      const token = field(issued, 'access_token');
      const project = optionalField(issued, 'project_id');
      return {
        GOOGLE_OAUTH_ACCESS_TOKEN: token,
        CLOUDSDK_AUTH_ACCESS_TOKEN: token,
        ...(project ? { GOOGLE_CLOUD_PROJECT: project } : {}),
      };
    }
    case 'azure': {
      const subscription = optionalField(issued, 'subscription_id');
      return {
        AZURE_ACCESS_TOKEN: field(issued, 'access_token'),
        AZURE_ACCESS_TOKEN_EXPIRES_ON: issued.expires_at,
        AZURE_CLIENT_ID: field(issued, 'client_id'),
        AZURE_TENANT_ID: field(issued, 'tenant_id'),
        ...(subscription ? { AZURE_SUBSCRIPTION_ID: subscription } : {}),
      };
    }
    default:
      throw new StackpassError(
        `stackpass issued a ${issued.provider} credential, which this module cannot put in an environment (it knows ${SUPPORTED_PROVIDERS.join(', ')})`,
      );
  }
}

/**
 * Fields the broker itself marks public (`.public(...)` in its providers) and
 * that say where, not how: the task log may show them, which keeps output such
 * as `aws sts get-caller-identity` readable. `access_key_id` is public to the
 * broker too, but it is redacted anyway: it names a live session.
 */
const PUBLIC_FIELDS = new Set([
  'assumed_role_arn',
  'token_type',
  'tenant_id',
  'client_id',
  'subscription_id',
  'scope',
  'service_account',
  'project_id',
]);

/**
 * Every string the task log must never show: each credential field's value
 * except the known public ones above, so a field a newer broker adds is
 * redacted until it is known to be public. Values under 6 characters are left
 * out, as redacting them would mangle ordinary output and no cloud secret is
 * that short.
 */
export function secretValues(issued: IssuedCredential): string[] {
  return Object.entries(issued.credentials ?? {})
    .filter(([name]) => !PUBLIC_FIELDS.has(name))
    .map(([, value]) => value)
    .filter((v): v is string => typeof v === 'string' && v.length >= 6);
}

/** The child's environment: the backend's own, less any cloud credentials of its own, plus `extra`, plus the credentials. */
export function childEnv(
  base: NodeJS.ProcessEnv,
  extra: Record<string, string>,
  credentials: Record<string, string>,
): Record<string, string> {
  const env: Record<string, string> = {};
  for (const [name, value] of Object.entries(base)) {
    if (value === undefined) continue;
    if (AMBIENT_CLOUD_PREFIXES.some(p => name.toUpperCase().startsWith(p))) continue;
    env[name] = value;
  }
  for (const [name, value] of Object.entries(extra)) {
    if (CREDENTIAL_SOURCES.has(name.toUpperCase())) {
      throw new StackpassError(
        `env.${name} is not allowed: cloud credentials come from stackpass only`,
      );
    }
    env[name] = value;
  }
  // Without it, an AWS tool given no credentials would ask the host's instance
  // metadata service and act as the Backstage backend's own role.
  env.AWS_EC2_METADATA_DISABLED = 'true';
  return { ...env, ...credentials };
}
