// The chat page (web/index.html): log in, chat over the WebSocket through gateway-client.js
// (reconnect and resume), stored conversations, a model picker, answers rendered as Markdown
// (marked, then DOMPurify), and the user's API keys.

import { GatewayClient } from '/gateway-client.js';
import { marked } from '/assets/marked.esm.js';
import DOMPurify from '/assets/purify.es.mjs';
import { HttpError, request } from '/assets/http.js';

const $ = (id) => document.getElementById(id);
const el = (tag, cls, text) => {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text != null) e.textContent = String(text);
  return e;
};

/** Markdown to safe HTML: marked parses, DOMPurify removes scripts, handlers and the like. */
function renderMarkdown(target, text) {
  target.innerHTML = DOMPurify.sanitize(marked.parse(text, { async: false, gfm: true, breaks: true }));
}

/** A random UUID (v4), also on plain-http pages where crypto.randomUUID is missing. */
function uuid() {
  if (globalThis.crypto?.randomUUID) return crypto.randomUUID();
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const h = [...b].map((x) => x.toString(16).padStart(2, '0')).join('');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

let token = sessionStorage.getItem('token');
let client = null;
let counter = 0;
/** The conversation being shown; null until the first message of a new one. */
let current = null;
let conversations = [];
const requests = new Map(); // request id -> answer view

// ---------- HTTP ----------
async function api(method, path, body) {
  try {
    return await request(method, path, body, token);
  } catch (e) {
    if (e instanceof HttpError && e.status === 401) signedOut('session expired: log in again');
    throw e;
  }
}

function showError(text) { $('errors').textContent = text || ''; }

// ---------- auth ----------
function setAuthMsg(text, ok) {
  const m = $('auth-msg');
  m.textContent = text || '';
  m.className = text ? (ok ? 'msg-ok' : 'msg-err') : 'muted';
}

async function authRequest(path) {
  const username = $('username').value.trim();
  const password = $('password').value;
  setAuthMsg('');
  let res; let data = {};
  try {
    res = await fetch(path, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ username, password }),
    });
    try { data = await res.json(); } catch { data = {}; }
  } catch (e) {
    setAuthMsg('network error: ' + e.message, false);
    return null;
  }
  if (!res.ok) {
    const err = data.error;
    setAuthMsg((err && (err.message || err)) || ('request failed: HTTP ' + res.status), false);
    return null;
  }
  return data;
}

$('register').onclick = async () => {
  const data = await authRequest('/register');
  if (data) setAuthMsg((data.message || 'User created') + ' — you can now log in.', true);
};

$('login').onclick = async () => {
  const data = await authRequest('/login');
  if (!data || !data.token) return;
  token = data.token;
  sessionStorage.setItem('token', token);
  sessionStorage.setItem('username', data.username || $('username').value.trim());
  sessionStorage.setItem('role', data.role || 'user');
  $('password').value = '';
  setAuthMsg('');
  signedIn();
};

$('password').addEventListener('keydown', (e) => { if (e.key === 'Enter') $('login').click(); });

$('logout').onclick = () => {
  if (token) fetch('/logout', { method: 'POST', headers: { Authorization: 'Bearer ' + token } }).catch(() => {});
  signedOut('logged out', true);
};

function signedOut(why, ok) {
  token = null;
  ['token', 'username', 'role'].forEach((k) => sessionStorage.removeItem(k));
  if (client) { const c = client; client = null; c.close(); }
  render();
  if (why) setAuthMsg(why, ok);
}

function signedIn() {
  render();
  loadModels();
  loadConversations();
  loadUsage();
  connect();
}

function render() {
  const logged = !!token;
  $('auth').classList.toggle('hidden', logged);
  $('auth-done').classList.toggle('hidden', !logged);
  $('nav').classList.toggle('hidden', !logged);
  $('chat-view').classList.toggle('hidden', !logged || view !== 'chat');
  $('keys-view').classList.toggle('hidden', !logged || view !== 'keys');
  $('whoami').textContent = logged
    ? (sessionStorage.getItem('username') || '?') + ' (' + (sessionStorage.getItem('role') || '?') + ')'
    : '';
  updateButtons();
}

// ---------- views ----------
let view = 'chat';
function show(which) {
  view = which;
  $('nav-chat').classList.toggle('active', which === 'chat');
  $('nav-keys').classList.toggle('active', which === 'keys');
  render();
  if (which === 'keys') loadKeys();
}
$('nav-chat').onclick = () => show('chat');
$('nav-keys').onclick = () => show('keys');
$('toggle-sidebar').onclick = () => $('sidebar').classList.toggle('collapsed');

