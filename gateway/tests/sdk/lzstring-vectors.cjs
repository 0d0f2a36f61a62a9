// Vectors from the real lz-string (pinned in package.json) for
// gateway/tests/lzstring_peer.rs: pseudo-random texts of several kinds
// (ASCII, JSON like PostHog's bodies, repetitive, any UTF-16 including
// surrogate pairs), each with LZString.compressToBase64 of it. Deterministic.
const LZString = require('lz-string');
let seed = 12345;
const rnd = (n) => { seed = (seed * 1103515245 + 12345) % 2147483648; return seed % n; };
const kinds = [
  () => Array.from({ length: rnd(200) }, () => String.fromCharCode(32 + rnd(95))).join(''),
  () => JSON.stringify({ api_key: 'k', batch: Array.from({ length: 1 + rnd(20) }, (_, i) => ({
    event: ['$pageview', '$autocapture', 'custom'][rnd(3)], distinct_id: 'd' + rnd(5),
    properties: { $current_url: 'https://x.example/p/' + rnd(1000), n: i, ok: rnd(2) === 1 } })) }),
  () => 'ab'.repeat(rnd(500)) + 'c'.repeat(rnd(300)),
  () => Array.from({ length: rnd(100) }, () => {
    const r = rnd(10);
    if (r < 2) return String.fromCodePoint(0x1F600 + rnd(80)); // surrogate pair
    if (r < 5) return String.fromCharCode(0x400 + rnd(0x500));
    return String.fromCharCode(rnd(0xD7FF) + 1);
  }).join(''),
];
const out = [];
for (let i = 0; i < 400; i++) {
  const text = kinds[i % kinds.length]();
  out.push({ text, b64: LZString.compressToBase64(text) });
}
console.log(JSON.stringify(out));
