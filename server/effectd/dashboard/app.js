// effectd dashboard: plain JS, no build step, no external requests.
//
// Data: GET /api/effects, /api/runs, /api/groups, /api/flows; live rows and the pending approvals from
// the server-sent events of /api/events; an effect's output from /api/effects/ID/output/stream. Streams are read with
// fetch() (not EventSource) so that they can carry the Authorization header when the server has a
// token. The view (scope and selected effect) lives in the URL hash: #flow=ID, #group=NAME,
// #run=ID, and effect=ID; #token=SECRET is taken once into sessionStorage and removed from the URL.
'use strict';

const STATUSES = ['pending', 'queued', 'running', 'succeeded', 'failed', 'cancelled', 'skipped'];
const ACTIVE = new Set(['pending', 'queued', 'running']);
const TOKEN_KEY = 'effectd-token';
const SVG_NS = 'http://www.w3.org/2000/svg';

const state = {
  effects: new Map(), // effect_id -> row
  approvals: [], // the pending approvals, oldest first (as /api/events last sent them)
  approvalNote: null, // why the last answer was refused, until dismissed
  runs: [],
  groups: [],
  flows: [],
  scope: { kind: 'all', id: null },
  selected: null, // effect_id
  detail: null, // the full record of the selected effect
  statusFilter: new Set(),
  search: '',
  clockSkewMs: 0, // server time - browser time
  info: null,
};

class AuthError extends Error {}

// --- small DOM helpers -------------------------------------------------------------------------

const $ = (sel) => document.querySelector(sel);

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === 'class') el.className = v;
    else if (k === 'text') el.textContent = v;
    else if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined) continue;
    if (k === 'text') el.textContent = v;
    else if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, String(v));
  }
  for (const child of children.flat()) if (child) el.append(child);
  return el;
}

// --- formatting --------------------------------------------------------------------------------

const parseTime = (iso) => (iso ? Date.parse(iso) : null);
const nowMs = () => Date.now() + state.clockSkewMs;

function fmtSeconds(sec) {
  if (sec === null || sec === undefined || Number.isNaN(sec)) return '';
  if (sec < 1) return `${Math.max(0, Math.round(sec * 1000))} ms`;
  if (sec < 60) return `${sec.toFixed(sec < 10 ? 2 : 1)} s`;
  const m = Math.floor(sec / 60);
  if (m < 60) return `${m}m ${String(Math.floor(sec % 60)).padStart(2, '0')}s`;
  return `${Math.floor(m / 60)}h ${String(m % 60).padStart(2, '0')}m`;
}

function fmtClock(iso) {
  if (!iso) return '';
  const d = new Date(iso);
  return d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', second: '2-digit', hour12: false });
}

function fmtCost(cost) {
  if (cost === null || cost === undefined) return '';
  return `$${cost < 0.01 && cost > 0 ? cost.toFixed(4) : cost.toFixed(2)}`;
}

function durationOf(row) {
  if (row.started_at) {
    const end = row.finished_at ? parseTime(row.finished_at) : nowMs();
    return (end - parseTime(row.started_at)) / 1000;
  }
  return null;
}

function nameOf(row) {
  if (row.label) return row.label;
  if (row.step_id) return row.step_id;
  if (row.kind === 'harness') return `${row.harness} sub-agent`;
  const argv = row.command || [];
  if (!argv.length) return row.effect_id;
  const prog = argv[0].split('/').pop();
  return [prog, ...argv.slice(1)].join(' ');
}

// Which server (agent session) dispatched an effect: "this" for the server serving the dashboard.
function sessionOf(owner) {
  if (!owner) return '';
  if (state.info && owner === state.info.server_id) return 'this';
  return shortId(owner);
}

function shortId(id) {
  return id ? `${id.slice(0, 4)}…${id.slice(-6)}` : '';
}

function statusPill(status, extra) {
  return h('span', { class: `pill st-${status}`, text: extra ? `${status} · ${extra}` : status });
}

// --- the token ---------------------------------------------------------------------------------

function hashParams() {
  return new URLSearchParams(location.hash.replace(/^#/, ''));
}

function takeToken() {
  const params = hashParams();
  const query = new URLSearchParams(location.search);
  const given = params.get('token') || query.get('token');
  if (given) {
    sessionStorage.setItem(TOKEN_KEY, given);
    params.delete('token');
    query.delete('token');
    const search = query.toString();
    history.replaceState(null, '', location.pathname + (search ? `?${search}` : '') + (params.toString() ? `#${params}` : ''));
  }
  return sessionStorage.getItem(TOKEN_KEY);
}

let token = takeToken();

function authHeaders(extra) {
  const headers = Object.assign({}, extra || {});
  if (token) headers.Authorization = `Bearer ${token}`;
  return headers;
}

function askToken(message) {
  const dialog = $('#token-dialog');
  dialog.hidden = false;
  const error = $('#token-error');
  error.hidden = !message;
  error.textContent = message || '';
  $('#token-input').focus();
}

$('#token-form').addEventListener('submit', (event) => {
  event.preventDefault();
  token = $('#token-input').value.trim();
  sessionStorage.setItem(TOKEN_KEY, token);
  $('#token-dialog').hidden = true;
  start();
});

// --- the API -----------------------------------------------------------------------------------

async function api(path, options) {
  const opts = Object.assign({}, options || {});
  opts.headers = authHeaders(opts.headers);
  opts.cache = 'no-store';
  const res = await fetch(path, opts);
  if (res.status === 401) {
    askToken(token ? 'That token was refused.' : null);
    throw new AuthError('unauthorized');
  }
  let body = null;
  try {
    body = await res.json();
  } catch (_) {
    body = null;
  }
  if (!res.ok) throw new Error((body && body.error) || `${res.status} ${res.statusText}`);
  return body;
}

// Reads server-sent events from `path` with fetch; calls onEvent(name, data) for each; returns when the
// stream ends. Comment lines (keep-alives) are skipped.
async function readEvents(path, onEvent, signal) {
  const res = await fetch(path, { headers: authHeaders({ Accept: 'text/event-stream' }), signal, cache: 'no-store' });
  if (res.status === 401) {
    askToken(token ? 'That token was refused.' : null);
    throw new AuthError('unauthorized');
  }
  if (!res.ok || !res.body) throw new Error(`${res.status} ${res.statusText}`);
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let buffer = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf('\n\n')) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      let name = 'message';
      const data = [];
      for (const line of block.split('\n')) {
        if (line.startsWith(':')) continue;
        if (line.startsWith('event:')) name = line.slice(6).trim();
        else if (line.startsWith('data:')) data.push(line.slice(5).replace(/^ /, ''));
      }
      if (data.length) onEvent(name, JSON.parse(data.join('\n')));
    }
  }
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// --- live effects ------------------------------------------------------------------------------

