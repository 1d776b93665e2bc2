'use strict';

// The scaffolder step of the check: jane starts real scaffolder tasks from
// templates.yaml with her real Backstage token, and the real stackpass broker
// decides and issues as her. Checks that
//  - for payments (owned by her group) the task completes, the AWS CLI in the
//    step saw the issued credentials (moto's STS names the assumed role), and
//    neither the task's log nor the task itself shows any credential value;
//  - for billing-api (owned by Team-Platform: jane is not an owner) the task
//    fails at stackpass:decide with the policy's summary, and the run step never
//    starts; the per-rule reasons are withheld, as the broker withholds them
//    from anyone but the stack's owners;
//  - for payments/prod (her group's, but no rule covers prod) the task fails at
//    stackpass:decide with each rule's reasons.
// Needs no dependencies (Node's fetch). Exits non-zero on any failure.
//
// Env: BACKSTAGE_URL, USER_TOKEN_FILE (jane's token, from probe.js), AWS_CLI,
// MOTO_URL, WORK_DIR (for the proof files), READY_TIMEOUT_SECONDS.

const fs = require('node:fs');
const path = require('node:path');

const base = process.env.BACKSTAGE_URL;
const token = fs.readFileSync(process.env.USER_TOKEN_FILE, 'utf8').trim();
const awsCli = process.env.AWS_CLI;
const motoUrl = process.env.MOTO_URL;
const workDir = process.env.WORK_DIR;
const readyMs = Number(process.env.READY_TIMEOUT_SECONDS || 120) * 1000;
const REDACTED = '[redacted by stackpass]';

const sleep = ms => new Promise(r => setTimeout(r, ms));
let failed = false;
function check(what, ok, detail) {
  if (ok) {
    console.error(`[backstage-real] ok: ${what}`);
  } else {
    failed = true;
    console.error(`[backstage-real] FAIL: ${what}: ${typeof detail === 'string' ? detail : JSON.stringify(detail)}`.slice(0, 4000));
  }
  return ok;
}

async function call(method, p, body) {
  const res = await fetch(`${base}${p}`, {
    method,
    headers: {
      authorization: `Bearer ${token}`,
      ...(body ? { 'content-type': 'application/json' } : {}),
    },
    body: body ? JSON.stringify(body) : undefined,
    signal: AbortSignal.timeout(40_000),
  });
  const text = await res.text();
  let json;
  try {
    json = JSON.parse(text);
  } catch {
    json = text;
  }
  return { status: res.status, body: json };
}

async function waitForTemplate() {
  const deadline = Date.now() + readyMs;
  let last;
  while (Date.now() < deadline) {
    last = await call('GET', '/api/catalog/entities/by-name/template/default/stackpass-deploy');
    if (last.status === 200) return true;
    await sleep(500);
  }
  return check('the template reached the catalog', false, last);
}

