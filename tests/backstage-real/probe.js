'use strict';

// Talks to the backend started by index.js, records what it really returns into
// ./observed/*.json, and checks the assumptions stackpass is built on. Exits
// non-zero if the backend never became ready, a request failed, or an assumption
// that stackpass depends on does not hold. Differences that stackpass tolerates
// (header typ, extra claims, ...) are recorded in observed/summary.json only.
//
// Env: BACKSTAGE_URL (e.g. http://127.0.0.1:17007), BACKSTAGE_STATIC_TOKEN,
// READY_TIMEOUT_SECONDS (default 120), BACKEND_PID (optional: stop waiting once
// that process has exited), USER_TOKEN_FILE (optional: where to write jane's
// raw user token for a later step). No dependencies beyond Node >= 20.

const crypto = require('node:crypto');
const fs = require('node:fs');
const path = require('node:path');

const base = (process.env.BACKSTAGE_URL || '').replace(/\/+$/, '');
const staticToken = process.env.BACKSTAGE_STATIC_TOKEN;
const readyTimeoutMs =
  1000 * Number(process.env.READY_TIMEOUT_SECONDS || 120);
const outDir = path.join(__dirname, 'observed');
const REQUEST_TIMEOUT_MS = 10_000;

if (!base || !staticToken) {
  console.error('BACKSTAGE_URL and BACKSTAGE_STATIC_TOKEN must be set');
  process.exit(2);
}

const failures = [];
function check(name, ok, detail) {
  if (!ok) failures.push({ check: name, detail });
  console.log(`${ok ? 'ok  ' : 'FAIL'} ${name}${ok ? '' : `: ${JSON.stringify(detail)}`}`);
  return ok;
}

// The base URL carries a per-run port; write `{backstage}` instead so the files
// only change when Backstage's formats do (uids, etags, kids and times still vary).
function stable(value) {
  return JSON.parse(
    JSON.stringify(value)
      .split(base).join('{backstage}')
      .split(__dirname).join('{check-dir}'),
  );
}

function write(name, value) {
  fs.writeFileSync(
    path.join(outDir, name),
    `${JSON.stringify(stable(value), null, 2)}\n`,
  );
}

const labels = new Map();
async function request(method, urlPath, { token, body } = {}) {
  const headers = {};
  if (token !== undefined) headers.authorization = `Bearer ${token}`;
  if (body !== undefined) headers['content-type'] = 'application/json';
  const res = await fetch(base + urlPath, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS),
    redirect: 'manual',
  });
  const text = await res.text();
  let json;
  try {
    json = JSON.parse(text);
  } catch {
    json = undefined;
  }
  const keep = ['content-type', 'www-authenticate', 'cache-control'];
  return {
    request: { method, path: urlPath, authorization: token === undefined ? null : `Bearer <${labels.get(token) || 'a token'}>` },
    status: res.status,
    headers: Object.fromEntries(keep.filter(h => res.headers.has(h)).map(h => [h, res.headers.get(h)])),
    body: json === undefined ? text : json,
  };
}

// Same as request() but with another Host header (fetch does not allow that).
function requestWithHost(urlPath, host) {
  const http = require('node:http');
  return new Promise((resolve, reject) => {
    const req = http.get(base + urlPath, { headers: { host }, timeout: REQUEST_TIMEOUT_MS }, res => {
      let data = '';
      res.setEncoding('utf8');
      res.on('data', c => (data += c));
      res.on('end', () => {
        try {
          resolve({ status: res.statusCode, body: JSON.parse(data) });
        } catch {
          resolve({ status: res.statusCode, body: data });
        }
      });
    });
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', reject);
  });
}

const sleep = ms => new Promise(r => setTimeout(r, ms));

async function waitReady() {
  const deadline = Date.now() + readyTimeoutMs;
  const needed = [
    '/api/auth/.well-known/openid-configuration',
    '/api/catalog/entities/by-name/user/default/jane',
    '/api/catalog/entities/by-name/group/default/team-payments',
    '/api/catalog/entities/by-name/component/default/payments',
  ];
  let last = 'no attempt';
  const backendPid = Number(process.env.BACKEND_PID || 0);
  while (Date.now() < deadline) {
    if (backendPid) {
      try {
        process.kill(backendPid, 0);
      } catch {
        console.error(`the backend (pid ${backendPid}) exited before it was ready`);
        return false;
      }
    }
    try {
      let ready = true;
      for (const p of needed) {
        const r = await request('GET', p, { token: staticToken });
        if (r.status !== 200) {
          ready = false;
          last = `${p} -> ${r.status}`;
          break;
        }
      }
      if (ready) return true;
    } catch (e) {
      last = String(e.cause?.code || e.message);
    }
    await sleep(500);
  }
  console.error(`backend not ready after ${readyTimeoutMs / 1000}s (last: ${last})`);
  return false;
}

