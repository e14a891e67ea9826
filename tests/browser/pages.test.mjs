// The chat page and the admin panel in headless Chromium, at desktop (1280x800) and phone
// (375x740) width.
//
//   node --experimental-websocket tests/browser/pages.test.mjs <base-url> <admin-token> [screenshot-dir]
//
// Needs a gateway at <base-url> whose mock provider paces its answers (so streaming can be
// watched), whose static admin token is <admin-token>, with the models `echo` (the fake
// upstream's: answers the message back, so a test chooses the Markdown) and `broken` (always
// fails). `tests/gateway/browser.rs` starts one and runs this script. Chromium is Debian's
// (/usr/bin/chromium, or $CHROMIUM); nothing is downloaded. Screenshots go to [screenshot-dir].

import { test, after, before } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import net from 'node:net';
import { chromium } from 'playwright-core';

const [base, adminToken, shots = join(tmpdir(), 'agw-screenshots')] = process.argv.slice(2);
if (!base || !adminToken) {
  console.error('usage: node pages.test.mjs <base-url> <admin-token> [screenshot-dir]');
  process.exit(2);
}
mkdirSync(shots, { recursive: true });
const STEP_MS = 15_000;
const DESKTOP = { width: 1280, height: 800 };
const PHONE = { width: 375, height: 740 };
const MOCK_TEXT = 'Okay, here is the answer: [Mock Output]';
const profile = mkdtempSync(join(tmpdir(), 'agw-chromium-'));
let context;

before(async () => {
  context = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    viewport: DESKTOP,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  context.setDefaultTimeout(STEP_MS);
});

after(async () => {
  if (context) await context.close();
  rmSync(profile, { recursive: true, force: true });
});

/** A new page of `size`, whose uncaught errors are collected in `page.errors`. */
async function newPage(size = DESKTOP) {
  const page = await context.newPage();
  await page.setViewportSize(size);
  page.errors = [];
  page.on('pageerror', (e) => page.errors.push(String(e)));
  return page;
}

const shot = (page, name) => page.screenshot({ path: join(shots, name + '.png'), fullPage: true });
const name = () => 'browser_' + Math.random().toString(36).slice(2, 10);
const textOf = (page, selector) => page.locator(selector).textContent();
const PASSWORD = 'correct horse battery';

/** Registers and logs in on the chat page at `url`; the page connects by itself. */
async function signUp(page, username, url = base) {
  await page.goto(url + '/');
  await page.fill('#username', username);
  await page.fill('#password', PASSWORD);
  await page.click('#register');
  await page.waitForFunction(() => /created/i.test(document.getElementById('auth-msg').textContent));
  return logIn(page, username, url);
}

/** Logs an existing user in and waits for the connection; answers the session id. */
async function logIn(page, username, url = base) {
  if (page.url() === 'about:blank') await page.goto(url + '/');
  await page.fill('#username', username);
  await page.fill('#password', PASSWORD);
  await page.click('#login');
  await page.waitForFunction((u) => document.getElementById('whoami').textContent.includes(u), username);
  await page.waitForFunction(() => document.getElementById('status').textContent === 'connected');
  await page.waitForFunction(() => document.getElementById('session-id').textContent !== '–');
  return textOf(page, '#session-id');
}

/** Waits until the length of `selector`'s text exceeds `n`; answers the length seen. */
async function grows(page, selector, n) {
  const handle = await page.waitForFunction(([s, min]) => {
    const e = document.querySelector(s);
    return e && e.textContent.length > min ? e.textContent.length : false;
  }, [selector, n]);
  return handle.jsonValue();
}

const answer = (id) => `.answer[data-request-id="${id}"]`;
async function finished(page, id, pattern = /stop/) {
  await page.waitForFunction(([s, p]) => new RegExp(p).test(document.querySelector(s)?.textContent || ''),
    [`${answer(id)} .footer`, pattern.source]);
}

async function ask(page, content, model) {
  if (model) await page.selectOption('#model', model);
  await page.fill('#message', content);
  await page.click('#send');
}

