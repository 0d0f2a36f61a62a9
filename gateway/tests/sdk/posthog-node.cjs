// Drives the real posthog-node against the gateway (run by gateway/tests/sdks.rs).
// Input: OW_URL, OW_KEY (used as the project token), OW_IDS (call -> uuid).
// Output: a JSON summary line; exit 1 if the SDK reported an error.
const { PostHog } = require('posthog-node');

const ids = JSON.parse(process.env.OW_IDS);
const errors = [];
const ph = new PostHog(process.env.OW_KEY, {
  host: process.env.OW_URL, flushAt: 20, flushInterval: 0, fetchRetryCount: 1,
});
ph.on('error', (e) => errors.push(String(e && (e.message || e))));
const user = 'user-' + ids.capture;
ph.capture({ distinctId: user, uuid: ids.capture, event: 'Order Completed', properties: { revenue: 42.5 } });
ph.capture({ distinctId: user, uuid: ids.pageview, event: '$pageview',
  properties: { $current_url: 'https://shop.example/pricing', $pathname: '/pricing' } });
ph.identify({ distinctId: user, properties: { email: 'ada@example.com' } });
ph.alias({ distinctId: user, alias: 'anon-' + ids.capture });
ph.groupIdentify({ groupType: 'company', groupKey: 'acme', properties: { seats: 12 } });
ph.shutdown(20000).then(() => {
  const fs = require('fs');
  const path = require('path');
  const main = require.resolve('posthog-node');
  let dir = path.dirname(main);
  while (!fs.existsSync(path.join(dir, 'package.json')) || JSON.parse(fs.readFileSync(path.join(dir, 'package.json'))).name !== 'posthog-node') dir = path.dirname(dir);
  const version = JSON.parse(fs.readFileSync(path.join(dir, 'package.json'))).version;
  console.log(JSON.stringify({ sdk: 'posthog-node', version, errors }));
  process.exit(errors.length ? 1 : 0);
});