let liveGeneration = 0;

function setLive(on, text) {
  const live = $('#live');
  live.classList.toggle('on', on);
  live.querySelector('.live-text').textContent = text || (on ? 'live' : 'reconnecting');
}

function noteServerTime(iso) {
  if (iso) state.clockSkewMs = Date.parse(iso) - Date.now();
}

function mergeRows(rows) {
  let sidebarStale = false;
  for (const row of rows) {
    const before = state.effects.get(row.effect_id);
    if (!before || before.status !== row.status) sidebarStale = true;
    state.effects.set(row.effect_id, row);
  }
  return sidebarStale;
}

async function liveLoop(generation) {
  let delay = 500;
  while (generation === liveGeneration) {
    try {
      await readEvents('api/events', (name, data) => {
        if (generation !== liveGeneration) return;
        noteServerTime(data.now);
        setLive(true);
        delay = 500;
        if (data.approvals) state.approvals = data.approvals;
        if (name === 'snapshot') {
          mergeRows(data.effects);
          refreshSidebar();
        } else if (name === 'effects') {
          if (mergeRows(data.effects)) refreshSidebarSoon();
          const selected = data.effects.find((row) => row.effect_id === state.selected);
          if (selected && (!state.detail || state.detail.status !== selected.status)) loadDetailSoon();
        }
        scheduleRender();
      });
    } catch (error) {
      if (error instanceof AuthError) {
        setLive(false, 'token needed');
        return;
      }
    }
    if (generation !== liveGeneration) return;
    setLive(false);
    await sleep(delay);
    delay = Math.min(delay * 2, 5000);
  }
}

// --- sidebar: runs, groups, flows --------------------------------------------------------------

let sidebarTimer = null;

function refreshSidebarSoon() {
  if (sidebarTimer) return;
  sidebarTimer = setTimeout(() => {
    sidebarTimer = null;
    refreshSidebar();
  }, 700);
}

async function refreshSidebar() {
  try {
    const [runs, groups, flows, budgets] = await Promise.all([
      api('api/runs'), api('api/groups'), api('api/flows'), api('api/budgets'),
    ]);
    state.runs = runs.runs;
    state.groups = groups.groups;
    state.flows = flows.flows;
    state.budgets = budgets.budgets;
    scheduleRender();
  } catch (_) {
    /* the live loop reports the connection */
  }
}

function scopeItem(kind, id, title, sub, status, active) {
  const current = state.scope.kind === kind && state.scope.id === id;
  return h(
    'li',
    { class: current ? 'current' : '', dataset: { kind, id } },
    h(
      'a',
      { href: `#${kind}=${encodeURIComponent(id)}`, title: id },
      h('span', { class: `mark st-${status}` }),
      h('span', { class: 'scope-name', text: title }),
      active ? h('span', { class: 'badge', text: `${active} active` }) : null,
      h('span', { class: 'scope-sub', text: sub }),
    ),
  );
}

function groupStatus(active, failed) {
  if (active) return 'running';
  if (failed) return 'failed';
  return 'succeeded';
}

function renderSidebar() {
  const flowIds = new Set(state.flows.map((f) => f.flow_id));
  $('#flows').replaceChildren(
    ...state.flows.map((f) => {
      const steps = f.steps.map((step) => state.effects.get(step.effect_id)).filter(Boolean);
      const active = steps.filter((row) => ACTIVE.has(row.status)).length;
      return scopeItem('flow', f.flow_id, f.flow_id, `${f.steps.length} steps · ${f.status}`, f.status, active);
    }),
  );
  if (!state.flows.length) $('#flows').replaceChildren(h('li', { class: 'none', text: 'none yet' }));
  const groups = state.groups.filter((g) => !flowIds.has(g.group));
  $('#groups').replaceChildren(
    ...groups.map((g) =>
      scopeItem('group', g.group, g.group, `${g.effects} effects${g.failed ? ` · ${g.failed} failed` : ''}`,
        groupStatus(g.active, g.failed), g.active),
    ),
  );
  if (!groups.length) $('#groups').replaceChildren(h('li', { class: 'none', text: 'none yet' }));
  $('#runs').replaceChildren(
    ...state.runs.map((r) =>
      scopeItem('run', r.run_id, shortId(r.run_id), `${r.effects} effects · ${fmtClock(r.created_at)}`,
        r.active ? 'running' : 'succeeded', r.active),
    ),
  );
  $('#scope-all').classList.toggle('current', state.scope.kind === 'all');
}

// --- the view in the URL -----------------------------------------------------------------------

