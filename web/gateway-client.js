// gateway-client.js: a browser client for ai-gateway's WebSocket protocol (docs/PROTOCOL.md).
// An ES module with no dependencies and no build step:
//
//   import { GatewayClient } from '/gateway-client.js';
//   const client = new GatewayClient({ url: 'wss://chat.example.com/chat', token });
//   client.connect();
//   const answer = client.chat({ content: 'Hello', model: 'mock' }, {
//     onChunk: (chunk) => render(chunk.type, chunk.content),
//   });
//   const done = await answer.done;
//
// It reconnects by itself with jittered exponential backoff when the connection drops, when the
// node drains (system event `draining`) or closes with 1012, and resumes every answer still
// running with `resume`: the chunks it missed come again, none twice (`seq` is checked), and the
// caller sees one unbroken answer. Types: gateway-client.d.ts.

const NORMAL = 1000;
/** Close codes after which reconnecting cannot help (policy, protocol, too big, bad data). */
const FINAL_CODES = new Set([1002, 1007, 1008, 1009]);

/** A delay for the n-th reconnect (from 0): exponential, capped, with full jitter. */
export function backoffDelay(attempt, minDelayMs, maxDelayMs, random = Math.random) {
  const ceiling = Math.min(maxDelayMs, minDelayMs * 2 ** Math.min(attempt, 30));
  return Math.round(minDelayMs / 2 + random() * (ceiling - minDelayMs / 2));
}

export class GatewayError extends Error {
  constructor(payload) {
    super(payload?.message || 'gateway error');
    this.name = 'GatewayError';
    this.code = payload?.code;
    this.reason = payload?.reason;
  }
}

export class GatewayClient {
  /**
   * @param {object} options
   * @param {string} options.url ws:// or wss:// address of /chat
   * @param {string | (() => string | Promise<string>)} options.token a session token or API key
   * @param {number} [options.minDelayMs=250] first reconnect delay
   * @param {number} [options.maxDelayMs=10000] longest reconnect delay
   * @param {typeof WebSocket} [options.WebSocket] the WebSocket class (the global one by default)
   */
  constructor(options) {
    this.url = options.url;
    this.token = options.token;
    this.minDelayMs = options.minDelayMs ?? 250;
    this.maxDelayMs = options.maxDelayMs ?? 10_000;
    this.WebSocketImpl = options.WebSocket ?? globalThis.WebSocket;
    this.ws = null;
    this.state = 'idle';
    this.attempt = 0;
    this.wanted = false;
    this.timer = null;
    this.authRefused = false;
    this.requests = new Map();
    this.counter = 0;
    this.listeners = { status: new Set(), system: new Set() };
  }

  /** Calls `fn(state, detail)` on every connection change: connecting, open, reconnecting,
   * draining, closed. */
  onStatus(fn) {
    this.listeners.status.add(fn);
    return () => this.listeners.status.delete(fn);
  }

  /** Calls `fn(payload)` for every `system` frame (welcome, draining). */
  onSystem(fn) {
    this.listeners.system.add(fn);
    return () => this.listeners.system.delete(fn);
  }

  emit(kind, ...args) {
    for (const fn of this.listeners[kind]) {
      try { fn(...args); } catch (e) { console.error(e); }
    }
  }

  setState(state, detail) {
    this.state = state;
    this.emit('status', state, detail);
  }

  /** Opens the connection (and keeps it open until `close`). */
  connect() {
    this.wanted = true;
    if (this.ws) return;
    this.open();
  }

  async open() {
    clearTimeout(this.timer);
    this.timer = null;
    this.setState(this.attempt === 0 ? 'connecting' : 'reconnecting', { attempt: this.attempt });
    let token;
    try {
      token = typeof this.token === 'function' ? await this.token() : this.token;
    } catch (e) {
      return this.retry({ code: 0, reason: String(e) });
    }
    if (!this.wanted) return;
    // The token goes in the first message, not the URL: URLs end up in proxies' access logs.
    const ws = new this.WebSocketImpl(this.url);
    this.ws = ws;
    this.authRefused = false;
    ws.onopen = () => { if (this.ws === ws) ws.send(JSON.stringify({ type: 'auth', payload: { token } })); };
    ws.onmessage = (ev) => { if (this.ws === ws) this.frame(ev.data); };
    ws.onclose = (ev) => { if (this.ws === ws) this.closed(ev); };
    ws.onerror = () => {};
  }

  /** Closes the connection for good; running answers end with an error. */
  close() {
    this.wanted = false;
    clearTimeout(this.timer);
    const ws = this.ws;
    this.ws = null;
    if (ws && ws.readyState <= 1) ws.close(NORMAL, 'client closed');
    for (const req of this.requests.values()) {
      req.fail(new GatewayError({ reason: 'closed', message: 'the client closed the connection' }));
    }
    this.requests.clear();
    this.setState('closed', { code: NORMAL, reason: 'client closed' });
  }

