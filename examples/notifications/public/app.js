// The page: sign in, get a subscribe-only token from the back end, subscribe
// to the user's topic straight from the browser, show what arrives.
import { connect } from '/corebus/index.js';

const $ = (id) => document.getElementById(id);

async function api(path, options = {}) {
  const response = await fetch(path, { headers: { 'Content-Type': 'application/json' }, ...options });
  if (!response.ok) throw new Error((await response.json().catch(() => ({}))).error ?? response.statusText);
  return response.headers.get('Content-Type')?.startsWith('application/json') ? response.json() : response.text();
}

function show(text, detail, className) {
  const item = document.createElement('li');
  item.textContent = text;
  if (className) item.className = className;
  const small = document.createElement('small');
  small.textContent = detail;
  item.append(small);
  $('notifications').prepend(item);
}

function showError(message) {
  $('error').textContent = message;
  $('error').hidden = false;
}

async function start() {
  const me = await api('/api/me');
  $('login').hidden = true;
  $('app').hidden = false;
  $('user').textContent = me.user;
  $('topic').textContent = `${me.namespace}/${me.topic}`;
  const client = await connect({
    url: me.broker,
    // Called for the first connection, every reconnect, and before expiry.
    tokenProvider: () => api('/api/corebus-token'),
  });
  client.on('state', ({ state }) => {
    $('state').textContent = state;
    $('state').className = `state ${state}`;
  });
  $('state').textContent = 'connected';
  $('state').className = 'state connected';
  await client.subscribe(me.namespace, me.topic, {
    onItem(item) {
      const note = JSON.parse(item.text());
      show(note.title, `job ${note.job} · ${new Date(note.at).toLocaleTimeString()} · seq ${item.seq}`);
    },
    onDiscontinuity(gap) {
      show('Some notifications were missed', `seq ${gap.lastSeq + 1n} to ${gap.nextSeq - 1n}`, 'gap');
    },
    onError(error) {
      showError(error.message);
    },
  });
  window.corebusReady = true;
}

$('login').addEventListener('submit', async (event) => {
  event.preventDefault();
  try {
    await api('/api/login', { method: 'POST', body: JSON.stringify({ name: $('name').value }) });
    await start();
  } catch (error) {
    showError(error.message);
  }
});

$('job').addEventListener('submit', async (event) => {
  event.preventDefault();
  try {
    await api('/api/jobs', { method: 'POST', body: JSON.stringify({ name: $('job-name').value }) });
  } catch (error) {
    showError(error.message);
  }
});

// Already signed in (a reload): go straight to the notifications.
start().catch(() => {});