function readView() {
  const params = hashParams();
  const scope = { kind: 'all', id: null };
  for (const kind of ['flow', 'group', 'run']) {
    if (params.get(kind)) {
      scope.kind = kind;
      scope.id = params.get(kind);
      break;
    }
  }
  const changedScope = scope.kind !== state.scope.kind || scope.id !== state.scope.id;
  state.scope = scope;
  if (changedScope && scope.kind !== 'all') loadScope();
  const effect = params.get('effect');
  if (effect !== state.selected) select(effect, false);
  scheduleRender();
}

function writeView() {
  const params = new URLSearchParams();
  if (state.scope.kind !== 'all') params.set(state.scope.kind, state.scope.id);
  if (state.selected) params.set('effect', state.selected);
  const hash = params.toString();
  history.replaceState(null, '', location.pathname + location.search + (hash ? `#${hash}` : ''));
}

window.addEventListener('hashchange', readView);

async function loadScope() {
  const { kind, id } = state.scope;
  const key = kind === 'run' ? 'run_id' : 'group';
  try {
    const data = await api(`api/effects?${key}=${encodeURIComponent(id)}&limit=2000`);
    mergeRows(data.effects);
    scheduleRender();
  } catch (_) {
    /* reported by the live loop */
  }
}

function inScope(row) {
  const { kind, id } = state.scope;
  if (kind === 'run') return row.run_id === id;
  if (kind === 'group') return row.group === id;
  if (kind === 'flow') return row.flow_id === id || row.group === id;
  return true;
}

// --- rendering ---------------------------------------------------------------------------------

let renderQueued = false;

function scheduleRender() {
  if (renderQueued) return;
  renderQueued = true;
  setTimeout(() => {
    renderQueued = false;
    render();
  }, 0);
}

function render() {
  renderCounts();
  renderSidebar();
  renderApprovals();
  renderFilter();
  renderTable();
  renderScope();
  renderDetail();
}

function renderCounts() {
  const counts = {};
  for (const row of state.effects.values()) counts[row.status] = (counts[row.status] || 0) + 1;
  const asking = state.approvals.length;
  $('#counts').replaceChildren(
    ...['running', 'queued', 'pending', 'failed']
      .filter((st) => counts[st])
      .map((st) => h('span', { class: `count st-${st}` }, h('b', { text: counts[st] }), ` ${st}`)),
    asking ? h('span', { class: 'count asking' }, h('b', { text: asking }), ` waiting for approval`) : null,
  );
}

function renderFilter() {
  const box = $('#status-filter');
  if (!box.childElementCount) {
    for (const st of STATUSES) {
      box.append(
        h('button', {
          type: 'button',
          class: `chip st-${st}`,
          dataset: { status: st },
          text: st,
          onclick: () => {
            if (state.statusFilter.has(st)) state.statusFilter.delete(st);
            else state.statusFilter.add(st);
            scheduleRender();
          },
        }),
      );
    }
  }
  for (const chip of box.children) chip.classList.toggle('on', state.statusFilter.has(chip.dataset.status));
}

function visibleRows() {
  const search = state.search.toLowerCase();
  const rows = [];
  for (const row of state.effects.values()) {
    if (!inScope(row)) continue;
    if (state.statusFilter.size && !state.statusFilter.has(row.status)) continue;
    if (search) {
      const text = `${row.effect_id} ${row.label || ''} ${(row.command || []).join(' ')} ${row.harness || ''} ${row.group || ''}`;
      if (!text.toLowerCase().includes(search)) continue;
    }
    rows.push(row);
  }
  rows.sort((a, b) => (a.effect_id < b.effect_id ? 1 : -1));
  return rows.slice(0, 1000);
}

const rowElements = new Map();

function cancelButton(id, onclick) {
  return h('button', { type: 'button', class: 'cancel soft-danger small', dataset: { effectId: id }, text: 'Cancel', onclick });
}

async function cancelEffect(id, button) {
  if (button) {
    button.disabled = true;
    button.textContent = 'Cancelling…';
  }
  try {
    const record = await api(`api/effects/${encodeURIComponent(id)}/cancel`, { method: 'POST' });
    mergeRows([record]);
    if (state.selected === id) state.detail = record;
    scheduleRender();
  } catch (error) {
    if (button) {
      button.disabled = false;
      button.textContent = 'Cancel';
      button.title = String(error.message || error);
    }
  }
}

function makeRow(id) {
  const tr = h('tr', { dataset: { effectId: id }, onclick: () => select(id, true) });
  const cancel = cancelButton(id, (event) => {
    event.stopPropagation();
    cancelEffect(id, event.currentTarget);
  });
  tr.cells_ = {
    status: h('td', { class: 'status' }),
    name: h('div', { class: 'name' }),
    sub: h('div', { class: 'sub mono' }),
    harness: h('td', { class: 'harness' }),
    group: h('td', { class: 'group' }),
    session: h('td', { class: 'session mono' }),
    started: h('td', { class: 'num' }),
    duration: h('td', { class: 'num duration' }),
    exit: h('td', { class: 'num exit' }),
    cost: h('td', { class: 'num cost' }),
    actions: h('td', { class: 'actions' }, cancel),
    cancel,
  };
  const c = tr.cells_;
  tr.append(
    c.status, h('td', { class: 'what' }, c.name, c.sub), c.harness, c.group, c.session,
    c.started, c.duration, c.exit, c.cost, c.actions,
  );
  return tr;
}

function setText(el, text) {
  if (el.textContent !== text) el.textContent = text;
}