// ---------- models ----------
async function loadModels() {
  try {
    const data = await api('GET', '/v1/models');
    const select = $('model');
    const wanted = localStorage.getItem('model') || select.value || 'mock';
    select.replaceChildren();
    for (const m of data.data) {
      const o = el('option', null, m.id);
      o.value = m.id;
      select.append(o);
    }
    if ([...select.options].some((o) => o.value === wanted)) select.value = wanted;
  } catch (e) { showError('models: ' + e.message); }
}
$('model').onchange = () => localStorage.setItem('model', $('model').value);

// ---------- usage ----------
// Usage is written behind the answer, so the figure shown is the larger of the server's and
// the server's last figure plus the answers that ended since; the server is asked again a
// moment after each answer.
const usage = { day: null, tokens: 0, timer: null };
function showTokens(day, tokens) {
  if (usage.day !== day) usage.tokens = 0;
  usage.day = day;
  usage.tokens = Math.max(usage.tokens, tokens);
  $('tokens-today').textContent = usage.tokens + ' tokens today';
}
async function loadUsage() {
  try {
    const data = await api('GET', '/v1/usage?days=1');
    const today = new Date().toISOString().slice(0, 10);
    let tokens = 0;
    for (const t of data.totals) if (t.day === today) tokens += t.prompt_tokens + t.completion_tokens;
    showTokens(today, tokens);
  } catch { /* usage is a nicety */ }
}
function answerUsed(tokens) {
  const today = new Date().toISOString().slice(0, 10);
  if (tokens) showTokens(today, (usage.day === today ? usage.tokens : 0) + tokens);
  clearTimeout(usage.timer);
  usage.timer = setTimeout(loadUsage, 1500);
}

// ---------- conversations ----------
async function loadConversations() {
  try {
    const data = await api('GET', '/v1/conversations');
    conversations = data.conversations;
    // One just started may not be stored yet (turns are written after the answer).
    if (current && !conversations.some((c) => c.id === current.id)) conversations.unshift(current);
    renderConversations();
  } catch (e) { showError('conversations: ' + e.message); }
}

function renderConversations() {
  const list = $('conversations');
  list.replaceChildren();
  const sorted = [...conversations].sort((a, b) => (b.updated_at || 0) - (a.updated_at || 0));
  for (const c of sorted) {
    const li = el('li');
    li.dataset.conversationId = c.id;
    if (current && current.id === c.id) li.classList.add('current');
    const open = el('button', 'open', c.title || 'untitled');
    open.title = c.title || '';
    open.onclick = () => openConversation(c);
    const del = el('button', 'delete', '✕');
    del.title = 'delete this conversation';
    del.setAttribute('aria-label', 'delete ' + (c.title || 'conversation'));
    del.onclick = () => deleteConversation(c);
    li.append(open, del);
    list.append(li);
  }
}

function newConversation() {
  current = null;
  $('log').replaceChildren();
  requests.clear();
  $('conversation-title').textContent = 'New conversation';
  renderConversations();
  $('message').focus();
}
$('new-chat').onclick = newConversation;

async function openConversation(c) {
  showError('');
  current = { id: c.id, title: c.title, updated_at: c.updated_at };
  $('conversation-title').textContent = c.title || 'untitled';
  $('sidebar').classList.add('collapsed');
  renderConversations();
  const log = $('log');
  log.replaceChildren();
  requests.clear();
  try {
    // Every page of the conversation, oldest first.
    let offset = 0;
    for (;;) {
      const data = await api('GET', `/v1/conversations/${encodeURIComponent(c.id)}?offset=${offset}&limit=1000`);
      if (!current || current.id !== c.id) return;
      for (const m of data.messages) {
        if (m.role === 'user') log.append(el('div', 'bubble user', m.content));
        else if (m.role === 'assistant') log.append(storedAnswer(m));
      }
      offset += data.messages.length;
      if (data.messages.length === 0 || offset >= data.total) break;
    }
    scrollLog();
  } catch (e) { showError('conversation: ' + e.message); }
}

function storedAnswer(m) {
  const root = el('div', 'bubble answer finished stored');
  const meta = el('div', 'meta');
  meta.append(el('span', 'muted', m.model || ''));
  const text = el('div', 'text');
  renderMarkdown(text, m.content);
  root.append(meta, text);
  const tokens = (m.prompt_tokens || 0) + (m.completion_tokens || 0);
  if (tokens) root.append(el('div', 'footer', tokens + ' tokens'));
  return root;
}

