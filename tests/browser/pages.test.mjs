// The chat demo and the admin panel in headless Chromium.
//
//   node tests/browser/pages.test.mjs <base-url> <admin-token>
//
// Needs a gateway at <base-url> whose mock provider paces its answers (so streaming can be
// watched) and whose static admin token is <admin-token>. `tests/gateway/browser.rs` starts one
// and runs this script. Chromium is Debian's (/usr/bin/chromium, or $CHROMIUM); nothing is
// downloaded.

import { test, after, before } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import net from 'node:net';
import { chromium } from 'playwright-core';

const [base, adminToken] = process.argv.slice(2);
if (!base || !adminToken) {
  console.error('usage: node pages.test.mjs <base-url> <admin-token>');
  process.exit(2);
}
const STEP_MS = 15_000;
const profile = mkdtempSync(join(tmpdir(), 'agw-chromium-'));
let context;

before(async () => {
  context = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  context.setDefaultTimeout(STEP_MS);
});

after(async () => {
  if (context) await context.close();
  rmSync(profile, { recursive: true, force: true });
});

/** Fails the test on any uncaught error in the page. */
function watchErrors(page) {
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  return errors;
}

const name = () => 'browser_' + Math.random().toString(36).slice(2, 10);
const textOf = (page, selector) => page.locator(selector).textContent();

/** Registers, logs in and connects; answers the session id. */
async function loggedInChat(page, username) {
  await page.goto(base + '/');
  await page.fill('#username', username);
  await page.fill('#password', 'correct horse battery');
  await page.click('#register');
  await page.waitForFunction(() => /created/i.test(document.getElementById('auth-msg').textContent));
  return logIn(page, username);
}

/** Logs an existing user in on a fresh page and connects; answers the session id. */
async function logIn(page, username) {
  if (page.url() === 'about:blank') await page.goto(base + '/');
  await page.fill('#username', username);
  await page.fill('#password', 'correct horse battery');
  await page.click('#login');
  await page.waitForFunction((u) => document.getElementById('whoami').textContent.includes(u), username);
  return connect(page);
}

async function connect(page) {
  await page.click('#connect');
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

test('chat demo: log in, stream reasoning and text, cancel, disconnect', async () => {
  const page = await context.newPage();
  const errors = watchErrors(page);
  await loggedInChat(page, name());

  await page.fill('#message', 'Hello AI');
  await page.click('#send');
  const r1 = '.answer[data-request-id="r1"]';
  // Reasoning arrives piece by piece, then the text, while the answer is still running.
  const first = await grows(page, `${r1} .reasoning`, 0);
  const later = await grows(page, `${r1} .reasoning`, first);
  assert.ok(later > first, 'reasoning streams');
  const t1 = await grows(page, `${r1} .text`, 0);
  assert.equal(await page.locator(`${r1} .footer`).count(), 0, 'still running while text streams');
  await grows(page, `${r1} .text`, t1);
  await page.waitForFunction((s) => /stop/.test(document.querySelector(s)?.textContent || ''), `${r1} .footer`);
  assert.equal(await textOf(page, `${r1} .text`), '\nOkay, here is the answer: [Mock Output]');
  assert.equal(await textOf(page, `${r1} .reasoning`), 'Hmm... let me think about Hello AI...');

  // Cancel a running answer.
  await page.fill('#message', 'Please take your time');
  await page.click('#send');
  const r2 = '.answer[data-request-id="r2"]';
  await grows(page, `${r2} .reasoning`, 0);
  await page.click(`${r2} .cancel`);
  await page.waitForFunction((s) => /cancelled/.test(document.querySelector(s)?.textContent || ''), `${r2} .footer`);
  const partial = await textOf(page, `${r2} .text`);
  assert.notEqual(partial, '\nOkay, here is the answer: [Mock Output]', 'cancelled before the end');

  // Disconnect: the page says so and offers to reconnect.
  await page.click('#disconnect');
  await page.waitForFunction(() => document.getElementById('status').textContent.startsWith('disconnected: 1000'));
  assert.equal(await page.locator('#send').isDisabled(), true);
  assert.deepEqual(errors, []);
  assert.equal(await textOf(page, '#errors'), '');
  await page.close();
});

test('admin panel: a session appears, is killed, and the chat page shows the close', async () => {
  const chat = await context.newPage();
  const chatErrors = watchErrors(chat);
  const username = name();
  const sessionId = await loggedInChat(chat, username);

  const admin = await context.newPage();
  const adminErrors = watchErrors(admin);
  await admin.goto(base + '/admin');
  await admin.fill('#admin-token', adminToken);
  await admin.click('#use-token');
  const row = admin.locator(`#sessions tr[data-session-id="${sessionId}"]`);
  await row.waitFor();
  assert.match(await row.textContent(), new RegExp(username));
  await admin.waitForFunction(() => Number(document.getElementById('session-count').textContent) >= 1);
  await admin.waitForFunction(() => Number(document.getElementById('node-count').textContent) === 1);
  await admin.locator('#providers tr', { hasText: 'mock' }).first().waitFor();
  await admin.locator('#users tr', { hasText: username }).waitFor();

  // A session that connects later shows up without reloading the page.
  const second = await context.newPage();
  const later = await logIn(second, username);
  await admin.locator(`#sessions tr[data-session-id="${later}"]`).waitFor();
  await second.close();
  await admin.locator(`#sessions tr[data-session-id="${later}"]`).waitFor({ state: 'detached' });

  await admin.fill('#kill-reason', 'killed from the browser test');
  await row.locator('button.kill').click();
  await chat.waitForFunction(() =>
    document.getElementById('status').textContent === 'closed by server: 1008 killed from the browser test');
  await row.waitFor({ state: 'detached' });
  await admin.locator('#audit tr', { hasText: 'kill_session' }).first().waitFor();
  assert.deepEqual(chatErrors, []);
  assert.deepEqual(adminErrors, []);
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

test('chat demo: the network drops mid-answer, the answer on screen ends up whole', async () => {
  const p = await proxy();
  const page = await context.newPage();
  const errors = watchErrors(page);
  await page.goto(p.base + '/');
  const username = name();
  await page.fill('#username', username);
  await page.fill('#password', 'correct horse battery');
  await page.click('#register');
  await page.waitForFunction(() => /created/i.test(document.getElementById('auth-msg').textContent));
  await logIn(page, username);

  await page.fill('#message', 'Hello AI');
  await page.click('#send');
  const r1 = '.answer[data-request-id="r1"]';
  await grows(page, `${r1} .text`, 3);
  // The network goes away mid-answer, then comes back.
  await context.setOffline(true);
  p.cut();
  await page.waitForFunction(() => document.getElementById('status').textContent === 'reconnecting…');
  await new Promise((r) => setTimeout(r, 500));
  await context.setOffline(false);
  await page.waitForFunction(() => document.getElementById('status').textContent === 'connected');
  await page.waitForFunction((s) => /stop/.test(document.querySelector(s)?.textContent || ''), `${r1} .footer`);
  // Everything once, in order: what was shown before the cut and what the resume brought.
  assert.equal(await textOf(page, `${r1} .text`), '\nOkay, here is the answer: [Mock Output]');
  assert.equal(await textOf(page, `${r1} .reasoning`), 'Hmm... let me think about Hello AI...');
  assert.match(await textOf(page, `${r1} .footer`), /stop · \d+ chunks/);
  await page.screenshot({ path: join(tmpdir(), 'agw-chat-after-network-cut.png') });
  assert.deepEqual(errors, []);
  assert.equal(await textOf(page, '#errors'), '');
  await page.close();
  p.close();
});
