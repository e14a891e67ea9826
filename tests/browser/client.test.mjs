// web/gateway-client.js against a real gateway, through a TCP proxy that cuts every connection
// mid-answer (the network dropping under the client):
//
//   node --experimental-websocket tests/browser/client.test.mjs <base-url>
//
// `tests/gateway/client_library.rs` starts a gateway with a paced mock and runs this script.

import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { GatewayClient, backoffDelay } from '../../web/gateway-client.js';

const [base] = process.argv.slice(2);
if (!base) {
  console.error('usage: node --experimental-websocket client.test.mjs <base-url>');
  process.exit(2);
}
const upstream = new URL(base);
const MOCK_TEXT = '\nOkay, here is the answer: [Mock Output]';

/** A TCP proxy to the gateway whose `cut()` drops every open connection (new ones are served). */
function proxy() {
  const sockets = new Set();
  const server = net.createServer((client) => {
    const remote = net.connect(Number(upstream.port), upstream.hostname);
    sockets.add(client);
    sockets.add(remote);
    client.pipe(remote);
    remote.pipe(client);
    const drop = () => { client.destroy(); remote.destroy(); sockets.delete(client); sockets.delete(remote); };
    client.on('error', drop);
    remote.on('error', drop);
    client.on('close', drop);
    remote.on('close', drop);
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve({
    port: server.address().port,
    cut() { for (const s of sockets) s.destroy(); sockets.clear(); },
    close() { this.cut(); server.close(); },
  })));
}

async function newToken() {
  const username = 'client_' + Math.random().toString(36).slice(2, 10);
  const password = 'correct horse battery';
  const post = (path) => fetch(base + path, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ username, password }),
  });
  assert.equal((await post('/register')).status, 200);
  const login = await post('/login');
  assert.equal(login.status, 200);
  return (await login.json()).token;
}

const proxies = [];
after(() => { for (const p of proxies) p.close(); });

test('backoff grows, is capped and jittered', () => {
  assert.equal(backoffDelay(0, 100, 1000, () => 0), 50);
  assert.equal(backoffDelay(0, 100, 1000, () => 1), 100);
  assert.equal(backoffDelay(3, 100, 1000, () => 1), 800);
  assert.equal(backoffDelay(20, 100, 1000, () => 1), 1000);
});

test('an answer cut mid-stream arrives whole after the reconnect, nothing doubled', async () => {
  const p = await proxy();
  proxies.push(p);
  const client = new GatewayClient({
    url: `ws://127.0.0.1:${p.port}/chat`,
    token: await newToken(),
    minDelayMs: 50,
    maxDelayMs: 500,
  });
  const states = [];
  client.onStatus((s) => states.push(s));
  client.connect();
  const seqs = [];
  let text = '';
  let cuts = 0;
  const answer = client.chat({ content: 'tell me', model: 'mock' }, {
    onChunk: (c) => {
      seqs.push(c.seq);
      if (c.type === 'text') text += c.content;
      // Cut the network twice, at the 10th and 40th chunk.
      if ((seqs.length === 10 || seqs.length === 40) && cuts < 2) {
        cuts += 1;
        setTimeout(() => p.cut(), 0);
      }
    },
  });
  const done = await answer.done;
  assert.equal(cuts, 2, 'the connection was cut twice');
  assert.deepEqual(seqs, [...seqs.keys()], 'every seq once, in order');
  assert.equal(text, MOCK_TEXT);
  assert.equal(done.finish_reason, 'stop');
  assert.equal(done.chunks, seqs.length);
  assert.ok(states.filter((s) => s === 'reconnecting').length >= 2, states.join(','));
  assert.ok(answer.streamId && answer.streamId.length === 32);
  client.close();
});

test('a request cut before its first chunk is asked again', async () => {
  const p = await proxy();
  proxies.push(p);
  const client = new GatewayClient({ url: `ws://127.0.0.1:${p.port}/chat`, token: await newToken(), minDelayMs: 50 });
  let opened = 0;
  client.onStatus((s) => { if (s === 'open' && ++opened === 1) p.cut(); });
  client.connect();
  let text = '';
  const answer = client.chat({ content: 'again', model: 'mock' }, {
    onChunk: (c) => { if (c.type === 'text') text += c.content; },
  });
  const done = await answer.done;
  assert.equal(done.finish_reason, 'stop');
  assert.equal(text, MOCK_TEXT);
  client.close();
});
