// examples/browser/index.html in headless Chromium, served from an origin of its own.
//
//   node tests/browser/example.test.mjs <gateway-url> <api-key>
//
// The gateway must allow the page's origin (`tests/gateway/examples.rs` starts one with
// allowed_origins = ["*"]).

import { test, after, before } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer } from 'node:http';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const [gateway, key] = process.argv.slice(2);
if (!gateway || !key) {
  console.error('usage: node example.test.mjs <gateway-url> <api-key>');
  process.exit(2);
}
const page = readFileSync(join(dirname(fileURLToPath(import.meta.url)), '../../examples/browser/index.html'));
const profile = mkdtempSync(join(tmpdir(), 'agw-chromium-'));
let context;
let server;
let origin;

before(async () => {
  server = createServer((req, res) => {
    res.writeHead(200, { 'Content-Type': 'text/html; charset=utf-8' });
    res.end(page);
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  origin = `http://127.0.0.1:${server.address().port}`;
  context = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  context.setDefaultTimeout(15_000);
});

after(async () => {
  if (context) await context.close();
  if (server) server.close();
  rmSync(profile, { recursive: true, force: true });
});

test('browser example: one answer streams from another origin', async () => {
  const p = await context.newPage();
  const errors = [];
  p.on('pageerror', (e) => errors.push(String(e)));
  await p.goto(origin + '/');
  await p.fill('#gateway', gateway);
  await p.fill('#key', key);
  await p.click('#send');
  await p.waitForFunction(() => /^done: /.test(document.getElementById('status').textContent));
  assert.match(await p.locator('#status').textContent(), /^done: stop, \d+ tokens$/);
  assert.equal(await p.locator('#answer').textContent(), '\nOkay, here is the answer: [Mock Output]');
  assert.deepEqual(errors, []);
});
