// A real socket.io client (socket.io-client, as Overleaf's editor uses) through a proxy. Usage:
//   node client.js URL TRANSPORTS ECHOES [withCredentials]
// TRANSPORTS: "polling" (long polling only) or "polling,websocket" (polling, then upgrade).
// Sends ECHOES messages one after another, each waiting for its answer (at most 10 s in all),
// and prints one JSON line: {ok, echoes, nodes, transport, errors}. withCredentials "true"
// makes the Node client keep cookies (the affinity cookie) as a browser does; without it a
// Node client sends none.
'use strict';
const { io } = require('socket.io-client');

const [url, transports, echoes, credentials] = process.argv.slice(2);
const socket = io(url, {
  transports: transports.split(','),
  upgrade: transports.includes('websocket'),
  withCredentials: credentials === 'true',
  rejectUnauthorized: false, // the tests' self-signed certificate
  reconnection: false,
  timeout: 5000,
});
const result = { ok: false, echoes: 0, nodes: [], transport: null, errors: [] };
const done = () => {
  result.nodes = [...new Set(result.nodes)];
  console.log(JSON.stringify(result));
  socket.close();
  process.exit(0);
};
setTimeout(() => { result.errors.push('timeout'); done(); }, 10000);
socket.on('connect_error', (e) => { result.errors.push(`connect_error: ${e.message}`); done(); });
socket.on('disconnect', (reason) => { if (!result.ok) { result.errors.push(`disconnect: ${reason}`); done(); } });
socket.on('connect', async () => {
  for (let i = 0; i < Number(echoes); i++) {
    // Wait a little between messages so that polling requests and upgrades interleave.
    await new Promise((r) => setTimeout(r, 20));
    const answer = await socket.timeout(3000).emitWithAck('echo', i).catch((e) => ({ error: e.message }));
    if (answer.error) { result.errors.push(`echo ${i}: ${answer.error}`); return done(); }
    result.echoes++;
    result.nodes.push(answer.node);
    result.transport = answer.transport;
  }
  result.ok = true;
  done();
});