test('chat page: stream, stop, Markdown rendered safely, models, errors inline, tokens', async () => {
  const page = await newPage();
  await signUp(page, name());
  const models = await page.locator('#model option').allTextContents();
  for (const m of ['mock', 'echo', 'broken']) assert.ok(models.includes(m), `model picker lists ${m}: ${models}`);

  await ask(page, 'Hello AI', 'mock');
  // Reasoning arrives piece by piece, then the text, while the answer still runs.
  const first = await grows(page, `${answer('r1')} .reasoning`, 0);
  assert.ok(await grows(page, `${answer('r1')} .reasoning`, first) > first, 'reasoning streams');
  await grows(page, `${answer('r1')} .text`, 0);
  assert.equal(await page.locator(`${answer('r1')} .footer`).count(), 0, 'still running while text streams');
  await finished(page, 'r1');
  assert.equal((await textOf(page, `${answer('r1')} .text`)).trim(), MOCK_TEXT);
  assert.equal(await textOf(page, `${answer('r1')} .reasoning`), 'Hmm... let me think about Hello AI...');
  assert.match(await textOf(page, `${answer('r1')} .footer`), /^stop · \d+ chunks · \d+ tokens/);
  await page.waitForFunction(() => /^[1-9]\d* tokens today$/.test(document.getElementById('tokens-today').textContent));

  // The stop button ends a running answer.
  await ask(page, 'Please take your time');
  await grows(page, `${answer('r2')} .reasoning`, 0);
  await page.click(`${answer('r2')} .cancel`);
  await finished(page, 'r2', /cancelled/);
  assert.notEqual((await textOf(page, `${answer('r2')} .text`)).trim(), MOCK_TEXT, 'stopped before the end');

  // Another model; its answer is Markdown with a code block and a hostile image and script.
  const markdown = 'Here is **bold** and `inline`.\n\n```rust\nfn main() { println!("<hi>"); }\n```\n\n' +
    '<img src=x onerror="window.pwned=1"> <script>window.pwned=2</script> [link](javascript:window.pwned=3)';
  await ask(page, markdown, 'echo');
  await finished(page, 'r3');
  const r3 = answer('r3');
  assert.equal(await textOf(page, `${r3} .text strong`), 'bold');
  assert.equal(await textOf(page, `${r3} .text pre code`), 'fn main() { println!("<hi>"); }\n');
  assert.equal(await page.locator(`${r3} .text code`).first().textContent(), 'inline');
  assert.equal(await page.locator(`${r3} .text script, ${r3} [onerror]`).count(), 0, 'sanitized');
  const href = await page.locator(`${r3} .text a`).getAttribute('href');
  assert.ok(!href || !href.startsWith('javascript:'), `no javascript: link (${href})`);
  if (href === null) assert.equal(await textOf(page, `${r3} .text a`), 'link');
  await page.locator(`${r3} .text a`).click().catch(() => {});
  assert.equal(await page.evaluate(() => window.pwned), undefined, 'nothing ran');

  // A failing model: the error shows in its answer, the page goes on.
  await ask(page, 'are you there?', 'broken');
  await page.locator(`${answer('r4')} .error`).waitFor();
  assert.match(await textOf(page, `${answer('r4')} .error`), /error 5\d\d/);
  await ask(page, 'still here?', 'mock');
  await finished(page, 'r5');
  await shot(page, 'chat-desktop');
  assert.deepEqual(page.errors, []);
  assert.equal(await textOf(page, '#errors'), '');
  await page.close();
});

test('chat page: conversations are listed, continued after a reload, and deleted', async () => {
  const page = await newPage();
  const username = name();
  await signUp(page, username);
  await ask(page, 'first question', 'echo');
  await finished(page, 'r1');
  const item = page.locator('#conversations li', { hasText: 'first question' });
  await item.waitFor();
  const id = await item.getAttribute('data-conversation-id');

  // A new conversation starts empty; the first one is still listed.
  await page.click('#new-chat');
  assert.equal(await page.locator('#log .bubble').count(), 0);
  await ask(page, 'other topic', 'mock');
  await finished(page, 'r2');
  await page.locator('#conversations li', { hasText: 'other topic' }).waitFor();

  // After a reload the conversation opens with its turns, rendered, and goes on.
  await page.reload();
  await page.waitForFunction(() => document.getElementById('status').textContent === 'connected');
  await page.locator(`#conversations li[data-conversation-id="${id}"] button.open`).click();
  await page.waitForFunction(() => document.querySelectorAll('#log .bubble').length === 2);
  assert.equal(await textOf(page, '#log .bubble.user'), 'first question');
  assert.equal((await textOf(page, '#log .answer.stored .text')).trim(), 'first question');
  await ask(page, 'second question', 'echo');
  await finished(page, 'r1');
  // The store has all four turns once the answer is written.
  await page.waitForFunction(async (cid) => {
    const res = await fetch('/v1/conversations/' + cid, { headers: { Authorization: 'Bearer ' + sessionStorage.getItem('token') } });
    const body = await res.json();
    return body.total === 4 && body.messages[2].content === 'second question';
  }, id, { polling: 200 });

  // Deleting removes it from the list and from the store.
  await page.locator(`#conversations li[data-conversation-id="${id}"] button.delete`).click();
  await page.locator(`#conversations li[data-conversation-id="${id}"]`).waitFor({ state: 'detached' });
  assert.equal(await page.locator('#log .bubble').count(), 0, 'the open conversation was the deleted one');
  const status = await page.evaluate(async (cid) => (await fetch('/v1/conversations/' + cid,
    { headers: { Authorization: 'Bearer ' + sessionStorage.getItem('token') } })).status, id);
  assert.equal(status, 404);
  assert.deepEqual(page.errors, []);
  await page.close();
});

