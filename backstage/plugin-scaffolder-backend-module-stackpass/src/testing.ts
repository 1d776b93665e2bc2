// Test helpers: a real HTTP server standing in for the broker (recording what
// the actions send) and a minimal action context. Compiled with the module but
// excluded from the published files.

import http from 'node:http';
import type { AddressInfo } from 'node:net';

export interface Recorded {
  method: string;
  path: string;
  authorization: string | undefined;
  body: unknown;
}

export type Reply = { status: number; body: unknown; contentType?: string };

export async function fakeBroker(
  answer: (path: string, body: any) => Reply,
): Promise<{ url: string; requests: Recorded[]; close: () => Promise<void> }> {
  const requests: Recorded[] = [];
  const server = http.createServer((req, res) => {
    let data = '';
    req.setEncoding('utf8');
    req.on('data', c => (data += c));
    req.on('end', () => {
      const body = data ? JSON.parse(data) : undefined;
      requests.push({
        method: req.method ?? '',
        path: req.url ?? '',
        authorization: req.headers.authorization,
        body,
      });
      const reply = answer(req.url ?? '', body);
      res.writeHead(reply.status, {
        'content-type':
          reply.contentType ?? (reply.status >= 400 ? 'application/problem+json' : 'application/json'),
      });
      res.end(typeof reply.body === 'string' ? reply.body : JSON.stringify(reply.body));
    });
  });
  await new Promise<void>(resolve => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    requests,
    close: () => new Promise(resolve => server.close(() => resolve())),
  };
}

export function userToken(typ = 'vnd.backstage.user'): string {
  const enc = (o: object) => Buffer.from(JSON.stringify(o)).toString('base64url');
  return `${enc({ alg: 'ES256', kid: 'k', typ })}.${enc({ sub: 'user:default/jane' })}.c2ln`;
}

export interface FakeContext {
  ctx: any;
  logs: { level: string; message: string }[];
  outputs: Record<string, unknown>;
}

export function fakeContext(
  input: Record<string, unknown>,
  options: { token?: string | null; workspacePath?: string } = {},
): FakeContext {
  const logs: { level: string; message: string }[] = [];
  const outputs: Record<string, unknown> = {};
  const log = (level: string) => (message: string) => logs.push({ level, message });
  const logger = {
    info: log('info'),
    warn: log('warn'),
    error: log('error'),
    debug: log('debug'),
    child: () => logger,
  };
  const token = options.token === undefined ? userToken() : options.token;
  const ctx = {
    input,
    logger,
    secrets: token === null ? {} : { backstageToken: token },
    workspacePath: options.workspacePath ?? process.cwd(),
    output: (name: string, value: unknown) => {
      outputs[name] = value;
    },
    task: { id: 'task-1' },
    checkpoint: async () => undefined,
    createTemporaryDirectory: async () => process.cwd(),
    getInitiatorCredentials: async () => {
      throw new Error('not used');
    },
  };
  return { ctx, logs, outputs };
}
