// The authorization server of token-sidecar's end-to-end tests: oidc-provider (panva), an
// OpenID-certified implementation, run offline on 127.0.0.1 port 0.
//
//   node server.mjs CONFIG.json
//
// Once listening it prints one JSON line to stdout:
//   {"ready":true,"port":N,"issuer":"http(s)://127.0.0.1:N","token_endpoint":...,
//    "introspection_endpoint":...,"pid":N}
// and then logs one JSON line to stderr per request (`"event":"token"` for the token endpoint,
// `"event":"request"` for any other), so a test can see which client authenticated how, the
// `jti`, `kid` and `alg` of each client assertion, the client certificate (its SHA-256
// fingerprint, whether the TLS session was resumed and how many token requests its connection
// has carried: both would carry a certificate from before a rotation), the `audience` and
// `resource` fields and what a token exchange carried. Secrets (client secrets, assertions,
// subject tokens, keys) are never logged: only their claims and fingerprints.
//
// CONFIG.json, written by the test (tests/support/oidc.rs):
// {
//   "access_token_ttl": 5,                    // seconds, default for every client
//   "clients": [ {                             // oidc-provider client metadata, plus:
//       "client_id": "...", "token_endpoint_auth_method": "private_key_jwt",
//       "jwks": {"keys": [...]}, "client_secret": "...", "grant_types": [...],
//       "token_endpoint_auth_signing_alg": "ES256", "tls_client_auth_san_dns": "...",
//       "access_token_ttl": 300 } ],            // this client's token lifetime
//   "introspector": {"client_id": "...", "client_secret": "..."},  // client_secret_basic
//   "client_auth_methods": ["private_key_jwt", ...],  // token_endpoint_auth_methods_supported
//   "https": {"cert_pem": "...", "key_pem": "...", "client_ca_pem": "..."},  // TLS + mTLS
//   "subject_token": {"issuer": "...", "jwks": {"keys": [...]}},  // token exchange
//   "serve_oauth_metadata": true,              // false: 404 at /.well-known/oauth-authorization-server
//   "exit_on_stdin_close": true                // exit when the test process goes away
// }
//
// Grants: client_credentials (with resource indicators: one `resource` gives a token whose
// `aud` is that resource) and urn:ietf:params:oauth:grant-type:token-exchange (RFC 8693,
// registered here): the `subject_token` (and `actor_token`) must be JWTs signed by a key of
// `subject_token.jwks`, issued by `subject_token.issuer`, not expired; the issued access token
// records the subject's `sub` (`exchanged_sub`), the actor's (`exchanged_act`) and every
// `audience` / `resource` value (`requested_audience`, `requested_resource`), all visible through
// introspection. Access tokens are opaque, so the introspection endpoint answers for them.

import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as https from 'node:https';

import * as jose from 'jose';
import Provider, { errors } from 'oidc-provider';

const TOKEN_EXCHANGE = 'urn:ietf:params:oauth:grant-type:token-exchange';
const JWT_TOKEN_TYPE = 'urn:ietf:params:oauth:token-type:jwt';
const ACCESS_TOKEN_TYPE = 'urn:ietf:params:oauth:token-type:access_token';

const configPath = process.argv[2];
if (!configPath) {
  process.stderr.write('usage: node server.mjs CONFIG.json\n');
  process.exit(2);
}
const cfg = JSON.parse(fs.readFileSync(configPath, 'utf8'));

function log(entry) {
  process.stderr.write(`${JSON.stringify(entry)}\n`);
}

if (cfg.exit_on_stdin_close) {
  process.stdin.on('end', () => process.exit(0));
  process.stdin.on('error', () => process.exit(0));
  process.stdin.resume();
}

// --- clients ---------------------------------------------------------------------------------

const defaultTtl = cfg.access_token_ttl ?? 300;
const ttlByClient = new Map();
// What the log uses to tell which registered key verified an assertion.
const keysByClient = new Map();