test('chat page: API keys are created, shown once, used and revoked', async () => {
  const page = await newPage();
  await signUp(page, name());
  await page.click('#nav-keys');
  await page.fill('#key-name', 'my script');
  await page.selectOption('#key-expiry', '2592000');
  await page.click('#create-key');
  await page.locator('#new-key:not(.hidden)').waitFor();
  const key = await textOf(page, '#new-key-value');
  assert.match(key, /^\w+_\w+$/);
  const row = page.locator('#keys tr', { hasText: 'my script' });
  await row.waitFor();
  assert.match(await row.textContent(), /active/);
  assert.ok(!(await row.textContent()).includes(key), 'the table never shows the key');
  await page.click('#copy-key');
  await page.waitForFunction(() => document.getElementById('copy-msg').textContent !== '');
  await shot(page, 'keys-desktop');

  const works = (k) => page.evaluate(async (k) => (await fetch('/v1/models', { headers: { Authorization: 'Bearer ' + k } })).status, k);
  assert.equal(await works(key), 200);
  // Leaving the tab forgets the key.
  await page.click('#nav-chat');
  await page.click('#nav-keys');
  assert.equal(await page.locator('#new-key.hidden').count(), 1);
  assert.equal(await textOf(page, '#new-key-value'), '');

  await row.locator('button.revoke').click();
  await page.waitForFunction(() => /revoked/.test(document.querySelector('#keys tr')?.textContent || ''));
  assert.equal(await works(key), 401);
  assert.deepEqual(page.errors, []);
  await page.close();
});

test('chat page at phone width, and in dark mode', async () => {
  const page = await newPage(PHONE);
  await signUp(page, name());
  await ask(page, 'Hello from a phone', 'mock');
  await finished(page, 'r1');
  const fits = () => page.evaluate(() => document.documentElement.scrollWidth <= window.innerWidth);
  assert.ok(await fits(), 'no sideways scrolling at 375 px');
  for (const id of ['send', 'message', 'model']) {
    const box = await page.locator('#' + id).boundingBox();
    assert.ok(box && box.x >= 0 && box.x + box.width <= PHONE.width, `#${id} is on screen: ${JSON.stringify(box)}`);
  }
  // The conversation list folds away on a phone and opens on demand.
  assert.equal(await page.locator('#conversations').isVisible(), false);
  await page.click('#toggle-sidebar');
  await page.locator('#conversations li', { hasText: 'Hello from a phone' }).waitFor();
  await shot(page, 'chat-phone');
  await page.click('#nav-keys');
  assert.ok(await fits(), 'the keys page fits too');
  await shot(page, 'keys-phone');

  await page.emulateMedia({ colorScheme: 'dark' });
  await page.click('#nav-chat');
  const bg = await page.evaluate(() => getComputedStyle(document.body).backgroundColor);
  const [r, g, b] = bg.match(/\d+/g).map(Number);
  assert.ok(r + g + b < 120, `a dark background in dark mode: ${bg}`);
  await shot(page, 'chat-phone-dark');
  await page.emulateMedia({ colorScheme: 'light' });
  assert.deepEqual(page.errors, []);
  await page.close();
});

/** A TCP proxy to the gateway whose `cut()` drops every open connection (new ones are served). */
function proxy() {
  const upstream = new URL(base);
  const sockets = new Set();
  const server = net.createServer((client) => {
    const remote = net.connect(Number(upstream.port), upstream.hostname);
    for (const s of [client, remote]) sockets.add(s);
    client.pipe(remote);
    remote.pipe(client);
    const drop = () => { client.destroy(); remote.destroy(); sockets.delete(client); sockets.delete(remote); };
    for (const s of [client, remote]) { s.on('error', drop); s.on('close', drop); }
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve({
    base: `http://127.0.0.1:${server.address().port}`,
    cut() { for (const s of sockets) s.destroy(); sockets.clear(); },
    close() { this.cut(); server.close(); },
  })));
}

