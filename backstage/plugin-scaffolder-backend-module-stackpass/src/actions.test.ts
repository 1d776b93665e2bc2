import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createStackpassDecideAction } from './actions/decide';
import { createStackpassRunAction, workingDirectory } from './actions/run';
import { REDACTED } from './redact';
import { fakeBroker, fakeContext, userToken } from './testing';

const STACK = 'pulumi:acme/payments/dev';
const AWS = {
  access_key_id: 'ASIAEXAMPLEKEYID0001',
  secret_access_key: 'wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY',
  session_token: 'FwoGZXIvYXdzEXAMPLESESSIONTOKEN//////////wEaDAbc123',
};
const ASSUMED_ROLE_ARN = 'arn:aws:sts::111111111111:assumed-role/payments-deployer/user.default.jane';

function issued(provider: string, credentials: Record<string, string>) {
  return {
    issuance_id: '018f-issuance',
    requester: 'user:default/jane',
    stack: STACK,
    provider,
    rule: 'owners-deploy-dev',
    role: 'arn:aws:iam::111111111111:role/payments-deployer',
    duration_seconds: 900,
    expires_at: '2026-11-29T12:00:00Z',
    credentials,
  };
}

const ALLOW = {
  decision: 'allow',
  rule: 'owners-deploy-dev',
  provider: 'aws',
  role: 'arn:aws:iam::111111111111:role/payments-deployer',
  duration: '1h',
  max_duration: '1h',
  session_policy: null,
  session_tags: {},
};

test('decide: sends the credential request body with the user token and reports allow', async () => {
  const broker = await fakeBroker(() => ({ status: 200, body: ALLOW }));
  try {
    const action = createStackpassDecideAction({ baseUrl: `${broker.url}/` });
    const { ctx, outputs, logs } = fakeContext({
      stack: STACK,
      providers: ['aws'],
      durationSeconds: 900,
      reason: 'new service',
    });
    await action.handler(ctx);
    assert.deepEqual(broker.requests, [
      {
        method: 'POST',
        path: '/v1/decisions',
        authorization: `Bearer ${userToken()}`,
        body: { stack: STACK, provider: 'aws', duration_seconds: 900, reason: 'new service' },
      },
    ]);
    assert.deepEqual(outputs.decisions, [
      { provider: 'aws', decision: 'allow', rule: ALLOW.rule, role: ALLOW.role },
    ]);
    assert.ok(logs.some(l => l.message.includes('would allow aws credentials')));
  } finally {
    await broker.close();
  }
});

test('decide: a denial fails the task with the summary and every rule reason', async () => {
  const broker = await fakeBroker(() => ({
    status: 200,
    body: {
      decision: 'deny',
      summary: 'no rule allows user:default/jane',
      denied_by: null,
      rules: [
        { rule: 'owners-deploy-dev', reasons: ['user:default/jane does not own billing-api'] },
        { rule: 'sre-prod', reasons: ['not a member of group:default/sre', 'environment is dev'] },
      ],
    },
  }));
  try {
    const action = createStackpassDecideAction({ baseUrl: broker.url });
    const { ctx, outputs } = fakeContext({ stack: 'pulumi:acme/billing-api/dev', providers: ['aws'] });
    await assert.rejects(action.handler(ctx), (err: Error) => {
      assert.match(err.message, /would deny aws credentials for pulumi:acme\/billing-api\/dev: no rule allows/);
      assert.match(err.message, /rule owners-deploy-dev: user:default\/jane does not own billing-api/);
      assert.match(err.message, /rule sre-prod: not a member of group:default\/sre; environment is dev/);
      return true;
    });
    assert.deepEqual(outputs.decisions, [{ provider: 'aws', decision: 'deny' }]);
  } finally {
    await broker.close();
  }
});