const clients = (cfg.clients ?? []).map((c) => {
  const { access_token_ttl: ttl, ...metadata } = c;
  if (ttl !== undefined) ttlByClient.set(c.client_id, ttl);
  keysByClient.set(c.client_id, { jwks: c.jwks?.keys ?? [], secret: c.client_secret });
  return {
    response_types: [],
    redirect_uris: [],
    grant_types: ['client_credentials', TOKEN_EXCHANGE],
    ...metadata,
  };
});
if (cfg.introspector) {
  clients.push({
    client_id: cfg.introspector.client_id,
    client_secret: cfg.introspector.client_secret,
    token_endpoint_auth_method: 'client_secret_basic',
    response_types: [],
    redirect_uris: [],
    grant_types: [],
  });
}

function ttlFor(client) {
  return ttlByClient.get(client?.clientId) ?? defaultTtl;
}

// --- mutual TLS ------------------------------------------------------------------------------

function peerCertificate(ctx) {
  const socket = ctx.req.socket;
  if (typeof socket?.getPeerX509Certificate !== 'function') return undefined;
  return socket.getPeerX509Certificate() ?? undefined;
}

function subjectAltNames(cert) {
  return (cert.subjectAltName ?? '').split(', ').filter(Boolean);
}

function certificateSubjectMatches(ctx, property, expected) {
  const cert = peerCertificate(ctx);
  if (!cert) return false;
  switch (property) {
    case 'tls_client_auth_san_dns':
      return subjectAltNames(cert).includes(`DNS:${expected}`);
    case 'tls_client_auth_san_uri':
      return subjectAltNames(cert).includes(`URI:${expected}`);
    case 'tls_client_auth_subject_dn':
      return cert.subject === expected;
    default:
      return false;
  }
}

function describeCert(cert, socket) {
  if (!cert) return null;
  return {
    // A resumed TLS session carries the certificate of the handshake that opened it.
    session_reused: typeof socket?.isSessionReused === 'function' ? socket.isSessionReused() : null,
    // Token requests seen on this connection so far (1: a new connection).
    connection_requests: connectionRequests(socket),
    fingerprint256: cert.fingerprint256,
    subject: cert.subject,
    subject_alt_name: cert.subjectAltName ?? null,
    valid_to: cert.validTo,
  };
}

const requestsBySocket = new WeakMap();
function connectionRequests(socket) {
  if (!socket) return null;
  const n = (requestsBySocket.get(socket) ?? 0) + 1;
  requestsBySocket.set(socket, n);
  return n;
}

// --- provider --------------------------------------------------------------------------------

const allMethods = [
  'none',
  'client_secret_basic',
  'client_secret_post',
  'client_secret_jwt',
  'private_key_jwt',
  ...(cfg.https ? ['tls_client_auth', 'self_signed_tls_client_auth'] : []),
];

const { privateKey } = await jose.generateKeyPair('RS256', { extractable: true });
const signingJwk = {
  ...(await jose.exportJWK(privateKey)),
  kid: 'provider-signing-key',
  use: 'sig',
  alg: 'RS256',
};

const configuration = {
  clients,
  clientAuthMethods: cfg.client_auth_methods ?? allMethods,
  jwks: { keys: [signingJwk] },
  cookies: { keys: [crypto.randomBytes(32).toString('hex')] },
  scopes: ['api:read', 'api:write'],
  enabledJWA: {
    clientAuthSigningAlgValues: ['HS256', 'RS256', 'PS256', 'ES256', 'ES384', 'Ed25519', 'EdDSA'],
  },
  features: {
    clientCredentials: { enabled: true },
    introspection: { enabled: true, allowedPolicy: async () => true },
    revocation: { enabled: false },
    resourceIndicators: {
      enabled: true,
      defaultResource: async () => undefined,
      useGrantedResource: async () => false,
      getResourceServerInfo: async (ctx, resource, client) => ({
        scope: 'api:read api:write',
        audience: resource,
        accessTokenTTL: ttlFor(client),
        accessTokenFormat: 'opaque',
      }),
    },
    mTLS: cfg.https
      ? {
        enabled: true,
        tlsClientAuth: true,
        selfSignedTlsClientAuth: true,
        getCertificate: peerCertificate,
        certificateAuthorized: (ctx) => ctx.req.socket.authorized === true,
        certificateSubjectMatches,
      }
      : { enabled: false },
  },
  // What a token exchange records on its token: shown by introspection.
  extraTokenClaims: async (ctx, token) => token.exchangeClaims,
  ttl: {
    AccessToken: (ctx, token, client) => ttlFor(client),
    ClientCredentials: (ctx, token, client) => ttlFor(client),
  },
};