// Updates the row's cells in place (the Cancel button stays the same element, so a click is never lost
// to a re-render).
function fillRow(tr, row) {
  const c = tr.cells_;
  const duration = durationOf(row);
  let durationText = fmtSeconds(duration);
  if (duration === null && ACTIVE.has(row.status) && row.created_at) {
    durationText = `waiting ${fmtSeconds((nowMs() - parseTime(row.created_at)) / 1000)}`;
  }
  const exit = row.exit_code !== null ? String(row.exit_code) : row.signal ? `sig ${row.signal}` : '';
  // A sub-agent asking runs; a flow step waiting for its start is pending: both show what they wait for.
  const asking = ACTIVE.has(row.status) && row.waiting_for === 'approval';
  const why = row.status === 'cancelled' ? row.cancel_reason : asking ? 'waiting for approval'
    : row.status === 'running' && row.stalled ? 'stalled' : null;
  const pillKey = `${row.status}|${why}`;
  if (c.status.dataset.key !== pillKey) {
    c.status.dataset.key = pillKey;
    const pill = statusPill(row.status, why);
    pill.classList.toggle('asking', asking);
    c.status.replaceChildren(pill);
  }
  setText(c.name, nameOf(row));
  setText(c.sub, row.last_text || row.error || (row.workspace && row.workspace.branch) || shortId(row.effect_id));
  setText(c.harness, row.harness || (row.kind === 'command' ? 'command' : ''));
  setText(c.group, row.group || '');
  setText(c.session, sessionOf(row.owner));
  c.session.title = row.owner ? `dispatched by server ${row.owner}` : 'dispatched before sessions';
  setText(c.started, fmtClock(row.started_at));
  setText(c.duration, durationText);
  setText(c.exit, exit);
  c.exit.classList.toggle('bad', Boolean(row.exit_code));
  setText(c.cost, fmtCost(row.cost_usd));
  const cancellable = ACTIVE.has(row.status);
  if (c.cancel.hidden === cancellable) c.cancel.hidden = !cancellable;
  const cls = `${row.effect_id === state.selected ? 'selected ' : ''}st-row-${row.status}`;
  if (tr.className !== cls) tr.className = cls;
}

function renderTable() {
  const rows = visibleRows();
  const body = $('#effects tbody');
  const wanted = new Set(rows.map((r) => r.effect_id));
  for (const [id, tr] of rowElements) {
    if (!wanted.has(id)) {
      tr.remove();
      rowElements.delete(id);
    }
  }
  let previous = null;
  for (const row of rows) {
    let tr = rowElements.get(row.effect_id);
    if (!tr) {
      tr = makeRow(row.effect_id);
      rowElements.set(row.effect_id, tr);
    }
    const key = `${row.status}|${row.waiting_for}|${row.output_bytes}|${row.finished_at}|${row.cost_usd}|${row.last_text}|${state.selected === row.effect_id}`;
    if (tr.dataset.key !== key || ACTIVE.has(row.status)) {
      tr.dataset.key = key;
      fillRow(tr, row);
    }
    const expected = previous ? previous.nextSibling : body.firstChild;
    if (expected !== tr) body.insertBefore(tr, expected);
    previous = tr;
  }
  $('#empty').hidden = rows.length > 0;
  $('#effects').classList.toggle('scoped', state.scope.kind === 'group' || state.scope.kind === 'flow');
  const scopeName = { all: 'Effects', run: 'Effects of the run', group: 'Effects of the group', flow: 'Steps of the flow' };
  $('#table-title').textContent = `${scopeName[state.scope.kind]} (${rows.length})`;
}

// --- approvals ---------------------------------------------------------------------------------
//
// What sub-agents dispatched with `approvals: "ask"` ask to do, each with Allow and Deny. The tool input
// is untrusted: it is shown as text only (textContent, never markup), and the server sends each field
// cut to a few hundred characters with its full length. A card stays the same element while its
// approval is pending, so a message being typed survives the re-renders of the live feed.

const approvalElements = new Map(); // approval_id -> its card

function approvalCard(approval) {
  const message = h('input', {
    type: 'text', class: 'approval-message', maxlength: 10000, autocomplete: 'off',
    placeholder: 'message to the sub-agent (optional)', 'aria-label': 'message with a denial',
  });
  const allow = h('button', { type: 'button', class: 'allow small', text: 'Allow' });
  const deny = h('button', { type: 'button', class: 'deny soft-danger small', text: 'Deny' });
  const answer = (decision) => answerApproval(approval, decision, message.value, [allow, deny]);
  allow.addEventListener('click', () => answer('allow'));
  deny.addEventListener('click', () => answer('deny'));
  message.addEventListener('keydown', (event) => {
    if (event.key === 'Enter') answer('deny');
  });
  const fields = [];
  for (const { field: name, text, chars } of approval.input_summary) {
    const cut = chars > text.length ? h('span', { class: 'cut', text: `… ${(chars - text.length).toLocaleString()} more characters` }) : null;
    fields.push(h('dt', { text: name }), h('dd', {}, h('span', { class: 'value', text }), cut));
  }
  const hidden = approval.input_fields - approval.input_summary.length;
  if (hidden > 0) fields.push(h('dt', { text: '…' }), h('dd', { class: 'muted', text: `${hidden} more fields` }));
  const effect = h('a', {
    href: '#', class: 'approval-effect', title: approval.effect_id,
    onclick: (event) => {
      event.preventDefault();
      select(approval.effect_id, true);
    },
  });
  const card = h(
    'article',
    { class: 'approval', dataset: { approvalId: approval.approval_id, effectId: approval.effect_id } },
    h('div', { class: 'approval-head' },
      h('span', { class: 'tool mono', text: approval.tool }), effect,
      h('span', { class: 'muted mono', text: shortId(approval.effect_id) }),
      h('span', { class: 'spacer' }),
      h('span', { class: 'muted', text: `asked ${fmtClock(approval.requested_at)}` })),
    h('dl', { class: 'approval-input mono' }, fields),
    h('div', { class: 'approval-actions' }, allow, message, deny),
  );
  card.effect_ = effect;
  return card;
}

