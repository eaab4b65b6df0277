// A real OpenID provider (npm oidc-provider) for the test world, on 127.0.0.1 only.
//
//   node tests/world/oidc/provider.mjs <state-dir>
//
// Reads <state-dir>/config.json once; re-reads <state-dir>/clients.json and
// <state-dir>/accounts.json on every lookup so a test can register a client or an
// account after start-up. Prints exactly one line `READY {"issuer": ..., "port": N}`
// on stdout when listening; everything else goes to stderr.
import { generateKeyPairSync, randomBytes, randomUUID } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { join } from 'node:path';
import process from 'node:process';

// oidc-provider prints notices with console.info (stdout); stdout is reserved for the
// READY line, so route all console output to stderr before the library loads.
const toStderr = (...args) => process.stderr.write(`${args.join(' ')}\n`);
console.log = toStderr;
console.info = toStderr;
// Two warnings are expected here and say nothing about the run: node 20 is not the
// library's preferred runtime, and the dev login/consent forms are on by design.
const EXPECTED_WARNINGS = [/Unsupported runtime/, /devInteractions is enabled/];
const warn = console.warn.bind(console);
console.warn = (...args) => {
  if (!EXPECTED_WARNINGS.some((re) => re.test(String(args[0])))) warn(...args);
};

const { default: Provider } = await import('oidc-provider');
// Deep imports: the package has no "exports" map and is pinned by package-lock.json.
const { default: MemoryAdapter } = await import('oidc-provider/lib/adapters/memory_adapter.js');
const { default: LRU } = await import('oidc-provider/lib/helpers/lru.js');

const stateDir = process.argv[2];
if (!stateDir) {
  toStderr('usage: provider.mjs <state-dir>');
  process.exit(2);
}
const readJson = (name, fallback) => {
  try {
    return JSON.parse(readFileSync(join(stateDir, name), 'utf8'));
  } catch (err) {
    if (err.code === 'ENOENT') return fallback;
    throw err;
  }
};
const config = readJson('config.json', {});
const refresh = config.refresh !== false;
const profile = config.profile ?? 'aaf';
// How ID tokens are signed: RS256 (AAF, Google) or RS384/RS512, all of which XNAT's OpenID
// plugin verifies (BearerTokenValidator.ACCEPTED_ALGORITHMS). Access tokens stay opaque.
const ID_TOKEN_ALGS = ['RS256', 'RS384', 'RS512'];
const idTokenAlg = config.id_token_alg ?? 'RS256';
if (!ID_TOKEN_ALGS.includes(idTokenAlg)) {
  toStderr(`unsupported id_token_alg ${JSON.stringify(idTokenAlg)}`);
  process.exit(2);
}

const PROFILES = {
  // AAF: one scope per attribute; claims are spelled edu_person_* (identity.md).
  aaf: {
    profile: ['name', 'given_name', 'family_name', 'preferred_username'],
    email: ['email'],
    eduperson_principal_name: ['edu_person_principal_name'],
    eduperson_scoped_affiliation: ['edu_person_scoped_affiliation'],
    eduperson_affiliation: ['edu_person_affiliation'],
    eduperson_entitlement: ['edu_person_entitlement'],
    eduperson_assurance: ['edu_person_assurance'],
    schac_home_organization: ['schac_home_organization'],
    aueduperson: ['au_edu_person_shared_token'],
    eduperson_orcid: ['edu_person_orcid'],
  },
  google: {
    email: ['email', 'email_verified', 'hd'],
    profile: ['name', 'given_name', 'family_name', 'picture', 'locale'],
  },
  generic: {
    profile: ['name', 'given_name', 'family_name', 'preferred_username'],
    email: ['email', 'email_verified'],
  },
};
if (!PROFILES[profile]) {
  toStderr(`unknown profile ${JSON.stringify(profile)}`);
  process.exit(2);
}
const claims = { openid: ['sub'], ...PROFILES[profile] };
const scopes = ['openid', ...Object.keys(PROFILES[profile])];
if (refresh) scopes.push('offline_access');

// accounts.json maps login name -> claims; the session is keyed by the opaque sub,
// because oidc-provider always publishes the accountId as `sub`.
const accounts = () => Object.entries(readJson('accounts.json', {}))
  .map(([login, c]) => ({ login, claims: { ...c, sub: c.sub ?? login } }));
const accountBySub = (sub) => accounts().find((a) => a.claims.sub === sub);
const accountByLogin = (login) => accounts().find((a) => a.login === login);

// Client lookups come from clients.json (re-read each time; oidc-provider caches a
// client by the hash of its metadata, so an edited entry takes effect). All other
// models live in memory, in a store larger than the default one so a benchmark's
// many logins do not evict a session a later test still uses.
const store = new LRU({ maxSize: 100_000 });
class Adapter {
  constructor(model) {
    this.model = model;
    this.memory = new MemoryAdapter(model, store);
  }

  async find(id) {
    if (this.model !== 'Client') return this.memory.find(id);
    const client = readJson('clients.json', {})[id];
    return client && { ...client, client_id: id };
  }

  async upsert(id, payload, expiresIn) {
    if (this.model === 'Client') throw new Error('clients are read from clients.json');
    return this.memory.upsert(id, payload, expiresIn);
  }

  findByUid(uid) { return this.memory.findByUid(uid); }

  findByUserCode(code) { return this.memory.findByUserCode(code); }

  consume(id) { return this.memory.consume(id); }

  destroy(id) { return this.memory.destroy(id); }

  revokeByGrantId(grantId) { return this.memory.revokeByGrantId(grantId); }
}