const server = cfg.https
  ? https.createServer({
    key: cfg.https.key_pem,
    cert: cfg.https.cert_pem,
    ca: cfg.https.client_ca_pem || undefined,
    requestCert: true,
    rejectUnauthorized: false,
  })
  : http.createServer();

await new Promise((resolve, reject) => {
  server.once('error', reject);
  server.listen(0, '127.0.0.1', resolve);
});
const { port } = server.address();
const issuer = `${cfg.https ? 'https' : 'http'}://127.0.0.1:${port}`;
const provider = new Provider(issuer, configuration);

// --- token exchange (RFC 8693) ---------------------------------------------------------------

const subjectKeys = cfg.subject_token ? jose.createLocalJWKSet(cfg.subject_token.jwks) : undefined;

function list(value) {
  if (value === undefined || value === null) return [];
  return Array.isArray(value) ? value : [value];
}

async function verifyExchanged(token, name) {
  try {
    const { payload } = await jose.jwtVerify(token, subjectKeys, {
      issuer: cfg.subject_token.issuer,
      requiredClaims: ['sub', 'exp'],
    });
    return payload;
  } catch (e) {
    throw new errors.InvalidGrant(`${name} rejected: ${e.code ?? e.message}`);
  }
}

async function tokenExchange(ctx) {
  const p = ctx.oidc.params;
  const exchange = {
    subject_token_type: p.subject_token_type ?? null,
    actor_token_type: p.actor_token_type ?? null,
    requested_token_type: p.requested_token_type ?? null,
    has_actor_token: p.actor_token !== undefined,
    subject_sub: null,
    subject_exp: null,
    actor_sub: null,
  };
  ctx.state.exchange = exchange;
  if (!subjectKeys) throw new errors.UnsupportedGrantType('token exchange is not configured');
  if (!p.subject_token) throw new errors.InvalidRequest("missing required parameter 'subject_token'");
  if (p.subject_token_type !== JWT_TOKEN_TYPE) {
    throw new errors.InvalidRequest(`unsupported subject_token_type ${p.subject_token_type}`);
  }
  const subject = await verifyExchanged(p.subject_token, 'subject_token');
  exchange.subject_sub = subject.sub;
  exchange.subject_exp = subject.exp;
  let actor;
  if (p.actor_token !== undefined) {
    if (p.actor_token_type !== JWT_TOKEN_TYPE) {
      throw new errors.InvalidRequest(`unsupported actor_token_type ${p.actor_token_type}`);
    }
    actor = await verifyExchanged(p.actor_token, 'actor_token');
    exchange.actor_sub = actor.sub;
  } else if (p.actor_token_type !== undefined) {
    throw new errors.InvalidRequest('actor_token_type without actor_token');
  }
  if (p.requested_token_type !== undefined && p.requested_token_type !== ACCESS_TOKEN_TYPE) {
    throw new errors.InvalidRequest(`unsupported requested_token_type ${p.requested_token_type}`);
  }

  const token = new ctx.oidc.provider.ClientCredentials({
    client: ctx.oidc.client,
    scope: p.scope || undefined,
  });
  // oidc-provider sets `extra` from `extraTokenClaims` when saving (see the configuration).
  token.exchangeClaims = {
    exchanged_sub: subject.sub,
    exchanged_act: actor?.sub,
    requested_audience: list(p.audience),
    requested_resource: list(p.resource),
  };
  const value = await token.save();
  ctx.body = {
    access_token: value,
    issued_token_type: ACCESS_TOKEN_TYPE,
    token_type: 'Bearer',
    expires_in: token.expiration,
    scope: token.scope || undefined,
  };
}

provider.registerGrantType(
  TOKEN_EXCHANGE,
  tokenExchange,
  [
    'subject_token',
    'subject_token_type',
    'actor_token',
    'actor_token_type',
    'requested_token_type',
    'audience',
    'resource',
    'scope',
  ],
  ['audience', 'resource'],
);

// --- the log ---------------------------------------------------------------------------------

function decodeJwtPart(jwt, index) {
  try {
    return JSON.parse(Buffer.from(jwt.split('.')[index], 'base64url').toString('utf8'));
  } catch {
    return null;
  }
}