// Starts a task as jane and waits for it to finish; returns the task and its log.
async function runTask(stack, proofFile) {
  const created = await call('POST', '/api/scaffolder/v2/tasks', {
    templateRef: 'template:default/stackpass-deploy',
    values: { stack, awsCli, awsEndpoint: motoUrl, proofFile },
  });
  if (!check(`scaffolder accepted a task for ${stack}`, created.status === 201 && created.body.id, created)) {
    return null;
  }
  const id = created.body.id;
  const deadline = Date.now() + readyMs;
  let task;
  while (Date.now() < deadline) {
    task = await call('GET', `/api/scaffolder/v2/tasks/${id}`);
    if (['completed', 'failed', 'cancelled'].includes(task.body.status)) break;
    await sleep(300);
  }
  const events = await call('GET', `/api/scaffolder/v2/tasks/${id}/events`);
  // Task log lines read "<level>: <message>", the level in ANSI colours.
  const log = (Array.isArray(events.body) ? events.body : [])
    .map(e => (e.body?.message ?? '').replace(/\u001b\[[0-9;]*m/g, '').replace(/^(info|warn|error|debug): /gm, ''))
    .join('\n');
  fs.writeFileSync(path.join(__dirname, 'observed', `scaffolder-task-${stack.replace(/[^a-z0-9]+/gi, '-')}.log`), log + '\n');
  return { id, task: task.body, events: events.body, log };
}

// The example template in the module's README: the catalog accepts it as a
// Template, and every step's action exists with every required input given.
async function checkExampleTemplate() {
  const deadline = Date.now() + readyMs;
  let entity;
  while (Date.now() < deadline) {
    entity = await call('GET', '/api/catalog/entities/by-name/template/default/deploy-with-stackpass');
    if (entity.status === 200) break;
    await sleep(500);
  }
  if (!check("the module's template.yaml is in the catalog", entity.status === 200, entity)) return;
  const actions = await call('GET', '/api/scaffolder/v2/actions');
  const byId = new Map((Array.isArray(actions.body) ? actions.body : []).map(a => [a.id, a]));
  for (const step of entity.body.spec.steps) {
    const action = byId.get(step.action);
    if (!check(`template step ${step.id}: action ${step.action} is registered`, Boolean(action), [...byId.keys()])) continue;
    const required = action.schema?.input?.required ?? [];
    const missing = required.filter(name => !(name in (step.input ?? {})));
    check(`template step ${step.id}: every required input of ${step.action} is given`, missing.length === 0, missing);
  }
  if (!failed) console.error("[backstage-real] ok: the module's example template is accepted and its steps match the actions");
}

async function main() {
  if (!(await waitForTemplate())) return;
  await checkExampleTemplate();

  // (a) jane deploys payments: owned by her group, so allowed.
  const proofFile = path.join(workDir, 'proof-payments.txt');
  const ok = await runTask('pulumi:acme/payments/dev', proofFile);
  if (ok) {
    check('the payments task completed', ok.task.status === 'completed', { status: ok.task.status, log: ok.log.slice(-3000) });
    check('the task ran as jane (createdBy)', ok.task.createdBy === 'user:default/jane', ok.task.createdBy);
    check('stackpass:decide logged the allowing rule', ok.log.includes('stackpass would allow aws credentials for pulumi:acme/payments/dev: rule owners-deploy-dev'), ok.log);
    check('stackpass issued to jane, not to the scaffolder', ok.log.includes('to user:default/jane: rule owners-deploy-dev, role arn:aws:iam::111111111111:role/payments-deployer'), ok.log);
    check('the AWS CLI in the step ran with the issued role', /"Arn": "arn:aws:sts::111111111111:assumed-role\/payments-deployer\//.test(ok.log), ok.log);
    check('the printed secret key was redacted', ok.log.includes(`the secret key is ${REDACTED}`), ok.log);
    let secrets = [];
    try {
      secrets = fs.readFileSync(proofFile, 'utf8').split('\n').filter(s => s.length > 0);
    } catch (e) {
      check('the step wrote its proof file', false, String(e));
    }
    check('the step saw three credential values in its environment', secrets.length === 3 && secrets[0].length >= 16, secrets.map(s => s.length));
    const everything = JSON.stringify(ok.events) + JSON.stringify(ok.task);
    const leaked = secrets.filter(s => everything.includes(s));
    check('no credential value in the task log, output or spec', secrets.length === 3 && leaked.length === 0, `${leaked.length} value(s) leaked`);
    // The backend's own log repeats every task log line: nothing there either.
    const backendLog = fs.readFileSync(path.join(__dirname, 'backend.log'), 'utf8');
    const leakedToBackend = secrets.filter(s => backendLog.includes(s));
    check('no credential value in the backend log', secrets.length === 3 && leakedToBackend.length === 0, `${leakedToBackend.length} value(s) leaked`);
    fs.rmSync(proofFile, { force: true });
    if (!failed) console.error('[backstage-real] ok: scaffolder task for payments completed as jane with no secret in its log');
  }

  // (b) jane tries billing-api: owned by Team-Platform, so denied at decide.
  const denied = await runTask('pulumi:acme/billing-api/dev', path.join(workDir, 'proof-billing.txt'));
  if (denied) {
    check('the billing-api task failed', denied.task.status === 'failed', { status: denied.task.status, log: denied.log.slice(-3000) });
    const reason = denied.log.split('\n').find(l => l.startsWith('stackpass would deny aws credentials for pulumi:acme/billing-api/dev: no rule grants'));
    check('stackpass:decide gave the policy summary', Boolean(reason), denied.log);
    check('…and no rule reasons, which only owners see', !/^  rule /m.test(denied.log), denied.log);
    check('the run step never started', !denied.log.includes('stackpass issued') && !fs.existsSync(path.join(workDir, 'proof-billing.txt')), denied.log);
    if (!failed) console.error(`[backstage-real] ok: scaffolder task for billing-api failed with the policy's reasons: ${reason}`);
  }

  // (c) jane tries payments/prod: her group owns it, no rule covers prod.
  const prod = await runTask('pulumi:acme/payments/prod', path.join(workDir, 'proof-prod.txt'));
  if (prod) {
    check('the payments/prod task failed', prod.task.status === 'failed', { status: prod.task.status, log: prod.log.slice(-3000) });
    const ruleLine = prod.log.split('\n').find(l => l.startsWith('  rule owners-deploy-dev: '));
    check('stackpass:decide gave the rule reasons to an owner', Boolean(ruleLine) && /prod/.test(ruleLine), prod.log);
    check('the run step never started', !prod.log.includes('stackpass issued') && !fs.existsSync(path.join(workDir, 'proof-prod.txt')), prod.log);
    if (!failed) console.error(`[backstage-real] ok: scaffolder task for payments/prod failed with the rule's reasons:${ruleLine}`);
  }
}

main().then(
  () => process.exit(failed ? 1 : 0),
  err => {
    console.error('[backstage-real] FAIL: scaffolder check crashed:', err);
    process.exit(1);
  },
);