async function answerApproval(approval, decision, message, buttons) {
  for (const button of buttons) button.disabled = true;
  try {
    await api(`api/approvals/${encodeURIComponent(approval.approval_id)}/answer`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify(decision === 'deny' && message.trim() ? { decision, message } : { decision }),
    });
    state.approvals = state.approvals.filter((a) => a.approval_id !== approval.approval_id);
    state.approvalNote = null;
  } catch (error) {
    if (error instanceof AuthError) return;
    state.approvalNote = `Could not ${decision} ${approval.tool} of ${effectName(approval.effect_id)}: ${error.message || error}`;
    for (const button of buttons) button.disabled = false;
  }
  scheduleRender();
}

function effectName(id) {
  const row = state.effects.get(id);
  return row ? nameOf(row) : shortId(id);
}

function renderApprovals() {
  const panel = $('#approvals');
  const list = $('#approval-list');
  const wanted = new Set(state.approvals.map((a) => a.approval_id));
  for (const [id, card] of approvalElements) {
    if (!wanted.has(id)) {
      card.remove();
      approvalElements.delete(id);
    }
  }
  let previous = null;
  for (const approval of state.approvals) {
    let card = approvalElements.get(approval.approval_id);
    if (!card) {
      card = approvalCard(approval);
      approvalElements.set(approval.approval_id, card);
    }
    setText(card.effect_, effectName(approval.effect_id));
    const expected = previous ? previous.nextSibling : list.firstChild;
    if (expected !== card) list.insertBefore(card, expected);
    previous = card;
  }
  setText($('#approvals-title'), `Waiting for approval (${state.approvals.length})`);
  const note = $('#approval-note');
  note.hidden = !state.approvalNote;
  setText(note.querySelector('.text'), state.approvalNote || '');
  panel.hidden = !state.approvals.length && !state.approvalNote;
}

$('#approval-note .dismiss').addEventListener('click', () => {
  state.approvalNote = null;
  scheduleRender();
});

// --- the scope panel: summary, DAG and timeline ------------------------------------------------

// The budget of the run or group shown, if it has one: spending against each limit (set_budget).
function budgetMetric(kind, id) {
  const budget = (state.budgets || []).find((b) => (kind === 'run' ? b.scope.run_id === id : b.scope.group === id));
  if (!budget) return null;
  const parts = [];
  if (budget.max_cost_usd !== null) parts.push(`${fmtCost(budget.spent_cost_usd) || '$0'} of ${fmtCost(budget.max_cost_usd) || '$0'}`);
  if (budget.max_tokens !== null) parts.push(`${budget.spent_tokens} of ${budget.max_tokens} tokens`);
  if (!parts.length) parts.push(`${fmtCost(budget.spent_cost_usd) || '$0'}, ${budget.spent_tokens} tokens (no limit)`);
  const text = `budget ${parts.join(' · ')}${budget.exceeded ? ' · spent' : ''}`;
  return h('span', { class: `metric budget${budget.exceeded ? ' exceeded' : ''}`, id: 'scope-budget', text });
}

function scopeRows() {
  return [...state.effects.values()].filter(inScope).sort((a, b) => (a.created_at < b.created_at ? -1 : 1));
}

function renderScope() {
  const panel = $('#scope');
  const { kind, id } = state.scope;
  if (kind === 'all') {
    panel.hidden = true;
    return;
  }
  panel.hidden = false;
  const rows = scopeRows();
  const flow = kind === 'flow' ? state.flows.find((f) => f.flow_id === id) : null;
  $('#scope-kind').textContent = kind === 'flow' ? `Flow${flow ? ` · ${flow.policy}` : ''}` : kind === 'group' ? 'Group' : 'Run';
  $('#scope-title').textContent = id;
  const counts = {};
  for (const row of rows) counts[row.status] = (counts[row.status] || 0) + 1;
  const starts = rows.map((r) => parseTime(r.created_at)).filter((t) => t !== null);
  const active = rows.some((r) => ACTIVE.has(r.status));
  const ends = rows.map((r) => parseTime(r.finished_at)).filter((t) => t !== null);
  const wall = starts.length ? ((active || !ends.length ? nowMs() : Math.max(...ends)) - Math.min(...starts)) / 1000 : null;
  const busy = rows.reduce((sum, r) => sum + (durationOf(r) || 0), 0);
  const cost = rows.reduce((sum, r) => sum + (r.cost_usd || 0), 0);
  const summary = [
    flow ? statusPill(flow.status) : null,
    ...STATUSES.filter((st) => counts[st]).map((st) => h('span', { class: `count st-${st}` }, h('b', { text: counts[st] }), ` ${st}`)),
    wall !== null ? h('span', { class: 'metric', text: `wall ${fmtSeconds(wall)}` }) : null,
    busy ? h('span', { class: 'metric', text: `busy ${fmtSeconds(busy)}` }) : null,
    wall && busy ? h('span', { class: 'metric', text: `×${(busy / wall).toFixed(2)} parallel` }) : null,
    cost ? h('span', { class: 'metric', text: `cost ${fmtCost(cost)}` }) : null,
    budgetMetric(kind, id),
  ];
  $('#scope-summary').replaceChildren(...summary.filter(Boolean));
  const cancel = $('#scope-cancel');
  cancel.hidden = !active || kind === 'run';
  cancel.textContent = kind === 'flow' ? 'Cancel flow' : 'Cancel group';
  $('#dag-box').hidden = !flow;
  if (flow) renderDag(flow);
  renderTimeline(rows, flow);
}