async function deleteConversation(c) {
  try {
    await api('DELETE', '/v1/conversations/' + encodeURIComponent(c.id));
  } catch (e) {
    if (!(e instanceof HttpError && e.status === 404)) { showError('delete: ' + e.message); return; }
  }
  conversations = conversations.filter((x) => x.id !== c.id);
  if (current && current.id === c.id) newConversation();
  else renderConversations();
}

// ---------- connection ----------
function setStatus(state, text) {
  const s = $('status');
  s.className = state;
  s.textContent = text;
}

function isOpen() { return client && client.state === 'open'; }

function updateButtons() {
  const active = client && client.state !== 'closed';
  $('connect').disabled = !token || !!active;
  $('disconnect').disabled = !active;
  $('send').disabled = !isOpen();
}

function connect() {
  if (!token) return;
  if (client && client.state !== 'closed') return;
  showError('');
  $('notice').classList.add('hidden');
  const url = (location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + '/chat';
  const c = new GatewayClient({ url, token: () => token });
  client = c;
  let closedByUs = false;
  c.closeLocal = () => { closedByUs = true; };
  c.onStatus((state, detail) => {
    if (client !== c) return;
    if (state === 'connecting') setStatus('connecting', 'connecting…');
    else if (state === 'open') { setStatus('connected', 'connected'); $('notice').classList.add('hidden'); }
    else if (state === 'reconnecting') setStatus('connecting', 'reconnecting…');
    else if (state === 'draining') {
      const n = $('notice');
      n.textContent = 'The server is restarting: moving to another node; running answers continue.';
      n.classList.remove('hidden');
    } else if (state === 'closed') {
      const codeReason = (detail?.code ?? '') + (detail?.reason ? ' ' + detail.reason : '');
      setStatus('closed', (closedByUs ? 'disconnected: ' : 'closed by server: ') + codeReason);
      interruptRunning();
    }
    updateButtons();
  });
  c.onSystem(onSystem);
  c.connect();
  updateButtons();
}

$('connect').onclick = connect;
$('disconnect').onclick = () => {
  if (!client) return;
  client.closeLocal();
  client.close();
};

function onSystem(p) {
  if (p.session_id) $('session-id').textContent = p.session_id;
  if (p.node_id) $('node-id').textContent = p.node_id;
}

// ---------- answers ----------
function scrollLog() {
  const last = $('log').lastElementChild;
  if (last && last.scrollIntoView) last.scrollIntoView({ block: 'end' });
}

function createAnswer(id, model) {
  const root = el('div', 'bubble answer');
  root.dataset.requestId = id;
  const meta = el('div', 'meta');
  meta.append(el('span', 'muted', model));
  const cancel = el('button', 'cancel', 'Stop');
  const details = el('details', 'hidden');
  details.open = true;
  details.append(el('summary', null, 'reasoning'));
  const reasoning = el('div', 'reasoning');
  details.append(reasoning);
  const text = el('div', 'text');
  root.append(meta, details, text);
  meta.append(cancel);
  const req = { id, root, details, reasoning, text, cancel, raw: '', finished: false, answer: null, frame: 0 };
  cancel.onclick = () => {
    if (req.answer) req.answer.cancel();
    cancel.disabled = true;
    cancel.textContent = 'Stopping…';
  };
  $('log').append(root);
  requests.set(id, req);
  return req;
}

/** Renders the answer's Markdown at most once a frame while it streams. */
function scheduleRender(req) {
  if (req.frame) return;
  req.frame = requestAnimationFrame(() => { req.frame = 0; renderMarkdown(req.text, req.raw); scrollLog(); });
}

function finish(req, footerText) {
  if (req.frame) { cancelAnimationFrame(req.frame); req.frame = 0; }
  renderMarkdown(req.text, req.raw);
  req.root.dataset.raw = req.raw;
  req.finished = true;
  req.root.classList.add('finished');
  if (req.cancel) { req.cancel.remove(); req.cancel = null; }
  let f = req.root.querySelector('.footer');
  if (!f) { f = el('div', 'footer'); req.root.append(f); }
  f.textContent = footerText;
}

function interruptRunning() {
  requests.forEach((req) => { if (!req.finished) finish(req, 'interrupted: connection closed'); });
}

function send() {
  const content = $('message').value;
  if (!content.trim()) return;
  if (!isOpen()) { showError('not connected'); return; }
  showError('');
  const model = $('model').value || 'mock';
  if (!current) {
    current = { id: uuid(), title: content.slice(0, 60), updated_at: Math.floor(Date.now() / 1000) };
    conversations.unshift(current);
    $('conversation-title').textContent = current.title;
    renderConversations();
  }
  const conversation = current;
  const id = 'r' + (++counter);
  $('log').append(el('div', 'bubble user', content));
  const req = createAnswer(id, model);
  req.answer = client.chat({ content, model, conversation_id: conversation.id }, {
    id,
    onChunk: (c) => onChunk(req, c),
    onError: (p) => onError(req, p),
  });
  req.answer.done.then((p) => onDone(req, p), (e) => {
    if (!req.finished) finish(req, 'error');
    if (e && e.message && !req.root.querySelector('.error')) req.root.append(el('div', 'error', e.message));
  });
  $('message').value = '';
  scrollLog();
}

$('send').onclick = send;
$('message').addEventListener('keydown', (e) => {
  if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
    e.preventDefault();
    send();
  }
});

