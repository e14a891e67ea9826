// The admin panel (web/admin.html): every node's sessions (paged, filtered, killable), nodes
// and their figures, usage charts, providers' health, users and their API keys, the audit
// trail. Everything comes from the admin API (docs/admin-openapi.json).

import { HttpError, request } from '/assets/http.js';

const POLL_MS = 1000;
/** Users' and models' colours in the charts, in turn. */
const PALETTE = ['#2563eb', '#16a34a', '#d97706', '#dc2626', '#7c3aed', '#0891b2', '#db2777', '#65a30d', '#ea580c', '#475569'];
const SVG = 'http://www.w3.org/2000/svg';

const $ = (id) => document.getElementById(id);
const el = (tag, cls, text) => {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text != null) e.textContent = String(text);
  return e;
};
const svg = (tag, attrs) => {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
  return e;
};

let bearer = sessionStorage.getItem('admin-bearer');
let who = sessionStorage.getItem('admin-who');
let timer = null;
let tick = 0;
let sessionOffset = 0;
let userOffset = 0;
const USERS_PAGE = 50;
let keysOf = null; // the user whose keys are shown
let auditEntries = [];

function showError(text) { $('errors').textContent = text || ''; }

async function api(method, path, body) {
  try {
    return await request(method, path, body, bearer);
  } catch (e) {
    if (!(e instanceof HttpError)) throw e;
    if (e.status === 401 || e.status === 403) signOut(e.message);
    throw new Error(method + ' ' + path + ': ' + e.message);
  }
}

function row(cells) {
  const tr = el('tr');
  for (const c of cells) {
    const td = el('td', c && c.cls ? c.cls : null);
    if (c instanceof Node) td.append(c);
    else if (c && typeof c === 'object') td.textContent = c.text == null ? '' : String(c.text);
    else td.textContent = c == null ? '' : String(c);
    tr.append(td);
  }
  return tr;
}