$('#scope-cancel').addEventListener('click', async (event) => {
  const { kind, id } = state.scope;
  const button = event.currentTarget;
  button.disabled = true;
  button.textContent = 'Cancelling…';
  try {
    const path = kind === 'flow' ? `api/flows/${encodeURIComponent(id)}/cancel` : `api/groups/${encodeURIComponent(id)}/cancel`;
    const answer = await api(path, { method: 'POST' });
    mergeRows(answer.effects);
  } catch (_) {
    /* the rows say what happened */
  }
  button.disabled = false;
  scheduleRender();
});

function niceStep(span) {
  const steps = [0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200];
  for (const step of steps) if (span / step <= 8) return step;
  return 14400;
}

function renderTimeline(rows, flow) {
  const box = $('#timeline');
  if (!rows.length) {
    box.replaceChildren(h('div', { class: 'muted', text: 'nothing dispatched yet' }));
    return;
  }
  const labelOf = (row) => (flow && row.step_id ? (row.label && row.label.startsWith(`${row.step_id}[`) ? row.label : row.step_id) : nameOf(row));
  const now = nowMs();
  const t0 = Math.min(...rows.map((r) => parseTime(r.created_at)));
  const tEnd = Math.max(...rows.map((r) => (r.finished_at ? parseTime(r.finished_at) : now)), t0 + 1000);
  const width = Math.max(480, box.clientWidth || 800);
  const labelW = Math.min(220, Math.max(120, width * 0.2));
  const right = 16;
  const rowH = 24;
  const top = 22;
  const height = top + rows.length * rowH + 8;
  const span = (tEnd - t0) / 1000;
  const x = (t) => labelW + ((t - t0) / 1000 / span) * (width - labelW - right);
  const svg = s('svg', { viewBox: `0 0 ${width} ${height}`, width, height, class: 'timeline', role: 'img' });
  const step = niceStep(span);
  for (let t = 0; t <= span + 1e-9; t += step) {
    const gx = x(t0 + t * 1000);
    svg.append(s('line', { x1: gx, x2: gx, y1: top - 4, y2: height - 4, class: 'grid' }));
    svg.append(s('text', { x: gx, y: 12, class: 'tick', 'text-anchor': 'middle', text: `+${fmtSeconds(t).replace(' ', '')}` }));
  }
  rows.forEach((row, i) => {
    const y = top + i * rowH;
    const created = parseTime(row.created_at);
    const started = parseTime(row.started_at);
    const finished = row.finished_at ? parseTime(row.finished_at) : null;
    const g = s('g', { class: 'lane', 'data-effect-id': row.effect_id, onclick: () => select(row.effect_id, true) });
    if (row.effect_id === state.selected) g.classList.add('selected');
    g.append(s('rect', { x: 0, y: y + 1, width, height: rowH - 2, class: 'lane-bg' }));
    g.append(s('text', { x: 8, y: y + rowH / 2 + 4, class: 'lane-label', text: labelOf(row).slice(0, 34) }));
    const waitEnd = started !== null ? started : finished !== null ? finished : now;
    if (waitEnd > created) {
      g.append(
        s('rect', {
          x: x(created), y: y + 8, width: Math.max(1, x(waitEnd) - x(created)), height: rowH - 16,
          class: 'bar-wait', 'data-effect-id': row.effect_id,
        }, s('title', { text: `${labelOf(row)}: waited ${fmtSeconds((waitEnd - created) / 1000)}` })),
      );
    }
    if (started !== null) {
      const end = finished !== null ? finished : now;
      g.append(
        s('rect', {
          x: x(started), y: y + 4, width: Math.max(2, x(end) - x(started)), height: rowH - 8, rx: 3,
          class: `bar-run st-${row.status}`, 'data-effect-id': row.effect_id, 'data-status': row.status,
        }, s('title', { text: `${labelOf(row)}: ${row.status}, ran ${fmtSeconds((end - started) / 1000)}` })),
      );
    }
    svg.append(g);
  });
  if (rows.some((r) => ACTIVE.has(r.status))) {
    const nx = x(now);
    svg.append(s('line', { x1: nx, x2: nx, y1: top - 6, y2: height - 2, class: 'now' }));
  }
  box.replaceChildren(svg);
}

