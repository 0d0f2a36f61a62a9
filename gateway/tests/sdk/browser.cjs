// Drives headless Chromium (Debian's /usr/bin/chromium through playwright-core)
// on a page of its own origin that runs posthog-js and @segment/analytics-next
// from node_modules (no CDN) and sends native /ingest requests through fetch
// and sendBeacon; run by gateway/tests/browser.rs.
// Input: OW_CONFIG (JSON: gw, key, run, page_port, fetch_id, beacon_id, session).
// Output: a JSON summary line once it has left the page (`left: true`), then
// it waits for a line on stdin before closing the browser; exit 1 on failure.
const http = require('http');
const fs = require('fs');
const path = require('path');
const zlib = require('zlib');
const { chromium } = require('playwright-core');

const cfg = JSON.parse(process.env.OW_CONFIG);
function packageDir(name) {
  let dir = path.dirname(require.resolve(name));
  while (!(fs.existsSync(path.join(dir, 'package.json')) &&
           JSON.parse(fs.readFileSync(path.join(dir, 'package.json'))).name === name)) {
    dir = path.dirname(dir);
  }
  return dir;
}
const posthogJs = path.join(packageDir('posthog-js'), 'dist', 'array.full.js');
const segmentDir = path.join(packageDir('@segment/analytics-next'), 'dist', 'umd');
const version = (name) => JSON.parse(fs.readFileSync(path.join(packageDir(name), 'package.json'))).version;

const page = `<!doctype html><html><head><title>Overwatch browser test</title>
<script src="/posthog.js"></script><script src="/segment/index.js"></script></head>
<body><button id="buy">Buy now</button> <a id="away" href="/other">away</a>
<script>
const cfg = ${JSON.stringify(cfg)};
posthog.init(cfg.key, { api_host: cfg.gw, autocapture: true, capture_pageview: true,
  opt_out_useragent_filter: true, disable_session_recording: true, persistence: 'memory',
  request_batching: false });
posthog.capture('ow-posthog-custom', { run: cfg.run });
posthog.identify('ph-user-' + cfg.run);
const seg = AnalyticsNext.AnalyticsBrowser.load({ writeKey: cfg.key, cdnURL: cfg.gw });
seg.page({ run: cfg.run });
seg.track('ow-segment-track', { run: cfg.run });
seg.identify('seg-user-' + cfg.run, { plan: 'pro' });
fetch(cfg.gw + '/ingest', { method: 'POST',
  headers: { authorization: 'Bearer ' + cfg.key, 'content-type': 'application/json' },
  body: JSON.stringify({ events: [{ id: cfg.fetch_id, session_id: cfg.session, type: 'custom',
    name: 'ow-native-fetch', timestamp: new Date().toISOString(), user_id: 'native-' + cfg.run }] }) })
  .then((r) => { window.fetchStatus = r.status; }, (e) => { window.fetchStatus = String(e); });
addEventListener('pagehide', () => {
  fetch(cfg.gw + '/ingest', { method: 'POST', keepalive: true,
    headers: { authorization: 'Bearer ' + cfg.key, 'content-type': 'application/json' },
    body: JSON.stringify({ events: [{ id: cfg.keepalive_id, session_id: cfg.session, type: 'custom',
      name: 'ow-native-keepalive', timestamp: new Date().toISOString(), anonymous_id: 'native-' + cfg.run }] }) });
});
document.getElementById('away').addEventListener('click', () => {
  window.beaconQueued = navigator.sendBeacon(cfg.gw + '/ingest?api_key=' + encodeURIComponent(cfg.key),
    JSON.stringify({ events: [{ id: cfg.beacon_id, session_id: cfg.session, type: 'pageview',
      path: '/leaving', timestamp: new Date().toISOString(), anonymous_id: 'native-' + cfg.run }] }));
});
</script></body></html>`;