  closed(ev) {
    this.ws = null;
    if (!this.wanted) return;
    // A refused token is final, unless a function can get a fresh one.
    const retryAuth = this.authRefused && typeof this.token === 'function';
    if (FINAL_CODES.has(ev.code) && !retryAuth) {
      this.wanted = false;
      for (const req of this.requests.values()) {
        req.fail(new GatewayError({ reason: 'closed', message: `closed by server: ${ev.code} ${ev.reason}` }));
      }
      this.requests.clear();
      this.setState('closed', { code: ev.code, reason: ev.reason });
      return;
    }
    this.retry(ev);
  }

  retry(ev) {
    if (!this.wanted) return;
    const delay = backoffDelay(this.attempt, this.minDelayMs, this.maxDelayMs);
    this.attempt += 1;
    this.setState('reconnecting', { code: ev.code, reason: ev.reason, delayMs: delay, attempt: this.attempt });
    this.timer = setTimeout(() => this.open(), delay);
  }

  send(message) {
    if (this.ws && this.ws.readyState === 1) {
      this.ws.send(JSON.stringify(message));
      return true;
    }
    return false;
  }

  frame(raw) {
    let f;
    try { f = JSON.parse(raw); } catch { return; }
    switch (f.type) {
      case 'system':
        if (f.payload?.event === 'welcome') {
          this.attempt = 0;
          this.setState('open', f.payload);
          this.resumeAll();
        } else if (f.payload?.event === 'draining') {
          // The node finishes our answers; another node serves us meanwhile.
          this.setState('draining', f.payload);
          const ws = this.ws;
          this.ws = null;
          if (ws) ws.close(NORMAL, 'node draining');
          this.retry({ code: 1012, reason: 'node draining' });
        }
        this.emit('system', f.payload);
        return;
      case 'chat':
        return this.requests.get(f.id)?.chunk(f.payload);
      case 'done':
        return this.requests.get(f.id)?.finish(f.payload);
      case 'error': {
        if (f.id === undefined && f.payload?.reason === 'unauthorized') this.authRefused = true;
        const req = f.id !== undefined && this.requests.get(f.id);
        if (req) req.error(f.payload);
        return;
      }
      default:
    }
  }

  /** After a (re)connect: picks up every answer that was running. */
  resumeAll() {
    for (const req of this.requests.values()) req.restart();
  }

  /**
   * Asks for an answer. `payload` is the `chat` payload (`content`, `model`, `messages`, ...).
   * Handlers: `onChunk({type, content, seq})`, `onError(payload)` for an error frame of this
   * answer. The returned handle's `done` resolves with the `done` payload, or rejects with a
   * GatewayError when the answer cannot be had.
   */
  chat(payload, handlers = {}) {
    const id = handlers.id ?? `c${Date.now().toString(36)}${(++this.counter).toString(36)}`;
    const req = new Answer(this, id, payload, handlers);
    this.requests.set(id, req);
    req.restart();
    return req;
  }
}

class Answer {
  constructor(client, id, payload, handlers) {
    this.client = client;
    this.id = id;
    this.payload = payload;
    this.handlers = handlers;
    this.streamId = null;
    this.lastSeq = -1;
    this.sentOn = null;
    this.finished = false;
    this.done = new Promise((resolve, reject) => { this.resolve = resolve; this.reject = reject; });
    // Nobody may be awaiting `done`; an unhandled rejection must not be reported for that.
    this.done.catch(() => {});
  }

  /** Sends the request, or its resume once its stream is known (once per connection). */
  restart() {
    if (this.finished || !this.client.ws || this.sentOn === this.client.ws) return;
    if (this.client.ws.readyState !== 1) return;
    this.sentOn = this.client.ws;
    if (this.streamId) {
      const resume = { stream_id: this.streamId };
      if (this.lastSeq >= 0) resume.after_seq = this.lastSeq;
      this.client.send({ type: 'resume', id: this.id, payload: resume });
    } else {
      // Nothing arrived yet, so nothing can be doubled: ask again.
      this.client.send({ type: 'chat', id: this.id, payload: this.payload });
    }
  }

  chunk(p) {
    if (p.stream_id) this.streamId = p.stream_id;
    if (p.seq <= this.lastSeq) return; // already shown
    this.lastSeq = p.seq;
    this.handlers.onChunk?.({
      type: p.type, content: p.content, seq: p.seq, model: p.model, tool_call: p.tool_call,
    });
  }

  finish(p) {
    if (p.stream_id) this.streamId = p.stream_id;
    this.finished = true;
    this.client.requests.delete(this.id);
    this.resolve(p);
  }

  error(p) {
    this.handlers.onError?.(p);
    // A resume that cannot go on, or a request refused before it started, gets no `done`.
    if (p.reason === 'resume_unavailable' || this.lastSeq < 0) {
      this.fail(new GatewayError(p));
      this.client.requests.delete(this.id);
    }
  }

  fail(e) {
    if (this.finished) return;
    this.finished = true;
    this.reject(e);
  }

  /** Stops the answer. */
  cancel() {
    if (!this.finished) this.client.send({ type: 'cancel', id: this.id });
  }
}
