// Key pairs for token-sidecar's end-to-end tests, made with Node's crypto (OpenSSL):
//
//   node keys.mjs KIND...      KIND: rsa | p256 | p384 | ed25519
//
// prints one JSON array to stdout, one object per KIND in order:
//   {"kind": "p256", "pkcs8_pem": "...", "traditional_pem": "..." | null, "public_jwk": {...}}
// `traditional_pem` is PKCS#1 ("BEGIN RSA PRIVATE KEY") for RSA, SEC1 ("BEGIN EC PRIVATE KEY")
// for EC, and null for Ed25519 (which has only PKCS#8). The public JWK has no `kid`: the test
// names its keys.

import * as crypto from 'node:crypto';

function generate(kind) {
  let pair;
  let traditional;
  switch (kind) {
    case 'rsa':
      pair = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
      traditional = 'pkcs1';
      break;
    case 'p256':
      pair = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
      traditional = 'sec1';
      break;
    case 'p384':
      pair = crypto.generateKeyPairSync('ec', { namedCurve: 'P-384' });
      traditional = 'sec1';
      break;
    case 'ed25519':
      pair = crypto.generateKeyPairSync('ed25519');
      traditional = null;
      break;
    default:
      throw new Error(`unknown key kind ${kind}: use rsa, p256, p384 or ed25519`);
  }
  const { privateKey, publicKey } = pair;
  return {
    kind,
    pkcs8_pem: privateKey.export({ type: 'pkcs8', format: 'pem' }),
    traditional_pem: traditional ? privateKey.export({ type: traditional, format: 'pem' }) : null,
    public_jwk: { ...publicKey.export({ format: 'jwk' }), use: 'sig' },
  };
}

const kinds = process.argv.slice(2);
if (kinds.length === 0) {
  process.stderr.write('usage: node keys.mjs rsa|p256|p384|ed25519 ...\n');
  process.exit(2);
}
process.stdout.write(`${JSON.stringify(kinds.map(generate))}\n`);