const server = http.createServer((req, res) => {
  const send = (type, body) => { res.writeHead(200, { 'content-type': type }); res.end(body); };
  if (req.url === '/' || req.url.startsWith('/?')) return send('text/html', page);
  if (req.url === '/other') return send('text/html', '<!doctype html><title>other</title>elsewhere');
  if (req.url === '/posthog.js') return send('application/javascript', fs.readFileSync(posthogJs));
  if (req.url.startsWith('/segment/')) {
    const f = path.join(segmentDir, path.basename(req.url.slice(9)));
    if (fs.existsSync(f)) return send('application/javascript', fs.readFileSync(f));
  }
  res.writeHead(404); res.end();
});

// Event names whose request the gateway acknowledged (2xx), read from the
// requests themselves (posthog-js: gzip, base64 forms or JSON; Segment: JSON).
const acked = new Set();
function eventNames(buf) {
  let b = buf;
  if (b.slice(0, 5).toString() === 'data=') {
    b = Buffer.from(decodeURIComponent(b.slice(5).toString()), 'base64');
  }
  if (b[0] === 0x1f && b[1] === 0x8b) b = zlib.gunzipSync(b);
  const j = JSON.parse(b.toString());
  if (j.events) return j.events.map((e) => e.name || e.path); // native /ingest
  const list = Array.isArray(j) ? j : (j.batch || [j]);
  return list.map((e) => e.event || e.type);
}
async function until(what, names, timeoutMs) {
  const deadline = Date.now() + timeoutMs;
  while (!names.every((n) => acked.has(n))) {
    if (Date.now() > deadline) throw new Error(`${what}: not acknowledged: ${names.filter((n) => !acked.has(n))}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

server.listen(cfg.page_port, '127.0.0.1', async () => {
  const errors = [];
  const browser = await chromium.launch({
    executablePath: process.env.OW_CHROMIUM || '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-quic',
      '--no-first-run', '--disable-component-update', '--disable-sync'],
  });
  try {
    const context = await browser.newContext();
    const p = await context.newPage();
    p.on('console', (m) => { if (m.type() === 'error') errors.push(m.text()); });
    p.on('pageerror', (e) => errors.push(String(e)));
    // Context-wide: requests a page makes while it unloads count too.
    context.on('requestfinished', async (req) => {
      try {
        const resp = await req.response();
        const body = req.postDataBuffer();
        if (resp && resp.ok() && body && req.url().startsWith(cfg.gw)) {
          for (const n of eventNames(body)) acked.add(n);
        }
      } catch (e) { /* not an event request */ }
    });
    await p.goto(`http://127.0.0.1:${cfg.page_port}/`);
    await p.waitForFunction(() => window.fetchStatus !== undefined, null, { timeout: 15000 });
    // Wait for the gateway's acknowledgements, not for time: what the SDKs
    // sent before the click, then the click, then leave the page.
    await until('before the click', ['$pageview', 'ow-posthog-custom', '$identify', 'page', 'ow-segment-track', 'identify'], 20000);
    await p.click('#buy');
    await until('the click', ['$autocapture'], 20000);
    const beforeUnload = await p.evaluate(() => ({ fetch: window.fetchStatus }));
    await p.click('#away');
    await p.waitForURL('**/other');
    // The page is gone; its unload deliveries (posthog-js's $pageleave, the
    // native beacon and keepalive fetch) are the browser's to finish. Keep it
    // open until the test has found them in ClickHouse and says `close`.
    console.log(JSON.stringify({ left: true, fetch: beforeUnload.fetch, errors,
      posthog_js: version('posthog-js'), analytics_next: version('@segment/analytics-next'),
      chromium: browser.version() }));
    await new Promise((resolve) => { process.stdin.once('data', resolve); process.stdin.once('end', resolve); });
    await browser.close();
    server.close();
    process.exit(beforeUnload.fetch === 200 ? 0 : 1);
  } catch (e) {
    console.log(JSON.stringify({ failed: String(e), errors }));
    await browser.close();
    process.exit(1);
  }
});
