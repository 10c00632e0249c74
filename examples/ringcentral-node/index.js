// The RingCentral JS SDK behind token-sidecar.
//
// With `authProxy: true` the SDK sends no Authorization header and never logs in, refreshes or
// logs out: token-sidecar, listening on `server`, owns the token. Every instance of this app,
// however many, shares the sidecar's one session.
//
//   cargo run --release --features dev -- dev   # or a real sidecar in front of platform.ringcentral.com
//   npm install && node index.js
'use strict';

const { SDK } = require('@ringcentral/sdk');

const sdk = new SDK({
  server: process.env.SIDECAR_URL || 'http://localhost:8080',
  // Sent as the Client-Id header only; the sidecar holds the real credentials.
  clientId: process.env.RC_CLIENT_ID || 'token-sidecar',
  authProxy: true,
});
const platform = sdk.platform();

async function main() {
  const count = Number(process.env.REQUESTS || 3);
  for (let i = 0; i < count; i++) {
    const res = await platform.get('/restapi/v1.0/account/~/extension/~');
    const body = await res.json();
    console.log(JSON.stringify({ status: res.status, path: body.path, session: body.session_id }));
  }
}

main().catch((e) => {
  // ApiError carries the response; print its status and RingCentral's error code, not headers.
  const status = e.response ? e.response.status : undefined;
  console.error(JSON.stringify({ error: e.message, status }));
  process.exit(1);
});
