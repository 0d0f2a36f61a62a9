// Drives the real @segment/analytics-node against the gateway (run by
// gateway/tests/sdks.rs). Input: OW_URL, OW_WRITE_KEY, OW_IDS (a JSON object
// of call -> messageId). Output: one JSON line per call with its HTTP status,
// then exit 0, or exit 1 naming the SDK's error.
const { Analytics } = require('@segment/analytics-node');

const ids = JSON.parse(process.env.OW_IDS);
const statuses = [];
const analytics = new Analytics({
  writeKey: process.env.OW_WRITE_KEY,
  host: process.env.OW_URL,
  flushAt: 20,
  maxRetries: 2,
});
const errors = [];
analytics.on('error', (e) => errors.push(String(e && (e.reason || e.message || e.code || e))));
analytics.on('http_request', (r) => statuses.push(r));

const user = 'user-' + ids.track;
const anon = 'anon-' + ids.track;
analytics.page({ anonymousId: anon, messageId: ids.page, name: 'Pricing',
  properties: { path: '/pricing', url: 'https://shop.example/pricing', referrer: 'https://search.example/' } });
analytics.track({ userId: user, anonymousId: anon, messageId: ids.track, event: 'Order Completed',
  properties: { revenue: 42.5, currency: 'EUR' } });
analytics.identify({ userId: user, anonymousId: anon, messageId: ids.identify, traits: { email: 'ada@example.com', plan: 'pro' } });
analytics.alias({ userId: user, previousId: anon, messageId: ids.alias });
analytics.group({ userId: user, groupId: 'acme', messageId: ids.group, traits: { seats: 12 } });
analytics.screen({ userId: user, messageId: ids.screen, name: 'Checkout' });

analytics.closeAndFlush({ timeout: 20000 }).then(() => {
  const version = require('@segment/analytics-node/package.json').version;
  console.log(JSON.stringify({ sdk: '@segment/analytics-node', version, requests: statuses.length, errors }));
  process.exit(errors.length ? 1 : 0);
});