function onChunk(req, c) {
  if (c.type === 'reasoning') {
    req.details.classList.remove('hidden');
    req.reasoning.textContent += c.content;
  } else if (c.type === 'text') {
    req.raw += c.content;
    scheduleRender(req);
  }
  req.root.dataset.lastSeq = String(c.seq);
}

function onDone(req, p) {
  const parts = [p.finish_reason || 'stop'];
  if (p.chunks != null) parts.push(p.chunks + ' chunks');
  if (p.usage && p.usage.total_tokens != null) {
    parts.push(p.usage.total_tokens + ' tokens' + (p.usage.estimated ? ' (estimated)' : ''));
  }
  finish(req, parts.join(' · '));
  scrollLog();
  loadConversations();
  answerUsed(p.usage && p.usage.total_tokens);
}

function onError(req, info) {
  const text = 'error' + (info.code ? ' ' + info.code : '') + (info.reason ? ' ' + info.reason : '') +
    (info.message ? ': ' + info.message : '');
  req.root.append(el('div', 'error', text));
  scrollLog();
}

// ---------- API keys ----------
const day = (secs) => (secs ? new Date(secs * 1000).toLocaleDateString() : '–');

async function loadKeys() {
  try {
    const keys = [];
    let offset = 0;
    for (let page = 0; page < 20 && offset != null; page++) {
      const data = await api('GET', '/v1/keys?offset=' + offset + '&limit=1000');
      keys.push(...data.keys);
      offset = data.next_offset;
    }
    const body = $('keys');
    body.replaceChildren();
    for (const k of keys.reverse()) {
      const tr = el('tr');
      tr.dataset.keyId = k.id;
      const expired = k.expires_at && k.expires_at * 1000 < Date.now();
      const status = k.revoked_at ? 'revoked' : expired ? 'expired' : 'active';
      const cells = [k.name, k.prefix + '…', day(k.created_at), day(k.expires_at), status];
      for (const c of cells) tr.append(el('td', null, c));
      const td = el('td');
      if (status === 'active') {
        const revoke = el('button', 'danger revoke', 'Revoke');
        revoke.onclick = async () => {
          revoke.disabled = true;
          try { await api('DELETE', '/v1/keys/' + encodeURIComponent(k.id)); } catch (e) { showError(e.message); }
          loadKeys();
        };
        td.append(revoke);
      }
      tr.append(td);
      body.append(tr);
    }
  } catch (e) { showError('keys: ' + e.message); }
}

$('create-key').onclick = async () => {
  const name = $('key-name').value.trim();
  if (!name) { showError('give the key a name'); return; }
  const body = { name };
  if ($('key-expiry').value) body.expires_in_secs = Number($('key-expiry').value);
  try {
    const k = await api('POST', '/v1/keys', body);
    showError('');
    $('key-name').value = '';
    $('new-key-value').textContent = k.key;
    $('copy-msg').textContent = '';
    $('new-key').classList.remove('hidden');
    loadKeys();
  } catch (e) { showError('create key: ' + e.message); }
};

$('copy-key').onclick = async () => {
  const text = $('new-key-value').textContent;
  try {
    await navigator.clipboard.writeText(text);
    $('copy-msg').textContent = 'copied';
  } catch {
    // No clipboard (plain http): select it for Ctrl+C.
    getSelection().selectAllChildren($('new-key-value'));
    $('copy-msg').textContent = 'selected: press Ctrl+C';
  }
};

// The key is shown once: leaving the page forgets it.
$('nav-chat').addEventListener('click', () => {
  $('new-key').classList.add('hidden');
  $('new-key-value').textContent = '';
});

render();
if (token) signedIn();