const time = (ms) => new Date(ms).toLocaleTimeString();
const date = (secs) => (secs ? new Date(secs * 1000).toLocaleString() : '–');
function bytes(n) {
  if (n == null) return '–';
  const units = ['B', 'KiB', 'MiB', 'GiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : n) + ' ' + units[i];
}
function duration(secs) {
  if (secs == null) return '–';
  const d = Math.floor(secs / 86400), h = Math.floor(secs / 3600) % 24, m = Math.floor(secs / 60) % 60;
  return d ? `${d}d ${h}h` : h ? `${h}h ${m}m` : `${m}m ${secs % 60}s`;
}

// ---------- sessions ----------
function pageSize() { return Number($('page-size').value); }

function sessionQuery() {
  const q = new URLSearchParams();
  for (const [field, param] of [['filter-user', 'user'], ['filter-node', 'node'], ['filter-model', 'model']]) {
    const v = $(field).value.trim();
    if (v) q.set(param, v);
  }
  q.set('offset', String(sessionOffset));
  q.set('limit', String(pageSize()));
  return '/admin/sessions?' + q.toString();
}

function renderSessions(data) {
  // The page ran past the end (sessions left): go back to the last page.
  if (data.sessions.length === 0 && data.total > 0 && sessionOffset > 0) {
    sessionOffset = Math.max(0, Math.floor((data.total - 1) / pageSize()) * pageSize());
    return;
  }
  const body = $('sessions');
  body.replaceChildren();
  for (const s of data.sessions) {
    const kill = el('button', 'danger kill', 'Kill');
    kill.dataset.sessionId = s.session_id;
    kill.onclick = async () => {
      kill.disabled = true;
      try {
        await api('DELETE', '/admin/sessions/' + encodeURIComponent(s.session_id) +
          '?reason=' + encodeURIComponent($('kill-reason').value));
        refresh();
      } catch (e) { showError(e.message); kill.disabled = false; }
    };
    const tr = row([{ text: s.session_id, cls: 'mono' }, s.username, s.node_id, s.last_model || '', s.remote_addr || '',
      time(s.started_at), s.running, kill]);
    tr.dataset.sessionId = s.session_id;
    body.append(tr);
  }
  const first = data.total ? data.offset + 1 : 0;
  $('sessions-range').textContent = `${first}–${data.offset + data.sessions.length} of ${data.total}`;
  $('sessions-prev').disabled = data.offset === 0;
  $('sessions-next').disabled = data.offset + data.sessions.length >= data.total;
  $('session-count').textContent = data.total;
}

$('sessions-prev').onclick = () => { sessionOffset = Math.max(0, sessionOffset - pageSize()); refresh(); };
$('sessions-next').onclick = () => { sessionOffset += pageSize(); refresh(); };
for (const id of ['filter-user', 'filter-node', 'filter-model', 'page-size']) {
  $(id).addEventListener('input', () => { sessionOffset = 0; refresh(); });
}

// ---------- nodes ----------
function renderNodes(data) {
  const body = $('nodes');
  body.replaceChildren();
  let running = 0, answers = 0, chunks = 0, queued = 0;
  for (const n of data.nodes) {
    const f = n.figures;
    running += n.running;
    if (f) { answers += f.running_answers; chunks += f.chunks_relayed; queued += f.queued_bytes; }
    const state = f ? (f.draining ? 'draining' : 'serving') : 'no figures yet';
    const tr = row([n.node_id, f ? f.version : '–', { text: state, cls: f && f.draining ? 'draining' : '' },
      n.sessions, n.running, f ? f.running_answers : '–', bytes(f && f.rss_bytes), duration(f && f.uptime_secs),
      f ? time(f.at) : '–']);
    tr.dataset.nodeId = n.node_id;
    body.append(tr);
  }
  $('node-count').textContent = data.nodes.length;
  $('running-count').textContent = running;
  $('answer-count').textContent = answers;
  $('metric-chunks').textContent = chunks;
  $('metric-queued').textContent = bytes(queued);
}

// ---------- providers ----------
function renderProviders(data) {
  const body = $('providers');
  body.replaceChildren();
  for (const m of data.models) {
    const first = (m.targets || [])[0] || {};
    const recent = first.recent || { calls: 0, failures: 0 };
    const rate = recent.calls ? Math.round((100 * recent.failures) / recent.calls) + '% of ' + recent.calls : 'no calls yet';
    const route = (m.targets || []).map((t) => `${t.provider}/${t.upstream_model} (${t.breaker})`).join(' → ');
    const tr = row([m.model, m.provider, m.upstream_model,
      { text: (first.breaker || '–').replace('_', '-'), cls: 'state-' + (first.breaker || '') }, rate, { text: route, cls: 'wrap' }]);
    tr.dataset.model = m.model;
    body.append(tr);
  }
}

// ---------- usage charts ----------
/** A stacked bar chart of tokens per day, one colour per series, drawn as SVG. */
function stackedBars(target, days, series) {
  const W = 560, H = 220, left = 44, bottom = 30, top = 8;
  const names = [...series.keys()];
  const totals = days.map((d) => names.reduce((sum, n) => sum + (series.get(n).get(d) || 0), 0));
  const max = Math.max(1, ...totals);
  const chart = svg('svg', { viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': 'tokens per day' });
  const plotH = H - bottom - top;
  const bw = (W - left) / Math.max(1, days.length);
  for (const frac of [0, 0.5, 1]) {
    const y = top + plotH * (1 - frac);
    chart.append(svg('line', { x1: left, x2: W, y1: y, y2: y, stroke: 'currentColor', 'stroke-opacity': 0.15 }));
    const label = svg('text', { x: left - 4, y: y + 3, 'text-anchor': 'end' });
    label.textContent = String(Math.round(max * frac));
    chart.append(label);
  }
  days.forEach((d, i) => {
    let y = top + plotH;
    names.forEach((n, j) => {
      const v = series.get(n).get(d) || 0;
      if (!v) return;
      const h = (v / max) * plotH;
      y -= h;
      const bar = svg('rect', { x: left + i * bw + 1, y, width: Math.max(1, bw - 2), height: h, fill: PALETTE[j % PALETTE.length] });
      bar.dataset.series = n;
      bar.dataset.day = d;
      bar.dataset.tokens = String(v);
      const title = svg('title');
      title.textContent = `${d} · ${n}: ${v} tokens`;
      bar.append(title);
      chart.append(bar);
    });
    if (days.length <= 10 || i % Math.ceil(days.length / 8) === 0 || i === days.length - 1) {
      const label = svg('text', { x: left + i * bw + bw / 2, y: H - bottom + 14, 'text-anchor': 'middle' });
      label.textContent = d.slice(5);
      chart.append(label);
    }
  });
  const legend = el('div', 'legend');
  names.forEach((n, j) => {
    const s = el('span', null, n);
    s.style.setProperty('--swatch', PALETTE[j % PALETTE.length]);
    legend.append(s);
  });
  target.replaceChildren(chart, legend);
  if (!names.length) target.append(el('p', 'muted', 'No usage in these days.'));
}

async function refreshUsage() {
  const n = Number($('usage-days').value);
  const data = await api('GET', '/admin/usage?days=' + n);
  const days = [];
  const today = Date.UTC(new Date().getUTCFullYear(), new Date().getUTCMonth(), new Date().getUTCDate());
  for (let i = data.days - 1; i >= 0; i--) days.push(new Date(today - i * 86400000).toISOString().slice(0, 10));
  const byUser = new Map(), byModel = new Map();
  for (const t of data.totals) {
    const tokens = t.prompt_tokens + t.completion_tokens;
    for (const [map, key] of [[byUser, t.username || t.user_id], [byModel, t.model]]) {
      if (!map.has(key)) map.set(key, new Map());
      const m = map.get(key);
      m.set(t.day, (m.get(t.day) || 0) + tokens);
    }
  }
  stackedBars($('chart-users'), days, byUser);
  stackedBars($('chart-models'), days, byModel);
}
$('usage-days').onchange = () => refreshUsage().catch((e) => showError(e.message));

// ---------- users and their keys ----------
function renderUsers(data) {
  const body = $('users');
  body.replaceChildren();
  for (const u of data.users) {
    const toggle = el('button', u.disabled ? 'secondary' : 'danger', u.disabled ? 'Enable' : 'Disable');
    toggle.onclick = () => change(u.id, { disabled: !u.disabled });
    const role = el('button', 'secondary', u.role === 'admin' ? 'Make user' : 'Make admin');
    role.onclick = () => change(u.id, { role: u.role === 'admin' ? 'user' : 'admin' });
    const keys = el('button', 'secondary keys', 'Keys');
    keys.onclick = () => { keysOf = u; refreshKeys(); };
    const actions = el('span', 'row');
    actions.append(toggle, role, keys);
    const tr = row([u.username, { text: u.id, cls: 'mono' }, u.role, u.disabled ? 'disabled' : 'active', actions]);
    tr.dataset.userId = u.id;
    body.append(tr);
  }
  $('users-range').textContent = `${data.users.length ? userOffset + 1 : 0}–${userOffset + data.users.length}`;
  $('users-prev').disabled = userOffset === 0;
  $('users-next').disabled = data.users.length < USERS_PAGE;
}
$('users-prev').onclick = () => { userOffset = Math.max(0, userOffset - USERS_PAGE); refreshUsers(); };
$('users-next').onclick = () => { userOffset += USERS_PAGE; refreshUsers(); };

async function refreshUsers() {
  try { renderUsers(await api('GET', `/admin/users?offset=${userOffset}&limit=${USERS_PAGE}`)); }
  catch (e) { showError(e.message); }
}

async function refreshKeys() {
  if (!keysOf) { $('keys-card').classList.add('hidden'); return; }
  const u = keysOf;
  try {
    const data = await api('GET', '/admin/users/' + encodeURIComponent(u.id) + '/keys');
    $('keys-owner').textContent = u.username;
    $('keys-card').classList.remove('hidden');
    const body = $('keys');
    body.replaceChildren();
    for (const k of data.keys) {
      const expired = k.expires_at && k.expires_at * 1000 < Date.now();
      const status = k.revoked_at ? 'revoked' : expired ? 'expired' : 'active';
      let action = '';
      if (status === 'active') {
        action = el('button', 'danger revoke', 'Revoke');
        action.onclick = async () => {
          action.disabled = true;
          try { await api('DELETE', '/admin/keys/' + encodeURIComponent(k.id)); } catch (e) { showError(e.message); }
          refreshKeys();
          refreshAudit();
        };
      }
      const tr = row([k.name, { text: k.prefix + '…', cls: 'mono' }, { text: k.id, cls: 'mono' }, date(k.created_at),
        date(k.expires_at), status, action]);
      tr.dataset.keyId = k.id;
      body.append(tr);
    }
  } catch (e) { showError(e.message); }
}
$('keys-close').onclick = () => { keysOf = null; refreshKeys(); };

async function change(id, patch) {
  try { await api('PATCH', '/admin/users/' + encodeURIComponent(id), patch); refreshUsers(); refreshAudit(); }
  catch (e) { showError(e.message); }
}

$('create-user').onclick = async () => {
  try {
    await api('POST', '/admin/users', { username: $('new-username').value, password: $('new-password').value, role: $('new-role').value });
    $('new-username').value = ''; $('new-password').value = '';
    showError('');
    refreshUsers();
    refreshAudit();
  } catch (e) { showError(e.message); }
};

// ---------- audit ----------
function renderAudit() {
  const body = $('audit');
  body.replaceChildren();
  const needle = $('audit-filter').value.trim().toLowerCase();
  for (const a of auditEntries) {
    if (needle && ![a.actor, a.action, a.target].some((f) => String(f).toLowerCase().includes(needle))) continue;
    body.append(row([date(a.at), a.actor, a.action, { text: a.target, cls: 'mono' },
      { text: JSON.stringify(a.detail), cls: 'mono wrap' }]));
  }
}

async function refreshAudit() {
  try {
    auditEntries = (await api('GET', '/admin/audit?limit=' + $('audit-limit').value)).entries;
    renderAudit();
  } catch (e) { showError(e.message); }
}
$('audit-filter').addEventListener('input', renderAudit);
$('audit-limit').onchange = refreshAudit;

// ---------- polling ----------
// Sessions and nodes every second; the rest every fifth poll.
let polling = false;
async function refresh() {
  if (!bearer || polling) return;
  polling = true;
  try {
    const [sessions, nodes] = await Promise.all([api('GET', sessionQuery()), api('GET', '/admin/nodes')]);
    renderSessions(sessions);
    renderNodes(nodes);
    $('updated').textContent = '· updated ' + new Date().toLocaleTimeString();
    if (tick++ % 5 === 0) await refreshSlow();
  } catch (e) { showError(e.message); } finally { polling = false; }
}

async function refreshSlow() {
  await Promise.all([
    api('GET', '/admin/providers').then(renderProviders),
    refreshUsage(),
    refreshUsers(),
    refreshAudit(),
  ]).catch((e) => showError(e.message));
}

// ---------- sign-in ----------
function signIn(newBearer, name) {
  bearer = newBearer; who = name;
  sessionStorage.setItem('admin-bearer', bearer);
  sessionStorage.setItem('admin-who', who);
  render();
}

function signOut(why) {
  bearer = null; who = null;
  sessionStorage.removeItem('admin-bearer');
  sessionStorage.removeItem('admin-who');
  render();
  if (why) showError(why);
}

function render() {
  const inside = !!bearer;
  $('auth-form').classList.toggle('hidden', inside);
  $('auth-done').classList.toggle('hidden', !inside);
  $('panel').classList.toggle('hidden', !inside);
  $('whoami').textContent = inside ? 'signed in as ' + who : '';
  if (timer) { clearInterval(timer); timer = null; }
  if (inside) {
    showError('');
    tick = 0;
    refresh();
    timer = setInterval(refresh, POLL_MS);
  }
}

$('login').onclick = async () => {
  try {
    const res = await fetch('/login', { method: 'POST', headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ username: $('username').value, password: $('password').value }) });
    const data = await res.json().catch(() => ({}));
    if (!res.ok) { showError((data.error && (data.error.message || data.error)) || ('HTTP ' + res.status)); return; }
    if (data.role !== 'admin') { showError('not an admin: ' + data.username); return; }
    signIn(data.token, data.username);
  } catch (e) { showError(e.message); }
};
$('password').addEventListener('keydown', (e) => { if (e.key === 'Enter') $('login').click(); });
$('use-token').onclick = () => {
  const t = $('admin-token').value.trim();
  if (t) signIn(t, 'static admin token');
};
$('logout').onclick = () => {
  // A user's token is revoked on logout; the static token is not ours to revoke.
  if (bearer && who !== 'static admin token') {
    fetch('/logout', { method: 'POST', headers: { Authorization: 'Bearer ' + bearer } }).catch(() => {});
  }
  signOut();
};

render();
