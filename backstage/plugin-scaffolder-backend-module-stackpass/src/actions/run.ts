// `stackpass:run`: gets credentials from the broker as the task's user
// (`POST /v1/credentials`, one per provider) and runs a command in the task
// workspace with them in the child's environment only. The child's output goes
// to the task log with every credential value redacted; a non-zero exit fails
// the task. Credentials never become an action output (outputs are plain text
// in the task's log and database).

import { spawn } from 'node:child_process';
import path from 'node:path';
import { createTemplateAction } from '@backstage/plugin-scaffolder-node';
import { StackpassClient, type IssuedCredential } from '../client';
import { StackpassError } from '../errors';
import { initiatorUserToken } from '../token';
import { SUPPORTED_PROVIDERS, childEnv, credentialEnv, secretValues } from '../env';
import { LineRedactor } from '../redact';
import type { ActionOptions } from './decide';

/** Resolves `cwd` inside the workspace; anything that climbs out is refused. */
export function workingDirectory(workspacePath: string, cwd: string | undefined): string {
  const root = path.resolve(workspacePath);
  const dir = path.resolve(root, cwd ?? '.');
  if (dir !== root && !dir.startsWith(root + path.sep)) {
    throw new StackpassError(`cwd ${JSON.stringify(cwd)} is outside the task workspace`);
  }
  return dir;
}

export interface RunResult {
  exitCode: number | null;
  signal: NodeJS.Signals | null;
}

/**
 * Runs `command` (no shell) with `env`, passing each output line through a
 * redactor for `secrets` to `log`. Resolves once the child has exited and its
 * output is drained.
 */
export function runRedacted(
  command: string[],
  options: {
    cwd: string;
    env: Record<string, string>;
    secrets: string[];
    log: (line: string, stream: 'stdout' | 'stderr') => void;
    signal?: AbortSignal;
  },
): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(command[0], command.slice(1), {
      cwd: options.cwd,
      env: options.env,
      stdio: ['ignore', 'pipe', 'pipe'],
      signal: options.signal,
    });
    const out = new LineRedactor(options.secrets, line => options.log(line, 'stdout'));
    const err = new LineRedactor(options.secrets, line => options.log(line, 'stderr'));
    child.stdout.setEncoding('utf8').on('data', (chunk: string) => out.write(chunk));
    child.stderr.setEncoding('utf8').on('data', (chunk: string) => err.write(chunk));
    child.on('error', error => {
      const code = (error as NodeJS.ErrnoException).code;
      reject(
        new StackpassError(
          code === 'ENOENT'
            ? `command ${JSON.stringify(command[0])} was not found on the scaffolder's PATH`
            : code === 'ABORT_ERR'
              ? 'the task was cancelled while the command ran'
              : `command ${JSON.stringify(command[0])} could not be run: ${error.message}`,
        ),
      );
    });
    // 'close' comes after both pipes have ended, so nothing is lost.
    child.on('close', (exitCode, signal) => {
      out.end();
      err.end();
      resolve({ exitCode, signal });
    });
  });
}

export function createStackpassRunAction(options: ActionOptions) {
  const client = new StackpassClient(options.baseUrl);
  return createTemplateAction({
    id: 'stackpass:run',
    description:
      "Gets short-lived cloud credentials from stackpass as the task's user and runs a command with them in its environment; output is redacted.",
    schema: {
      input: {
        stack: z =>
          z.string().min(1).describe('Stack reference, e.g. pulumi:acme/payments/dev'),
        providers: z =>
          z
            .array(z.enum(SUPPORTED_PROVIDERS))
            .min(1)
            .default(['aws'])
            .describe('Cloud providers to get credentials for'),
        command: z =>
          z
            .array(z.string())
            .min(1)
            .describe('The command and its arguments, run without a shell, e.g. ["pulumi", "up", "--yes"]'),
        cwd: z =>
          z.string().optional().describe('Directory inside the task workspace to run in'),
        env: z =>
          z
            .record(z.string(), z.string())
            .optional()
            .describe('Extra non-secret variables, e.g. AWS_REGION or PULUMI_STACK'),
        durationSeconds: z =>
          z.number().int().positive().optional().describe('Requested credential lifetime'),
        reason: z => z.string().max(500).optional().describe('Why, for the audit log'),
      },
      output: {
        issuances: z =>
          z
            .array(
              z.object({
                provider: z.string(),
                issuanceId: z.string(),
                rule: z.string(),
                role: z.string(),
                expiresAt: z.string(),
              }),
            )
            .describe('Audit references for what was issued (never the credentials)'),
        exitCode: z => z.number().int().describe("The command's exit code"),
      },
    },
    async handler(ctx) {
      const token = initiatorUserToken(ctx.secrets);
      const { stack, command, reason } = ctx.input;
      const providers = ctx.input.providers ?? ['aws'];
      const cwd = workingDirectory(ctx.workspacePath, ctx.input.cwd);
      const extraEnv = ctx.input.env ?? {};
      // Checked before anything is issued, so a bad template costs no credential.
      childEnv({}, extraEnv, {});

      const issued: IssuedCredential[] = [];
      for (const provider of providers) {
        issued.push(
          await client.issue(
            token,
            {
              stack,
              provider,
              ...(ctx.input.durationSeconds !== undefined
                ? { duration_seconds: ctx.input.durationSeconds }
                : {}),
              ...(reason ? { reason } : {}),
            },
            ctx.signal,
          ),
        );
      }
      const credentials: Record<string, string> = {};
      const secrets: string[] = [];
      for (const credential of issued) {
        Object.assign(credentials, credentialEnv(credential));
        secrets.push(...secretValues(credential));
        ctx.logger.info(
          `stackpass issued ${credential.provider} credentials for ${credential.stack} to ${credential.requester}: rule ${credential.rule}, role ${credential.role}, until ${credential.expires_at} (issuance ${credential.issuance_id})`,
        );
      }

      ctx.logger.info(`running ${command.join(' ')} in ${path.relative(ctx.workspacePath, cwd) || '.'}`);
      const result = await runRedacted(command, {
        cwd,
        env: childEnv(process.env, extraEnv, credentials),
        secrets,
        log: (line, stream) =>
          stream === 'stdout' ? ctx.logger.info(line) : ctx.logger.warn(line),
        signal: ctx.signal,
      });

      ctx.output(
        'issuances',
        issued.map(c => ({
          provider: c.provider,
          issuanceId: c.issuance_id,
          rule: c.rule,
          role: c.role,
          expiresAt: c.expires_at,
        })),
      );
      if (result.exitCode !== null) ctx.output('exitCode', result.exitCode);
      if (result.exitCode !== 0) {
        throw new StackpassError(
          result.signal
            ? `${command[0]} was killed by ${result.signal}`
            : `${command[0]} exited with code ${result.exitCode}`,
        );
      }
    },
  });
}
