// Chats with ai-gateway from Node through the browser client library (web/gateway-client.js:
// reconnect and resume included), on Node's built-in WebSocket:
//
//   GATEWAY_URL=http://127.0.0.1:8080 GATEWAY_API_KEY=agw_... \
//     node --experimental-websocket chat.mjs "Hello" [model]
//
// (Node 22 and later have the WebSocket without the flag.)

import { GatewayClient } from '../../web/gateway-client.js';

if (typeof WebSocket === 'undefined') {
  console.error('no global WebSocket: run with node --experimental-websocket (Node 20/21)');
  process.exit(2);
}
const base = process.env.GATEWAY_URL ?? 'http://127.0.0.1:8080';
const key = process.env.GATEWAY_API_KEY;
if (!key) {
  console.error('set GATEWAY_API_KEY to an API key (POST /v1/keys) or a login token');
  process.exit(2);
}
const [content = 'Hello', model = 'mock'] = process.argv.slice(2);

const client = new GatewayClient({ url: base.replace(/^http/, 'ws') + '/chat', token: key });
client.onSystem((p) => {
  if (p.event === 'welcome') console.log(`connected: session ${p.session_id} on ${p.node_id}`);
});
client.onStatus((state, detail) => {
  if (state === 'reconnecting') console.error(`reconnecting (${detail?.code ?? ''} ${detail?.reason ?? ''})`);
});
client.connect();

let text = '';
const answer = client.chat({ content, model }, {
  onChunk: (chunk) => {
    if (chunk.type !== 'text') return;
    text += chunk.content;
    process.stdout.write(chunk.content);
  },
  onError: (e) => console.error(`\nerror ${e.code} ${e.reason}: ${e.message}`),
});
try {
  const done = await answer.done;
  console.log();
  console.log(`answer: ${JSON.stringify(text)}`);
  console.log(`finish_reason: ${done.finish_reason}, tokens: ${done.usage.total_tokens}`);
  process.exitCode = done.finish_reason === 'error' ? 1 : 0;
} catch (e) {
  console.error(`failed: ${e.message}`);
  process.exitCode = 1;
} finally {
  client.close();
}