test('decide: needs_approval fails the task and says who approves', async () => {
  const broker = await fakeBroker(() => ({
    status: 200,
    body: {
      decision: 'needs_approval',
      grant: ALLOW,
      approval: { count: 1, approvers: ['group:default/sre'], window: '1h', request_ttl: '1d', break_glass_max_duration: null },
    },
  }));
  try {
    const action = createStackpassDecideAction({ baseUrl: broker.url });
    const { ctx } = fakeContext({ stack: STACK, providers: ['aws'] });
    await assert.rejects(action.handler(ctx), /needs approval .* 1 approval\(s\) from group:default\/sre[^]*hint: ask for it with `stackpass approvals request --stack pulumi:acme\/payments\/dev --provider aws`/);
    // With allowApproval, the step passes and says what stackpass:run will need.
    const allowed = fakeContext({ stack: STACK, providers: ['aws'], allowApproval: true });
    await action.handler(allowed.ctx);
    assert.deepEqual(allowed.outputs.decisions, [
      { provider: 'aws', decision: 'needs_approval', rule: ALLOW.rule, role: ALLOW.role },
    ]);
    assert.ok(allowed.logs.some(l => l.message.includes("will use the user's approved request")));
  } finally {
    await broker.close();
  }
});

test('broker errors become one message with title, detail, rules, hint and request id', async () => {
  const broker = await fakeBroker(() => ({
    status: 401,
    body: {
      type: 'about:blank',
      title: 'Unauthorized',
      status: 401,
      detail: 'the token has expired',
      hint: 'sign in again',
      request_id: 'req-42',
    },
  }));
  try {
    const action = createStackpassRunAction({ baseUrl: broker.url });
    const { ctx } = fakeContext({ stack: STACK, providers: ['aws'], command: ['true'] });
    await assert.rejects(action.handler(ctx), (err: Error) => {
      assert.equal(
        err.message,
        'stackpass refused aws credentials for pulumi:acme/payments/dev (HTTP 401: Unauthorized)\nthe token has expired\nhint: sign in again\nrequest id: req-42',
      );
      return true;
    });
  } finally {
    await broker.close();
  }
});

test('a 403 with rules, and a non-JSON error page, are both explained', async () => {
  let html = false;
  const broker = await fakeBroker(() =>
    html
      ? { status: 502, body: '<html>bad gateway</html>', contentType: 'text/html' }
      : {
          status: 403,
          body: {
            title: 'Forbidden',
            detail: 'no rule allows this',
            hint: 'ask the owners',
            rules: [{ rule: 'owners-deploy-dev', reasons: ['not an owner'] }],
          },
        },
  );
  try {
    const action = createStackpassRunAction({ baseUrl: broker.url });
    await assert.rejects(
      action.handler(fakeContext({ stack: STACK, providers: ['aws'], command: ['true'] }).ctx),
      /HTTP 403: Forbidden\)\nno rule allows this\n  rule owners-deploy-dev: not an owner\nhint: ask the owners/,
    );
    html = true;
    await assert.rejects(
      action.handler(fakeContext({ stack: STACK, providers: ['aws'], command: ['true'] }).ctx),
      /^StackpassError: stackpass refused aws credentials for pulumi:acme\/payments\/dev \(HTTP 502\)$/,
    );
  } finally {
    await broker.close();
  }
});

test('an unreachable broker is named in the error', async () => {
  const broker = await fakeBroker(() => ({ status: 200, body: ALLOW }));
  await broker.close();
  const action = createStackpassDecideAction({ baseUrl: broker.url });
  await assert.rejects(
    action.handler(fakeContext({ stack: STACK, providers: ['aws'] }).ctx),
    /stackpass at http:\/\/127\.0\.0\.1:\d+\/v1\/decisions could not be reached/,
  );
});