for (const [label, size] of [['desktop', DESKTOP], ['phone', PHONE]]) {
  test(`chat page (${label}): the network drops mid-answer, the answer ends up whole`, async () => {
    const p = await proxy();
    const page = await newPage(size);
    await signUp(page, name(), p.base);
    await ask(page, 'Hello AI', 'mock');
    await grows(page, `${answer('r1')} .text`, 3);
    // The network goes away mid-answer, then comes back.
    await context.setOffline(true);
    p.cut();
    await page.waitForFunction(() => document.getElementById('status').textContent === 'reconnecting…');
    await new Promise((r) => setTimeout(r, 500));
    await context.setOffline(false);
    await page.waitForFunction(() => document.getElementById('status').textContent === 'connected');
    await finished(page, 'r1');
    // Everything once, in order: what was shown before the cut and what the resume brought.
    assert.equal(await page.locator(answer('r1')).getAttribute('data-raw'), '\n' + MOCK_TEXT);
    assert.equal((await textOf(page, `${answer('r1')} .text`)).trim(), MOCK_TEXT);
    assert.equal(await textOf(page, `${answer('r1')} .reasoning`), 'Hmm... let me think about Hello AI...');
    assert.match(await textOf(page, `${answer('r1')} .footer`), /^stop · \d+ chunks/);
    await shot(page, `chat-after-network-cut-${label}`);
    assert.deepEqual(page.errors, []);
    assert.equal(await textOf(page, '#errors'), '');
    await page.close();
    p.close();
  });
}

/** Opens `n` WebSocket sessions for `token` from Node; answers a function closing them all. */
async function sessions(token, n) {
  const url = base.replace(/^http/, 'ws') + '/chat?token=' + encodeURIComponent(token);
  const sockets = await Promise.all(Array.from({ length: n }, () => new Promise((resolve, reject) => {
    const ws = new WebSocket(url);
    ws.onmessage = () => resolve(ws);
    ws.onerror = () => reject(new Error('websocket failed'));
  })));
  return () => sockets.forEach((ws) => ws.close());
}

async function adminPanel(size = DESKTOP) {
  const admin = await newPage(size);
  await admin.goto(base + '/admin');
  await admin.fill('#admin-token', adminToken);
  await admin.click('#use-token');
  await admin.locator('#panel:not(.hidden)').waitFor();
  return admin;
}

test('admin panel: sessions paged past 200 and filtered, nodes, usage charts, providers, keys, audit', async () => {
  // A user with 205 sessions, and one who chats, makes a key and hits the broken model.
  const crowd = name();
  const chat = await newPage();
  await signUp(chat, crowd);
  const token = await chat.evaluate(() => sessionStorage.getItem('token'));
  const closeAll = await sessions(token, 204);
  try {
    await crowdOnAdmin(chat, crowd, closeAll);
  } finally {
    closeAll();
  }
});