function renderDag(flow) {
  const box = $('#dag');
  const byStep = new Map(flow.steps.map((step) => [step.step_id, step]));
  const depth = new Map();
  const depthOf = (id, seen = new Set()) => {
    if (depth.has(id)) return depth.get(id);
    if (seen.has(id)) return 0;
    seen.add(id);
    const step = byStep.get(id);
    const d = step && step.needs.length ? 1 + Math.max(...step.needs.map((n) => depthOf(n, seen))) : 0;
    depth.set(id, d);
    return d;
  };
  const layers = [];
  for (const step of flow.steps) {
    const d = depthOf(step.step_id);
    (layers[d] = layers[d] || []).push(step);
  }
  const nodeW = 150;
  const nodeH = 42;
  const gapX = 64;
  const gapY = 14;
  const pad = 12;
  const tallest = Math.max(...layers.map((layer) => layer.length));
  const width = pad * 2 + layers.length * nodeW + (layers.length - 1) * gapX;
  const height = pad * 2 + tallest * nodeH + (tallest - 1) * gapY;
  const pos = new Map();
  layers.forEach((layer, d) => {
    const offset = ((tallest - layer.length) * (nodeH + gapY)) / 2;
    layer.forEach((step, i) => pos.set(step.step_id, { x: pad + d * (nodeW + gapX), y: pad + offset + i * (nodeH + gapY) }));
  });
  const svg = s('svg', { viewBox: `0 0 ${width} ${height}`, width, height, class: 'dag', role: 'img' });
  svg.append(
    s('defs', {}, s('marker', { id: 'arrow', viewBox: '0 0 10 10', refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: 'auto-start-reverse' },
      s('path', { d: 'M 0 0 L 10 5 L 0 10 z', class: 'arrow' }))),
  );
  for (const step of flow.steps) {
    const to = pos.get(step.step_id);
    for (const need of step.needs) {
      const from = pos.get(need);
      if (!from) continue;
      const x1 = from.x + nodeW;
      const y1 = from.y + nodeH / 2;
      const x2 = to.x - 2;
      const y2 = to.y + nodeH / 2;
      const mid = (x1 + x2) / 2;
      const row = state.effects.get(step.effect_id);
      svg.append(s('path', {
        d: `M ${x1} ${y1} C ${mid} ${y1}, ${mid} ${y2}, ${x2} ${y2}`, class: `edge ${row ? `to-${row.status}` : ''}`,
        'marker-end': 'url(#arrow)', 'data-from': need, 'data-to': step.step_id,
      }));
    }
  }
  for (const step of flow.steps) {
    const p = pos.get(step.step_id);
    const row = state.effects.get(step.effect_id);
    const status = row ? row.status : 'pending';
    const d = row ? durationOf(row) : null;
    const g = s('g', {
      class: `node st-${status}${state.selected === step.effect_id ? ' selected' : ''}`,
      transform: `translate(${p.x},${p.y})`, 'data-step-id': step.step_id, 'data-effect-id': step.effect_id,
      onclick: () => select(step.effect_id, true),
    });
    g.append(s('rect', { width: nodeW, height: nodeH, rx: 7, class: 'node-box' }));
    g.append(s('rect', { width: 5, height: nodeH, rx: 2, class: 'node-mark' }));
    g.append(s('text', { x: 14, y: 17, class: 'node-title', text: step.step_id.slice(0, 20) }));
    // Fan-out (for_each): the step's children carry its flow and step id; cached (resume): taken, not run.
    const kids = [...state.effects.values()].filter(
      (r) => r.flow_id === flow.flow_id && r.step_id === step.step_id && r.effect_id !== step.effect_id,
    );
    const okKids = kids.filter((r) => r.status === 'succeeded').length;
    const extra = kids.length ? ` · ${okKids}/${kids.length} items` : row && row.cached ? ' · cached' : '';
    g.dataset.children = String(kids.length);
    g.append(s('text', { x: 14, y: 33, class: 'node-sub', text: `${status}${d !== null ? ` · ${fmtSeconds(d)}` : ''}${extra}` }));
    g.append(s('title', { text: `${step.step_id} (${step.effect_id}): ${status}${extra}` }));
    svg.append(g);
  }
  box.replaceChildren(svg);
}

// --- the detail panel --------------------------------------------------------------------------

let outputAbort = null;
let detailTimer = null;

function select(id, updateUrl) {
  if (id === state.selected && id !== null) return;
  state.selected = id || null;
  state.detail = null;
  if (outputAbort) outputAbort.abort();
  outputAbort = null;
  $('#output').textContent = '';
  $('#detail').hidden = !state.selected;
  document.body.classList.toggle('with-detail', Boolean(state.selected));
  if (state.selected) {
    loadDetail();
    followOutput(state.selected);
  }
  if (updateUrl) writeView();
  scheduleRender();
}

function loadDetailSoon() {
  if (detailTimer) return;
  detailTimer = setTimeout(() => {
    detailTimer = null;
    loadDetail();
  }, 200);
}

async function loadDetail() {
  const id = state.selected;
  if (!id) return;
  try {
    const record = await api(`api/effects/${encodeURIComponent(id)}`);
    if (state.selected !== id) return;
    state.detail = record;
    mergeRows([Object.assign({}, state.effects.get(id) || {}, record)]);
    scheduleRender();
  } catch (error) {
    if (state.selected === id) $('#output-state').textContent = String(error.message || error);
  }
}

async function followOutput(id) {
  const controller = new AbortController();
  outputAbort = controller;
  const pre = $('#output');
  const note = $('#output-state');
  let cursor = 0;
  note.textContent = 'streaming…';
  for (let attempt = 0; attempt < 50 && !controller.signal.aborted; attempt++) {
    try {
      let ended = false;
      await readEvents(`api/effects/${encodeURIComponent(id)}/output/stream?cursor=${cursor}`, (name, data) => {
        if (controller.signal.aborted) return;
        if (name === 'output') {
          const atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 8;
          pre.append(document.createTextNode(data.data));
          if (pre.textContent.length > 2_000_000) pre.textContent = pre.textContent.slice(-1_000_000);
          cursor = data.cursor;
          if (atBottom) pre.scrollTop = pre.scrollHeight;
          note.textContent = `${cursor.toLocaleString()} bytes, streaming…`;
        } else if (name === 'end') {
          ended = true;
          note.textContent = `${data.cursor.toLocaleString()} bytes · ended (${data.status})`;
        }
      }, controller.signal);
      if (ended) return;
    } catch (error) {
      if (controller.signal.aborted || error instanceof AuthError) return;
    }
    await sleep(1000);
  }
}

function field(name, value, cls) {
  if (value === null || value === undefined || value === '') return [];
  return [h('dt', { text: name }), h('dd', { class: cls || '', text: String(value) })];
}

// Isolation: the effect's git worktree, its branch and the files it changed.
function workspaceFields(ws) {
  if (!ws) return [];
  const branch = ws.branch_kept ? ws.branch : `${ws.branch} (deleted: nothing new)`;
  const files = ws.changed_files || [];
  const more = ws.changed_files_truncated ? ' (more not shown)' : '';
  const count = ws.changed_files_count ?? files.length;
  const changed = files.length
    ? [h('dt', { text: 'Changed files' }), h('dd', { class: 'mono wrap changed-files' }, ...files.map((f) => h('div', { text: f })))]
    : [];
  return [
    ...field('Branch', branch, 'mono'),
    ...field('Worktree', `${ws.path}${ws.kept ? '' : ' (removed)'}`, 'mono wrap'),
    ...field('Changes', `${count}${more} file${count === 1 ? '' : 's'}, +${ws.insertions || 0} −${ws.deletions || 0}`),
    ...changed,
  ];
}