function b64urlJson(part) {
  return JSON.parse(Buffer.from(part, 'base64url').toString('utf8'));
}

function verifyEs256(token, jwk) {
  const [h, p, s] = token.split('.');
  const key = crypto.createPublicKey({ key: jwk, format: 'jwk' });
  return crypto.verify(
    'sha256',
    Buffer.from(`${h}.${p}`),
    { key, dsaEncoding: 'ieee-p1363' },
    Buffer.from(s, 'base64url'),
  );
}

function relationTargets(entity, type) {
  return (entity.relations || []).filter(r => r.type === type).map(r => r.targetRef);
}

async function main() {
  labels.set(staticToken, 'the static externalAccess token');
  labels.set('not-the-static-token', 'a wrong token: not-the-static-token');
  fs.rmSync(outDir, { recursive: true, force: true });
  fs.mkdirSync(outDir, { recursive: true });
  const started = Date.now();
  if (!(await waitReady())) process.exit(1);
  const readyAfterMs = Date.now() - started;

  // (a) discovery and (b) the key set, before anyone signed in and after.
  const discovery = await request('GET', '/api/auth/.well-known/openid-configuration');
  write('discovery.json', discovery);
  const expectedIssuer = `${base}/api/auth`;
  check('discovery: 200', discovery.status === 200, discovery.status);
  check('discovery: issuer is {backstage}/api/auth', discovery.body.issuer === expectedIssuer, stable(discovery.body.issuer));
  check('discovery: jwks_uri is an http(s) URL', /^https?:\/\//.test(discovery.body.jwks_uri || ''), discovery.body.jwks_uri);
  const jwksPath = new URL(discovery.body.jwks_uri).pathname;
  const jwksBefore = await request('GET', jwksPath);
  write('jwks-before-first-sign-in.json', jwksBefore);

  // A real user token for jane: the guest provider's refresh endpoint, which signs
  // in through the catalog (signInWithCatalogUser) exactly like a real provider.
  const discoveryOtherHost = await requestWithHost('/api/auth/.well-known/openid-configuration', 'backstage.example.com');
  check('discovery: issuer comes from backend.baseUrl, not the Host header', discoveryOtherHost.body?.issuer === expectedIssuer, stable(discoveryOtherHost.body?.issuer));
  const refresh = await request('POST', '/api/auth/guest/refresh', { body: {} });
  check('guest refresh: 200', refresh.status === 200, refresh.body);
  const token = refresh.body?.backstageIdentity?.token;
  labels.set(token, "jane's user token");
  if (process.env.USER_TOKEN_FILE) {
    fs.writeFileSync(process.env.USER_TOKEN_FILE, token, { mode: 0o600 });
  }
  if (!check('guest refresh: returned backstageIdentity.token', typeof token === 'string', refresh.body)) {
    write('guest-refresh-response.json', refresh);
    return;
  }
  const redacted = structuredClone(refresh);
  redacted.body.backstageIdentity.token = '<the user token, decoded in user-token.json>';
  write('guest-refresh-response.json', redacted);
  const refreshGet = await request('GET', '/api/auth/guest/refresh');

  const jwks = await request('GET', jwksPath);
  write('jwks.json', jwks);

  // (c) the token, decoded.
  const [h, p, s] = token.split('.');
  const header = b64urlJson(h);
  const payload = b64urlJson(p);
  const jwk = (jwks.body.keys || []).find(k => k.kid === header.kid);
  let signatureValid = false;
  try {
    signatureValid = !!jwk && verifyEs256(token, jwk);
  } catch (e) {
    signatureValid = `error: ${e.message}`;
  }
  write('user-token.json', {
    header,
    payload,
    signature_bytes: Buffer.from(s, 'base64url').length,
    token_bytes: token.length,
    lifetime_seconds: payload.exp - payload.iat,
    signature_verified_with_published_jwk: signatureValid,
  });
  check('token header: alg ES256', header.alg === 'ES256', header);
  check('token header: kid present', typeof header.kid === 'string' && header.kid.length > 0, header);
  check('token header: typ is vnd.backstage.user (stackpass pins Backstage user tokens to it)', header.typ === 'vnd.backstage.user', header);
  check('token header: no crit (stackpass refuses critical extensions)', header.crit === undefined, header);
  check('jwks: has the token kid, kty EC, crv P-256', !!jwk && jwk.kty === 'EC' && jwk.crv === 'P-256', jwks.body);
  check('jwks: key is not restricted to another use/alg', !!jwk && (jwk.use === undefined || jwk.use === 'sig') && (jwk.alg === undefined || jwk.alg === 'ES256'), jwk);
  check('token: ES256 signature verifies with the published key', signatureValid === true, signatureValid);
  check('token: iss is exactly {backstage}/api/auth', payload.iss === expectedIssuer, stable(payload.iss));
  check('token: aud is "backstage"', payload.aud === 'backstage' || (Array.isArray(payload.aud) && payload.aud.includes('backstage')), payload.aud);
  check('token: sub is user:default/jane', payload.sub === 'user:default/jane', payload.sub);
  check('token: iat and exp are numbers', Number.isInteger(payload.iat) && Number.isInteger(payload.exp), payload);
  check('token: lifetime within stackpass default max_token_lifetime (1h)', payload.exp - payload.iat <= 3600, payload.exp - payload.iat);

  // (d) catalog by-name with the static token.
  const component = await request('GET', '/api/catalog/entities/by-name/component/default/payments', { token: staticToken });
  write('catalog-component-default-payments.json', component);
  const user = await request('GET', '/api/catalog/entities/by-name/user/default/jane', { token: staticToken });
  write('catalog-user-default-jane.json', user);
  const group = await request('GET', '/api/catalog/entities/by-name/group/default/team-payments', { token: staticToken });
  write('catalog-group-default-team-payments.json', group);
  const missing = await request('GET', '/api/catalog/entities/by-name/component/default/no-such-component', { token: staticToken });
  write('catalog-missing-entity.json', missing);
  const mixedCase = await request('GET', '/api/catalog/entities/by-name/Component/Default/Payments', { token: staticToken });
  // Mixed-case names, looked up the way stackpass does (lower-cased).
  const bob = await request('GET', '/api/catalog/entities/by-name/user/default/bob.smith', { token: staticToken });
  write('catalog-user-default-bob.smith.json', bob);
  const billing = await request('GET', '/api/catalog/entities/by-name/component/default/billing-api', { token: staticToken });
  write('catalog-component-default-billing-api.json', billing);
  check('catalog: lower-cased by-name lookup finds a mixed-case user', bob.status === 200, bob.status);
  check('catalog: memberOf of Bob.Smith is lower-cased group:default/team-platform', JSON.stringify(relationTargets(bob.body, 'memberOf')) === '["group:default/team-platform"]', bob.body.relations);
  check('catalog: lower-cased by-name lookup finds a mixed-case component', billing.status === 200, billing.status);
  check('catalog: ownedBy of Billing-API is lower-cased group:default/team-platform', JSON.stringify(relationTargets(billing.body, 'ownedBy')) === '["group:default/team-platform"]', billing.body.relations);
  check('catalog component: 200', component.status === 200, component.status);
  check('catalog component: ownedBy -> group:default/team-payments', JSON.stringify(relationTargets(component.body, 'ownedBy')) === '["group:default/team-payments"]', component.body.relations);
  check('catalog user: 200', user.status === 200, user.status);
  check('catalog user: memberOf -> group:default/team-payments', JSON.stringify(relationTargets(user.body, 'memberOf')) === '["group:default/team-payments"]', user.body.relations);
  check('catalog missing entity: 404', missing.status === 404, missing.status);

  // (d2) by-query on an annotation, as stackpass finds a machine caller's
  // component: the slug lower-cased (filter values compare case-insensitively),
  // the key with its dots and slash, limit 2.
  const slugFilter = encodeURIComponent('kind=component,metadata.annotations.github.com/project-slug=acme/payments');
  const byQuery = await request('GET', `/api/catalog/entities/by-query?filter=${slugFilter}&limit=2`, { token: staticToken });
  write('catalog-by-query-annotation.json', byQuery);
  const noMatchFilter = encodeURIComponent('kind=component,metadata.annotations.github.com/project-slug=acme/nothing');
  const byQueryNone = await request('GET', `/api/catalog/entities/by-query?filter=${noMatchFilter}&limit=2`, { token: staticToken });
  write('catalog-by-query-no-match.json', byQueryNone);
  const byQueryNoToken = await request('GET', `/api/catalog/entities/by-query?filter=${slugFilter}&limit=2`);
  const queried = (byQuery.body?.items || []).map(e => `${e.kind}:${e.metadata?.namespace}/${e.metadata?.name}`);
  check('catalog by-query: 200 with an items array', byQuery.status === 200 && Array.isArray(byQuery.body?.items), byQuery.status);
  check('catalog by-query: a lower-cased annotation value finds the component annotated Acme/Payments', JSON.stringify(queried) === '["Component:default/payments"]', queried);
  check('catalog by-query: items carry metadata.annotations with the repository id', byQuery.body?.items?.[0]?.metadata?.annotations?.['stackpass.dev/github-repository-id'] === '42', byQuery.body?.items?.[0]?.metadata?.annotations);
  check('catalog by-query: no match is 200 with no items (not 404)', byQueryNone.status === 200 && Array.isArray(byQueryNone.body?.items) && byQueryNone.body.items.length === 0, byQueryNone);
  check('catalog by-query without token: 401', byQueryNoToken.status === 401, byQueryNoToken.status);

  // (e) the catalog without a token, with a wrong one, and with jane's user token.
  const noToken = await request('GET', '/api/catalog/entities/by-name/component/default/payments');
  write('catalog-without-token.json', noToken);
  const wrongToken = await request('GET', '/api/catalog/entities/by-name/component/default/payments', { token: 'not-the-static-token' });
  write('catalog-with-wrong-token.json', wrongToken);
  const missingNoToken = await request('GET', '/api/catalog/entities/by-name/component/default/no-such-component');
  write('catalog-missing-entity-without-token.json', missingNoToken);
  const withUserToken = await request('GET', '/api/catalog/entities/by-name/component/default/payments', { token });
  write('catalog-with-user-token.json', { request: withUserToken.request, status: withUserToken.status, headers: withUserToken.headers });
  check('catalog without token: 401', noToken.status === 401, noToken.status);
  check('catalog with wrong token: 401', wrongToken.status === 401, wrongToken.status);

  write('summary.json', {
    backstage_packages: Object.fromEntries(
      ['backend-defaults', 'plugin-auth-backend', 'plugin-auth-backend-module-guest-provider', 'plugin-catalog-backend', 'plugin-auth-node', 'catalog-model'].map(
        n => [`@backstage/${n}`, require(`@backstage/${n}/package.json`).version],
      ),
    ),
    node: process.version,
    catalog_ready_after_ms: readyAfterMs,
    discovery_issuer: discovery.body.issuer,
    jwks_uri: discovery.body.jwks_uri,
    jwks_key_count_before_first_sign_in: (jwksBefore.body.keys || []).length,
    jwks_key_count_after_sign_in: (jwks.body.keys || []).length,
    jwk_members: jwk ? Object.keys(jwk).sort() : null,
    token_header: header,
    token_claims: Object.keys(payload),
    token_has_ent: 'ent' in payload,
    token_has_uip: 'uip' in payload,
    token_lifetime_seconds: payload.exp - payload.iat,
    refresh_identity: refresh.body.backstageIdentity.identity,
    refresh_get_status: refreshGet.status,
    component_spec_owner: component.body.spec?.owner,
    component_relations: component.body.relations,
    mixed_case: {
      user_metadata_name: bob.body.metadata?.name,
      user_spec_memberOf: bob.body.spec?.memberOf,
      user_relations: bob.body.relations,
      component_metadata_name: billing.body.metadata?.name,
      component_spec_owner: billing.body.spec?.owner,
      component_relations: billing.body.relations,
    },
    discovery_issuer_when_host_header_differs: discoveryOtherHost.body?.issuer,
    component_metadata_namespace: component.body.metadata?.namespace,
    user_spec_memberOf: user.body.spec?.memberOf,
    user_relations: user.body.relations,
    group_relations: group.body.relations,
    by_name_mixed_case_status: mixedCase.status,
    missing_entity: { status: missing.status, body: missing.body },
    missing_entity_without_token_status: missingNoToken.status,
    without_token: { status: noToken.status, www_authenticate: noToken.headers['www-authenticate'] ?? null, body: noToken.body },
    wrong_token: { status: wrongToken.status, www_authenticate: wrongToken.headers['www-authenticate'] ?? null, body: wrongToken.body },
    user_token_on_catalog_status: withUserToken.status,
    failures,
  });
}

main()
  .catch(e => {
    failures.push({ check: 'probe ran to the end', detail: String(e.stack || e) });
    console.error(e);
  })
  .finally(() => {
    if (failures.length > 0) {
      console.error(`${failures.length} check(s) failed`);
      process.exitCode = 1;
    } else {
      console.log('all checks passed; observations in observed/');
    }
  });