async function crowdOnAdmin(chat, crowd, closeAll) {
  await ask(chat, 'Hello AI', 'mock');
  await finished(chat, 'r1');
  await ask(chat, 'and you?', 'broken');
  await chat.locator(`${answer('r2')} .error`).waitFor();
  const key = await chat.evaluate(async () => (await (await fetch('/v1/keys', {
    method: 'POST',
    headers: { Authorization: 'Bearer ' + sessionStorage.getItem('token'), 'Content-Type': 'application/json' },
    body: JSON.stringify({ name: 'for the admin' }),
  })).json()).id);

  const admin = await adminPanel();
  await admin.fill('#filter-user', crowd);
  await admin.waitForFunction(() => /of 205$/.test(document.getElementById('sessions-range').textContent));
  await admin.selectOption('#page-size', '100');
  await admin.waitForFunction(() => document.getElementById('sessions-range').textContent === '1–100 of 205');
  assert.equal(await admin.locator('#sessions tr').count(), 100);
  await admin.click('#sessions-next');
  await admin.click('#sessions-next');
  await admin.waitForFunction(() => document.getElementById('sessions-range').textContent === '201–205 of 205');
  assert.equal(await admin.locator('#sessions tr').count(), 5);
  assert.equal(await admin.locator('#sessions-next').isDisabled(), true);
  // Filters: the model of the latest request; a node that does not exist.
  await admin.fill('#filter-model', 'broken');
  await admin.waitForFunction(() => document.getElementById('sessions-range').textContent === '1–1 of 1');
  await admin.fill('#filter-model', '');
  await admin.fill('#filter-node', 'no-such-node');
  await admin.waitForFunction(() => document.getElementById('sessions-range').textContent === '0–0 of 0');
  await admin.fill('#filter-node', '');

  // The node and its figures; the usage charts; the providers' health.
  const node = admin.locator('#nodes tr').first();
  await admin.waitForFunction(() => /serving/.test(document.querySelector('#nodes tr')?.textContent || ''));
  assert.match(await node.textContent(), /\d+(\.\d)? MiB/);
  await admin.locator(`#chart-users rect[data-series="${crowd}"]`).first().waitFor();
  await admin.locator('#chart-models rect[data-series="mock"]').first().waitFor();
  assert.ok(Number(await admin.locator(`#chart-users rect[data-series="${crowd}"]`).first().getAttribute('data-tokens')) > 0);
  const broken = admin.locator('#providers tr[data-model="broken"]');
  // `broken` and `echo` share the fake upstream, whose breaker counts both: some calls failed.
  await admin.waitForFunction(() => /[1-9]\d*% of \d+/.test(document.querySelector('#providers tr[data-model="broken"]')?.textContent || ''));
  assert.match(await broken.textContent(), /closed/);
  assert.equal(await admin.getByText('Circuit-breaker state is not reported yet').count(), 0);

  // The user's keys, revoked from the panel; the audit trail shows it, filtered.
  await admin.locator('#users tr', { hasText: crowd }).locator('button.keys').click();
  const keyRow = admin.locator(`#keys tr[data-key-id="${key}"]`);
  await keyRow.waitFor();
  await keyRow.locator('button.revoke').click();
  await admin.waitForFunction((k) => /revoked/.test(document.querySelector(`#keys tr[data-key-id="${k}"]`)?.textContent || ''), key);
  await admin.locator('#audit tr', { hasText: 'revoke_api_key' }).first().waitFor();
  await admin.fill('#audit-filter', 'revoke');
  assert.ok(await admin.locator('#audit tr').count() >= 1);
  for (const text of await admin.locator('#audit tr').allTextContents()) assert.match(text, /revoke/);
  await admin.fill('#audit-filter', '');
  await shot(admin, 'admin-desktop');

  closeAll();
  await admin.fill('#filter-user', crowd);
  await admin.waitForFunction(() => /of 1$/.test(document.getElementById('sessions-range').textContent));
  assert.deepEqual(chat.errors, []);
  assert.deepEqual(admin.errors, []);
  await chat.close();
  await admin.close();
}

for (const [label, size] of [['desktop', DESKTOP], ['phone', PHONE]]) {
  test(`admin panel (${label}): killing a session closes the victim's socket`, async () => {
    const chat = await newPage(size);
    const username = name();
    const sessionId = await signUp(chat, username);
    const admin = await adminPanel(size);
    const row = admin.locator(`#sessions tr[data-session-id="${sessionId}"]`);
    await admin.fill('#filter-user', username);
    await row.waitFor();
    assert.match(await row.textContent(), new RegExp(username));

    // A session that connects later shows up without reloading the page, and leaves.
    const second = await newPage(size);
    const later = await logIn(second, username);
    await admin.locator(`#sessions tr[data-session-id="${later}"]`).waitFor();
    await second.close();
    await admin.locator(`#sessions tr[data-session-id="${later}"]`).waitFor({ state: 'detached' });

    await admin.fill('#kill-reason', 'killed from the browser test');
    if (label === 'phone') {
      assert.ok(await admin.evaluate(() => document.documentElement.scrollWidth <= window.innerWidth), 'no sideways scrolling');
      await shot(admin, 'admin-phone');
    }
    await row.locator('button.kill').click();
    await chat.waitForFunction(() =>
      document.getElementById('status').textContent === 'closed by server: 1008 killed from the browser test');
    await row.waitFor({ state: 'detached' });
    await admin.locator('#audit tr', { hasText: 'kill_session' }).first().waitFor();
    await shot(chat, `chat-killed-${label}`);
    assert.deepEqual(chat.errors, []);
    assert.deepEqual(admin.errors, []);
    await chat.close();
    await admin.close();
  });
}