// A fresh RSA key per run, for the configured ID token algorithm; written to the state dir
// (never the repo) so tests can mint a correctly signed token with a bad claim.
const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const signingJwk = {
  ...privateKey.export({ format: 'jwk' }), kid: randomUUID(), alg: idTokenAlg, use: 'sig',
};
writeFileSync(join(stateDir, 'signing_jwk.json'), JSON.stringify(signingJwk), { mode: 0o600 });
// oidc-provider insists on an RS256 key; with another ID token algorithm it is published too,
// but ID tokens are signed with the key above (oidc-provider picks the key by its alg).
const extraJwks = idTokenAlg === 'RS256' ? [] : [{
  ...generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ format: 'jwk' }),
  kid: randomUUID(),
  alg: 'RS256',
  use: 'sig',
}];

const server = createServer();
let handler = (req, res) => { res.statusCode = 503; res.end(); };
server.on('request', (req, res) => handler(req, res));
await new Promise((resolve, reject) => {
  server.once('error', reject);
  server.listen({ host: '127.0.0.1', port: config.port ?? 0 }, resolve);
});
const { port } = server.address();
const issuer = `http://127.0.0.1:${port}`;

const provider = new Provider(issuer, {
  adapter: Adapter,
  clientDefaults: {
    grant_types: refresh ? ['authorization_code', 'refresh_token'] : ['authorization_code'],
    id_token_signed_response_alg: idTokenAlg,
    response_types: ['code'],
    // GenericOAuthenticator posts its secret in the body by default (basic_auth=False).
    token_endpoint_auth_method: 'client_secret_post',
  },
  async findAccount(_ctx, sub) {
    const account = accountBySub(sub);
    if (!account) return undefined;
    return { accountId: sub, claims: async () => ({ ...account.claims }) };
  },
  claims,
  scopes,
  // oidc-provider's default list lacks RS384/RS512; the RS256 default stays as it was
  ...(idTokenAlg === 'RS256' ? {} : { enabledJWA: { idTokenSigningAlgValues: ['RS256', idTokenAlg] } }),
  // Authorization-code flow with a client secret only, as AAF and Google offer it.
  responseTypes: ['code'],
  clientAuthMethods: ['client_secret_post', 'client_secret_basic'],
  conformIdTokenClaims: config.conform_id_token_claims !== false,
  issueRefreshToken: async (_ctx, client, code) => refresh
    && client.grantTypeAllowed('refresh_token') && code.scopes.has('offline_access'),
  jwks: { keys: [signingJwk, ...extraJwks] },
  cookies: { keys: [randomBytes(32).toString('base64url')] },
  features: {
    devInteractions: { enabled: true },
    revocation: { enabled: true },
    rpInitiatedLogout: { enabled: true },
  },
  // Loopback only: no browser makes cross-origin calls to this provider.
  clientBasedCORS: () => false,
  // oidc-provider can fetch client JWKS, request objects and metadata documents;
  // the test world must never leave 127.0.0.1, so every outbound fetch fails.
  fetch: async (url) => { throw new Error(`outbound fetch refused: ${url}`); },
  ttl: {
    AccessToken: config.access_token_ttl ?? 3600,
    AuthorizationCode: 60,
    Grant: 24 * 3600,
    IdToken: config.id_token_ttl ?? 3600,
    Interaction: 600,
    RefreshToken: 24 * 3600,
    Session: 24 * 3600,
  },
});
provider.on('server_error', (_ctx, err) => toStderr(`server_error: ${err.stack ?? err}`));

const FORM_LIMIT = 8 * 1024;
async function readForm(req) {
  let body = '';
  for await (const chunk of req) {
    body += chunk;
    if (body.length > FORM_LIMIT) throw new Error('form too large');
  }
  return new URLSearchParams(body);
}

// devInteractions logs in whatever name is typed, and the name would become `sub`.
// Intercept the login submit to look the name up in accounts.json and log in its
// opaque sub instead; an unknown name ends the interaction with access_denied.
// Consent and abort stay with devInteractions.
provider.use(async (ctx, next) => {
  if (ctx.method !== 'POST' || !/^\/interaction\/[^/]+$/.test(ctx.path)) return next();
  let details;
  try {
    details = await provider.interactionDetails(ctx.req, ctx.res);
  } catch {
    return next(); // let oidc-provider render its own error page
  }
  if (details.prompt.name !== 'login') return next();
  const form = await readForm(ctx.req);
  if (form.get('prompt') !== 'login') ctx.throw(400, 'expected the login form');
  const account = accountByLogin(form.get('login') ?? '');
  const result = account
    ? { login: { accountId: account.claims.sub } }
    : { error: 'access_denied', error_description: 'unknown account' };
  await provider.interactionFinished(ctx.req, ctx.res, result, { mergeWithLastSubmission: false });
  ctx.respond = false;
  return undefined;
});

// OpenID Connect drops offline_access unless the request also says prompt=consent;
// GenericOAuthenticator never sends a prompt. AAF-like consent on every offline
// request: add prompt=consent when the client asked for offline_access alone.
provider.use(async (ctx, next) => {
  if (refresh && ctx.method === 'GET' && ctx.path === '/auth') {
    const query = new URLSearchParams(ctx.querystring);
    if ((query.get('scope') ?? '').split(' ').includes('offline_access') && !query.has('prompt')) {
      query.set('prompt', 'consent');
      ctx.querystring = query.toString();
    }
  }
  return next();
});

handler = provider.callback();

function shutdown() {
  server.close(() => process.exit(0));
  server.closeAllConnections();
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);

process.stdout.write(`READY ${JSON.stringify({ issuer, port })}\n`);