test('no user token, or a non-user token, fails before the broker is called', async () => {
  const broker = await fakeBroker(() => ({ status: 200, body: ALLOW }));
  try {
    const action = createStackpassDecideAction({ baseUrl: broker.url });
    await assert.rejects(
      action.handler(fakeContext({ stack: STACK, providers: ['aws'] }, { token: null }).ctx),
      /carries no Backstage user token/,
    );
    await assert.rejects(
      action.handler(
        fakeContext({ stack: STACK, providers: ['aws'] }, { token: userToken('vnd.backstage.plugin') }).ctx,
      ),
      /not a user token \(typ "vnd.backstage.plugin"/,
    );
    assert.equal(broker.requests.length, 0);
    // The media-type spelling stackpass also accepts.
    await action.handler(
      fakeContext({ stack: STACK, providers: ['aws'] }, { token: userToken('application/vnd.backstage.user') }).ctx,
    );
    assert.equal(broker.requests.length, 1);
  } finally {
    await broker.close();
  }
});

// A child that proves the credentials are in its environment and prints them,
// split across writes with pauses in between, so they reach the parent in
// separate chunks.
const CHILD = `
const { AWS_ACCESS_KEY_ID: id, AWS_SECRET_ACCESS_KEY: secret, AWS_SESSION_TOKEN: session } = process.env;
console.log('profile=' + (process.env.AWS_PROFILE ?? 'unset') + ' imds=' + process.env.AWS_EC2_METADATA_DISABLED + ' region=' + process.env.AWS_REGION);
console.log('lengths ' + [id, secret, session].map(v => (v ?? '').length).join(','));
console.log('arn ${ASSUMED_ROLE_ARN} future future-secret-value');
const pieces = ['id=' + id.slice(0, 5), id.slice(5) + ' secret=' + secret.slice(0, 11), secret.slice(11) + '\\n', 'session=' + session + '\\n'];
let i = 0;
const next = () => {
  if (i < pieces.length) { process.stdout.write(pieces[i++]); setTimeout(next, 30); }
  else { process.stderr.write('on stderr ' + secret); process.exit(Number(process.env.EXIT_WITH || 0)); }
};
next();
`;

async function runWith(env: Record<string, string>) {
  const broker = await fakeBroker(() => ({
    status: 200,
    body: issued('aws', { ...AWS, assumed_role_arn: ASSUMED_ROLE_ARN, some_future_field: 'future-secret-value' }),
  }));
  const workspace = fs.mkdtempSync(path.join(os.tmpdir(), 'stackpass-run-'));
  fs.mkdirSync(path.join(workspace, 'infra'));
  const action = createStackpassRunAction({ baseUrl: broker.url });
  const fake = fakeContext(
    {
      stack: STACK,
      providers: ['aws'],
      command: [process.execPath, '-e', CHILD],
      cwd: 'infra',
      env,
      durationSeconds: 900,
    },
    { workspacePath: workspace },
  );
  return { broker, action, ...fake };
}

test('run: credentials reach the child only through its env, and no secret reaches the log or the outputs', async () => {
  process.env.AWS_PROFILE = 'the-backends-own-profile';
  const { broker, action, ctx, logs, outputs } = await runWith({ AWS_REGION: 'eu-west-1' });
  try {
    await action.handler(ctx);
    assert.deepEqual(broker.requests.map(r => [r.path, r.body]), [
      ['/v1/credentials', { stack: STACK, provider: 'aws', duration_seconds: 900 }],
    ]);
    const text = logs.map(l => l.message).join('\n');
    assert.ok(text.includes('profile=unset imds=true region=eu-west-1'), text);
    assert.ok(text.includes(`lengths ${AWS.access_key_id.length},${AWS.secret_access_key.length},${AWS.session_token.length}`), text);
    assert.ok(text.includes(`id=${REDACTED} secret=${REDACTED}`), text);
    assert.ok(text.includes(`session=${REDACTED}`), text);
    // Public fields stay readable; fields the module does not know are redacted.
    assert.ok(text.includes(`arn ${ASSUMED_ROLE_ARN} future ${REDACTED}`), text);
    assert.ok(logs.some(l => l.level === 'warn' && l.message === `on stderr ${REDACTED}`), text);
    const everything = text + JSON.stringify(outputs);
    for (const secret of Object.values(AWS)) {
      assert.ok(!everything.includes(secret), `leaked ${secret.slice(0, 4)}…`);
      assert.ok(!everything.includes(secret.slice(0, 11)), 'a fragment leaked');
    }
    assert.deepEqual(outputs, {
      issuances: [
        {
          provider: 'aws',
          issuanceId: '018f-issuance',
          rule: 'owners-deploy-dev',
          role: 'arn:aws:iam::111111111111:role/payments-deployer',
          expiresAt: '2026-11-29T12:00:00Z',
        },
      ],
      exitCode: 0,
    });
  } finally {
    delete process.env.AWS_PROFILE;
    await broker.close();
  }
});

test('run: a non-zero exit fails the task, still without leaking', async () => {
  const { broker, action, ctx, logs, outputs } = await runWith({ EXIT_WITH: '3' });
  try {
    await assert.rejects(action.handler(ctx), /exited with code 3/);
    assert.equal(outputs.exitCode, 3);
    const text = logs.map(l => l.message).join('\n') + JSON.stringify(outputs);
    for (const secret of Object.values(AWS)) assert.ok(!text.includes(secret));
  } finally {
    await broker.close();
  }
});

test('run: env may not bring other credentials, and cwd may not leave the workspace; nothing is issued', async () => {
  const { broker, action, ctx } = await runWith({ AWS_PROFILE: 'admin' });
  try {
    await assert.rejects(action.handler(ctx), /env.AWS_PROFILE is not allowed/);
    ctx.input.env = {};
    ctx.input.cwd = '../..';
    await assert.rejects(action.handler(ctx), /outside the task workspace/);
    assert.equal(broker.requests.length, 0);
  } finally {
    await broker.close();
  }
  assert.throws(() => workingDirectory('/w/task', '/etc'), /outside/);
  assert.equal(workingDirectory('/w/task', 'a/../b'), '/w/task/b');
});

test('run: a missing command is reported by name', async () => {
  const broker = await fakeBroker(() => ({ status: 200, body: issued('aws', AWS) }));
  try {
    const action = createStackpassRunAction({ baseUrl: broker.url });
    const { ctx } = fakeContext({ stack: STACK, providers: ['aws'], command: ['no-such-command-xyz'] });
    await assert.rejects(action.handler(ctx), /"no-such-command-xyz" was not found/);
  } finally {
    await broker.close();
  }
});

test('run: gcp and azure credentials get the variables stackpass --format env uses', async () => {
  const gcp = issued('gcp', { access_token: 'ya29.example-gcp-access-token', project_id: 'acme-dev' });
  const azure = issued('azure', {
    access_token: 'eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.azure',
    tenant_id: '00000000-0000-0000-0000-0000000000aa',
    client_id: '00000000-0000-0000-0000-0000000000bb',
  });
  const broker = await fakeBroker((_p, body) => ({ status: 200, body: body.provider === 'gcp' ? gcp : azure }));
  try {
    const action = createStackpassRunAction({ baseUrl: broker.url });
    const names = ['GOOGLE_OAUTH_ACCESS_TOKEN', 'CLOUDSDK_AUTH_ACCESS_TOKEN', 'GOOGLE_CLOUD_PROJECT', 'AZURE_ACCESS_TOKEN', 'AZURE_ACCESS_TOKEN_EXPIRES_ON', 'AZURE_CLIENT_ID', 'AZURE_TENANT_ID'];
    const script = `console.log(${JSON.stringify(names)}.map(n => n + '=' + (process.env[n] ? process.env[n].length : 'unset')).join(' '))`;
    const { ctx, logs } = fakeContext({ stack: STACK, providers: ['gcp', 'azure'], command: [process.execPath, '-e', script] });
    await action.handler(ctx);
    const line = logs.map(l => l.message).find(m => m.startsWith('GOOGLE_OAUTH_ACCESS_TOKEN='));
    assert.equal(
      line,
      'GOOGLE_OAUTH_ACCESS_TOKEN=29 CLOUDSDK_AUTH_ACCESS_TOKEN=29 GOOGLE_CLOUD_PROJECT=8 AZURE_ACCESS_TOKEN=42 AZURE_ACCESS_TOKEN_EXPIRES_ON=20 AZURE_CLIENT_ID=36 AZURE_TENANT_ID=36',
    );
    assert.deepEqual(broker.requests.map(r => (r.body as any).provider), ['gcp', 'azure']);
  } finally {
    await broker.close();
  }
});
