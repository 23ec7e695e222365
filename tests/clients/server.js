// A stand-in for an app node that uses socket.io (Overleaf's editor) and SockJS (Meteor,
// Rocket.Chat): the real server libraries, pinned in package-lock.json. Usage:
//   node server.js NAME PORT
// GET/HEAD /status answers 200 (health checks); /app.html is the page a browser loads
// (browser.js); any other plain request answers 200 with x-node: NAME. socket.io at /socket.io/ and SockJS at /sockjs answer each message with the
// node's name, so a client sees which node holds its session.
'use strict';
const http = require('http');
const { Server } = require('socket.io');
const sockjs = require('sockjs');

const [name, port] = [process.argv[2], Number(process.argv[3])];
// The page a browser loads (app.html) and SockJS's browser client; socket.io serves its own at
// /socket.io/socket.io.js.
const fs = require('fs');
const path = require('path');
const files = {
  '/app.html': ['text/html', path.join(__dirname, 'app.html')],
  '/sockjs.min.js': ['application/javascript', require.resolve('sockjs-client/dist/sockjs.min.js')],
};
const server = http.createServer((req, res) => {
  res.setHeader('x-node', name);
  const file = files[req.url.split('?')[0]];
  if (file) {
    res.setHeader('content-type', file[0]);
    return res.end(fs.readFileSync(file[1]));
  }
  res.setHeader('content-type', 'text/plain');
  res.end(req.url === '/status' ? 'ok' : `hello from ${name}\n`);
});

const io = new Server(server, { pingInterval: 2000, pingTimeout: 2000 });
io.on('connection', (socket) => {
  socket.on('echo', (msg, ack) => ack({ node: name, msg, transport: socket.conn.transport.name }));
});

const sjs = sockjs.createServer({ prefix: '/sockjs', log: () => {} });
sjs.on('connection', (conn) => {
  conn.on('data', (msg) => conn.write(JSON.stringify({ node: name, msg, transport: conn.protocol })));
});
sjs.installHandlers(server);

server.listen(port, '127.0.0.1', () => console.log(`listening ${name} ${port}`));
