// A socket.io client that rides out a node's death: it reconnects as socket.io does by default
// (withCredentials, so the affinity cookie is kept) and keeps sending. Usage:
//   node failover.js URL TRANSPORTS DURATION_MS
// Sends a message every 50 ms for DURATION_MS and prints one JSON line per answer's node change
// ({"node": ...}, the first as soon as the session is up) and at the end a summary:
// {"summary": true, "nodes": [...], "answered", "lost", "disconnects", "outage_ms", "errors"}.
// outage_ms: from the last answer before a failure to the first answer after it.
'use strict';
const { io } = require('socket.io-client');

const [url, transports, duration] = process.argv.slice(2);
const socket = io(url, {
  transports: transports.split(','),
  upgrade: transports.includes('websocket'),
  withCredentials: true,
  rejectUnauthorized: false,
  reconnectionDelay: 100,
  reconnectionDelayMax: 500,
  randomizationFactor: 0,
  timeout: 3000,
});
const s = { summary: true, nodes: [], answered: 0, lost: 0, disconnects: 0, outage_ms: 0, errors: [] };
let lastAnswer = null;
let failing = false;
socket.on('disconnect', (reason) => { s.disconnects++; s.errors.push(`disconnect: ${reason}`); failing = true; });
socket.on('connect_error', (e) => { s.errors.push(`connect_error: ${e.message}`); failing = true; });
const tick = setInterval(() => {
  if (!socket.connected) return;
  socket.timeout(1000).emitWithAck('echo', Date.now()).then((a) => {
    const now = Date.now();
    if (failing && lastAnswer !== null) s.outage_ms = Math.max(s.outage_ms, now - lastAnswer);
    failing = false;
    lastAnswer = now;
    s.answered++;
    if (s.nodes[s.nodes.length - 1] !== a.node) {
      s.nodes.push(a.node);
      console.log(JSON.stringify({ node: a.node }));
    }
  }, () => { s.lost++; failing = true; });
}, 50);
setTimeout(() => {
  clearInterval(tick);
  console.log(JSON.stringify(s));
  socket.close();
  process.exit(0);
}, Number(duration));