// Sandbox: the network the effect had, and what it could write and could not see besides the defaults.
function sandboxText(sb) {
  if (!sb) return null;
  const allow = sb.network && sb.network.allow;
  const parts = [allow ? `network: only ${allow.join(', ') || '(nothing)'}` : `network: ${sb.network}`];
  if ((sb.write || []).length) parts.push(`writes: ${sb.write.join(', ')}`);
  if ((sb.hide || []).length) parts.push(`hidden: ${sb.hide.join(', ')}`);
  return parts.join(' · ');
}

// An effect's `limits` as its cgroup enforces them: "memory 512 MiB · pids 64 · cpu 0.5".
function limitsText(limits) {
  if (!limits) return null;
  const shown = [];
  if (limits.memory_mb !== undefined) shown.push(`memory ${limits.memory_mb} MiB`);
  if (limits.pids !== undefined) shown.push(`pids ${limits.pids}`);
  if (limits.cpu !== undefined) shown.push(`cpu ${limits.cpu}`);
  return shown.join(' · ') || null;
}

function renderDetail() {
  const id = state.selected;
  if (!id) return;
  const row = Object.assign({}, state.effects.get(id) || {}, state.detail || {}, state.effects.get(id) || {});
  if (!row.effect_id) return;
  $('#detail-title').textContent = nameOf(row);
  $('#detail-id').textContent = row.effect_id;
  const cancel = $('#detail-cancel');
  cancel.hidden = !ACTIVE.has(row.status);
  cancel.dataset.effectId = row.effect_id;
  const duration = durationOf(row);
  const fields = [
    h('dt', { text: 'Status' }), h('dd', {}, statusPill(row.status, row.cancel_reason)),
    ...field('Waiting for', row.waiting_for === 'approval' ? 'approval (see Approvals above)' : null),
    ...field('Cancel message', row.cancel_message),
    ...field('Error', row.error, 'bad'),
    ...field('Exit', row.exit_code !== null && row.exit_code !== undefined ? `${row.exit_code}` : row.signal ? `signal ${row.signal}` : null),
    ...field('Kind', row.kind === 'harness' ? `harness · ${row.harness}` : row.kind),
    ...field('Command', (row.command || []).join(' '), 'mono wrap'),
    ...field('Run', row.run_id, 'mono'),
    ...field('Group', row.group),
    ...field('Flow step', row.flow_id ? `${row.step_id} of ${row.flow_id}` : null),
    ...field('Depends on', (row.depends_on || []).join(', '), 'mono'),
    ...field('Created', row.created_at ? `${fmtClock(row.created_at)} (${row.created_at})` : null),
    ...field('Started', row.started_at ? fmtClock(row.started_at) : ACTIVE.has(row.status) ? 'waiting' : null),
    ...field('Finished', fmtClock(row.finished_at)),
    ...field('Duration', fmtSeconds(duration)),
    ...field('Attempt', row.max_attempts > 1 ? `${row.attempt} of ${row.max_attempts}` : null),
    ...field('PID', row.pid),
    ...field('Node', row.node, 'mono'),
    ...field('Sandbox', sandboxText(row.sandbox), 'mono wrap'),
    ...field('Limits', limitsText(row.limits), 'mono'),
    ...field('Peak memory', row.peak_memory_mb !== null && row.peak_memory_mb !== undefined ? `${row.peak_memory_mb} MiB` : null),
    ...field('Cost', fmtCost(row.cost_usd)),
    ...workspaceFields((state.detail && state.detail.effect_id === row.effect_id && state.detail.workspace) || row.workspace),
    ...field('Output', `${(row.output_bytes || 0).toLocaleString()} bytes${row.output_truncated ? ' (truncated)' : ''}${row.stalled ? ', stalled' : ''}`),
  ];
  $('#detail-fields').replaceChildren(...fields);
  const result = state.detail ? state.detail.result : null;
  $('#detail-result-box').hidden = result === null || result === undefined;
  if (result !== null && result !== undefined) $('#detail-result').textContent = JSON.stringify(result, null, 2);
}

$('#detail-cancel').addEventListener('click', (event) => cancelEffect(event.currentTarget.dataset.effectId, event.currentTarget));
$('#detail-close').addEventListener('click', () => select(null, true));
document.addEventListener('keydown', (event) => {
  if (event.key === 'Escape' && state.selected && $('#token-dialog').hidden) select(null, true);
});
$('#search').addEventListener('input', (event) => {
  state.search = event.target.value;
  scheduleRender();
});
$('#scope-all').addEventListener('click', (event) => {
  event.preventDefault();
  state.scope = { kind: 'all', id: null };
  writeView();
  scheduleRender();
});
window.addEventListener('resize', scheduleRender);

// Durations of running effects and the timeline's "now" move on their own.
setInterval(() => {
  if ([...state.effects.values()].some((row) => ACTIVE.has(row.status))) scheduleRender();
}, 1000);

// --- start -------------------------------------------------------------------------------------

async function start() {
  liveGeneration += 1;
  try {
    state.info = await api('api/info');
    const db = state.info.db;
    $('#db').textContent = db.length > 60 ? `…${db.slice(-59)}` : db;
    $('#db').title = `journal: ${db}`;
    document.title = `effectd · ${state.info.db.split('/').slice(-2).join('/')}`;
  } catch (error) {
    if (error instanceof AuthError) return;
  }
  readView();
  liveLoop(liveGeneration);
  if (state.selected && !outputAbort) followOutput(state.selected);
}

start();