// Which registered key (its `kid`), or the client secret, verifies `assertion`: null when none.
async function verifiedBy(assertion, clientId, alg) {
  const keys = keysByClient.get(clientId);
  if (!keys || typeof alg !== 'string') return null;
  if (alg.startsWith('HS')) {
    if (!keys.secret) return null;
    try {
      await jose.compactVerify(assertion, new TextEncoder().encode(keys.secret));
      return 'client_secret';
    } catch {
      return null;
    }
  }
  for (const jwk of keys.jwks) {
    try {
      const key = await jose.importJWK({ ...jwk, alg: undefined }, alg);
      await jose.compactVerify(assertion, key);
      return jwk.kid ?? '(no kid)';
    } catch {
      // not this one
    }
  }
  return null;
}

async function describeAssertion(assertion) {
  const header = decodeJwtPart(assertion, 0) ?? {};
  const payload = decodeJwtPart(assertion, 1) ?? {};
  return {
    alg: header.alg ?? null,
    kid: header.kid ?? null,
    typ: header.typ ?? null,
    iss: payload.iss ?? null,
    sub: payload.sub ?? null,
    aud: payload.aud ?? null,
    jti: payload.jti ?? null,
    iat: payload.iat ?? null,
    exp: payload.exp ?? null,
    verified_by: await verifiedBy(assertion, payload.sub, header.alg),
  };
}

function presented(ctx, body, cert) {
  if (ctx.headers.authorization !== undefined) return 'client_secret_basic';
  if (body.client_secret !== undefined) return 'client_secret_post';
  if (body.client_assertion !== undefined) return 'client_assertion';
  if (cert) return 'client_certificate';
  return 'none';
}

provider.on('grant.error', (ctx, err) => {
  ctx.state.error = err;
});

provider.use(async (ctx, next) => {
  if (ctx.path === '/.well-known/oauth-authorization-server' && cfg.serve_oauth_metadata === false) {
    ctx.status = 404;
    ctx.body = { error: 'not_found' };
    log({ event: 'request', method: ctx.method, path: ctx.path, status: 404 });
    return;
  }
  await next();
  const route = ctx.oidc?.route;
  if (route !== 'token') {
    log({ event: 'request', method: ctx.method, path: ctx.path, route: route ?? null, status: ctx.status });
    return;
  }
  const body = ctx.oidc.body ?? {};
  const cert = peerCertificate(ctx);
  const assertion = typeof body.client_assertion === 'string' ? body.client_assertion : undefined;
  const failed = ctx.status >= 400;
  log({
    event: 'token',
    at: Date.now() / 1000,
    status: ctx.status,
    grant_type: body.grant_type ?? null,
    client_id: ctx.oidc.client?.clientId ?? body.client_id ?? null,
    // The client's registered method: the one this request was authenticated with on success.
    auth_method: ctx.oidc.client?.clientAuthMethod ?? null,
    // What the request carried.
    presented: presented(ctx, body, cert),
    form_client_id: body.client_id ?? null,
    client_assertion_type: body.client_assertion_type ?? null,
    assertion: assertion ? await describeAssertion(assertion) : null,
    cert: describeCert(cert, ctx.req.socket),
    audience: list(body.audience),
    resource: list(body.resource),
    scope: body.scope ?? null,
    exchange: ctx.state.exchange ?? null,
    // What was issued: a hash of the access token (never the token) and its lifetime.
    issued: !failed && typeof ctx.body?.access_token === 'string'
      ? {
        token_sha256: crypto.createHash('sha256').update(ctx.body.access_token).digest('hex'),
        expires_in: ctx.body.expires_in ?? null,
      }
      : null,
    error: failed ? (ctx.body?.error ?? null) : null,
    error_description: failed ? (ctx.body?.error_description ?? null) : null,
    error_detail: failed ? (ctx.state.error?.error_detail ?? ctx.state.error?.message ?? null) : null,
  });
});

server.on('request', provider.callback());

process.stdout.write(`${JSON.stringify({
  ready: true,
  port,
  issuer,
  token_endpoint: `${issuer}/token`,
  introspection_endpoint: `${issuer}/token/introspection`,
  pid: process.pid,
})}\n`);
