// A real browser (Debian's chromium, driven by playwright-core) loads app.html through a proxy
// and runs socket.io or SockJS with its own cookie handling (Secure, SameSite, HttpOnly as a
// user's browser applies them). Usage:
//   node browser.js URL TRANSPORT SESSIONS
// URL: the proxy's origin; TRANSPORT: polling | websocket | sockjs | sockjs-websocket. Each session is a fresh
// browser context (no cookies), as a new visitor. Prints one JSON line per session.
'use strict';
const { chromium } = require('playwright-core');

const [origin, transport, sessions] = process.argv.slice(2);
(async () => {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-gpu'],
  });
  for (let i = 0; i < Number(sessions); i++) {
    const context = await browser.newContext({ ignoreHTTPSErrors: true });
    const page = await context.newPage();
    let result;
    try {
      await page.goto(`${origin}/app.html?transport=${transport}`);
      await page.waitForFunction(() => window.result !== undefined, null, { timeout: 15000 });
      result = await page.evaluate(() => window.result);
      const cookies = await context.cookies();
      result.cookies = cookies.map((c) => ({ name: c.name, secure: c.secure, httpOnly: c.httpOnly, sameSite: c.sameSite }));
    } catch (e) {
      result = { ok: false, errors: [String(e.message || e)] };
    }
    console.log(JSON.stringify(result));
    await context.close();
  }
  await browser.close();
})().catch((e) => { console.error(e); process.exit(1); });
