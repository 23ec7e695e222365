// An HTTP/2 POST without content-length (the body streams from memory in 16 KiB writes), for
// body-limit's test: prints {status, body, rstCode} as the client saw them. Node's http2 reads
// a response followed by RST_STREAM(NO_ERROR) as RFC 9113 8.1 means it (Debian 12's curl 7.88
// sometimes reports an empty reply instead). Usage: node h2post.js URL BYTES
'use strict';
const http2 = require('http2');

const [url, bytes] = [process.argv[2], Number(process.argv[3])];
const u = new URL(url);
const session = http2.connect(u.origin);
const req = session.request({ ':method': 'POST', ':path': u.pathname });
const out = { status: 0, body: '', rstCode: null, error: null };
req.on('response', (h) => { out.status = h[':status']; });
req.setEncoding('utf8');
req.on('data', (d) => { out.body += d; });
req.on('error', (e) => { out.error = e.code || e.message; });
req.on('close', () => {
  out.rstCode = req.rstCode;
  console.log(JSON.stringify(out));
  session.close();
});
const chunk = Buffer.alloc(16384, 'a');
let left = bytes;
const write = () => {
  while (left > 0) {
    const n = Math.min(left, chunk.length);
    left -= n;
    if (!req.write(n === chunk.length ? chunk : chunk.subarray(0, n))) return req.once('drain', write);
  }
  req.end();
};
write();
