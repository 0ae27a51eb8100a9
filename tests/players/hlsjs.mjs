// hls.js (a third-party ABR player) in Debian's headless Chromium, driven by playwright-core.
//
// Usage: node hlsjs.mjs MASTER_URL [--slow-kbps N] [--timeout-s N]
//
// Plays MASTER_URL with the network fast, then throttled to --slow-kbps, then fast again
// (Chrome DevTools Protocol Network.emulateNetworkConditions), waiting in each phase until
// hls.js loads a fragment of the expected level: the top level (fast), the bottom level (slow),
// the top level again (fast). In the last two phases it skips ahead to the end of the buffer
// every 5 s without one. Prints one JSON object on stdout:
//   { ok, phases, levels: [{index, bitrate, height, url}], switches: [{t, level}],
//     frags: [{t, level, sn, url}], session, errors }
// Exit status 0 when every phase was reached, 1 when one timed out, 2 on a hard timeout.
// The player page is served from a throw-away loopback HTTP server on another port, so the
// requests to reel are cross-origin (CORS is exercised too).

import http from 'node:http';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = path.dirname(fileURLToPath(import.meta.url));
const args = process.argv.slice(2);
const master = args[0];
const opt = (name, dflt) => {
  const i = args.indexOf(name);
  return i >= 0 ? Number(args[i + 1]) : dflt;
};
const slowKbps = opt('--slow-kbps', 400);
const timeoutS = opt('--timeout-s', 150);
if (!master) {
  console.error('usage: node hlsjs.mjs MASTER_URL [--slow-kbps N] [--timeout-s N]');
  process.exit(64);
}

let browser;
let userDataDir;
let server;
const result = { ok: false, phases: [], levels: [], switches: [], frags: [], session: null, errors: [] };
const finish = async (code) => {
  try { if (browser) await browser.close(); } catch (_) {}
  try { if (server) server.close(); } catch (_) {}
  try { fs.rmSync(userDataDir, { recursive: true, force: true }); } catch (_) {}
  process.stdout.write(JSON.stringify(result) + '\n');
  process.exit(code);
};
setTimeout(() => { result.errors.push(`hard timeout ${timeoutS} s`); finish(2); }, timeoutS * 1000).unref();

const hlsJs = fs.readFileSync(path.join(here, 'node_modules/hls.js/dist/hls.min.js'));
const page = `<!doctype html><html><body>
<video id="v" muted autoplay playsinline width="640" height="360"></video>
<script src="/hls.min.js"></script>
<script>
  window.trace = { switches: [], frags: [], errors: [], levels: [] };
  const video = document.getElementById('v');
  const hls = new Hls({
    maxBufferLength: 4, maxMaxBufferLength: 6, backBufferLength: 10,
    abrEwmaFastVoD: 0.5, abrEwmaSlowVoD: 1, capLevelToPlayerSize: false,
    startLevel: 0,
  });
  hls.on(Hls.Events.MANIFEST_PARSED, (_e, d) => {
    window.trace.levels = hls.levels.map((l, i) => ({ index: i, bitrate: l.bitrate, height: l.height, url: l.uri || (Array.isArray(l.url) ? l.url[0] : l.url) }));
    video.play().catch((e) => window.trace.errors.push('play: ' + e));
  });
  hls.on(Hls.Events.LEVEL_SWITCHED, (_e, d) => window.trace.switches.push({ t: Date.now(), level: d.level }));
  hls.on(Hls.Events.FRAG_LOADED, (_e, d) => {
    if (d.frag.sn !== 'initSegment') window.trace.frags.push({ t: Date.now(), level: d.frag.level, sn: d.frag.sn, url: d.frag.url });
  });
  hls.on(Hls.Events.ERROR, (_e, d) => { if (d.fatal) window.trace.errors.push(d.type + ': ' + d.details); });
  hls.loadSource(${JSON.stringify(master)});
  hls.attachMedia(video);
</script></body></html>`;

server = http.createServer((req, res) => {
  if (req.url === '/hls.min.js') {
    res.writeHead(200, { 'content-type': 'text/javascript' });
    res.end(hlsJs);
  } else {
    res.writeHead(200, { 'content-type': 'text/html' });
    res.end(page);
  }
});
await new Promise((ok) => server.listen(0, '127.0.0.1', ok));
const pageUrl = `http://127.0.0.1:${server.address().port}/`;

userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'reel-chromium-'));
// A fresh profile per run (launchPersistentContext passes it as --user-data-dir).
browser = await chromium.launchPersistentContext(userDataDir, {
  executablePath: '/usr/bin/chromium',
  headless: true,
  args: [
    '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
    '--autoplay-policy=no-user-gesture-required',
  ],
});
const ctx = browser;
const tab = ctx.pages()[0] || await ctx.newPage();
tab.on('console', (m) => { if (m.type() === 'error') result.errors.push('console: ' + m.text()); });
const cdp = await ctx.newCDPSession(tab);
await cdp.send('Network.enable');
const throttle = (kbps) => cdp.send('Network.emulateNetworkConditions', {
  offline: false,
  latency: kbps ? 20 : 0,
  downloadThroughput: kbps ? (kbps * 1000) / 8 : -1,
  uploadThroughput: -1,
});
await throttle(0);
await tab.goto(pageUrl);

const trace = () => tab.evaluate(() => window.trace);
const sleep = (ms) => new Promise((ok) => setTimeout(ok, ms));
// Move the playhead to the end of what is buffered, as a user skipping ahead does: hls.js must
// then load the next fragment now, under the network conditions of the phase, instead of when
// playback has used up its buffer (which a busy machine's decoder can hold up for a minute).
const skipToBufferEnd = () => tab.evaluate(() => {
  const v = document.getElementById('v');
  if (v.buffered.length) v.currentTime = v.buffered.end(v.buffered.length - 1) + 0.05;
});
// Wait until a fragment of `level` loads after `since`, or `deadlineS` passes; with `skip`,
// skip ahead every 5 s without one.
const waitFrag = async (name, level, since, deadlineS, skip = false) => {
  const until = Date.now() + deadlineS * 1000;
  let nextSkip = Date.now() + 5000;
  while (Date.now() < until) {
    const t = await trace();
    if (t.errors.length) result.errors.push(...t.errors.splice(0));
    if (t.frags.some((f) => f.level === level() && f.t >= since)) {
      result.phases.push({ name, reached: true, t: Date.now() });
      return true;
    }
    if (skip && Date.now() >= nextSkip) {
      await skipToBufferEnd();
      nextSkip = Date.now() + 5000;
    }
    await sleep(250);
  }
  result.phases.push({ name, reached: false, t: Date.now() });
  return false;
};

// The levels are known once hls.js has parsed the multivariant playlist.
let t = await trace();
for (let i = 0; i < 80 && t.levels.length === 0; i++) {
  await sleep(250);
  t = await trace();
}
result.levels = t.levels;
let ok = false;
if (t.levels.length > 1) {
  const top = t.levels.reduce((a, l) => (l.bitrate > a.bitrate ? l : a));
  const bottom = t.levels.reduce((a, l) => (l.bitrate < a.bitrate ? l : a));
  const m = /\/s\/([^/]+)\//.exec(String(t.levels[0].url));
  result.session = m ? m[1] : null;
  const a = await waitFrag('fast: top level', () => top.index, 0, 45);
  await throttle(slowKbps);
  const b = a && await waitFrag(`slow ${slowKbps} kbit/s: bottom level`, () => bottom.index, Date.now(), 60, true);
  await throttle(0);
  const c = b && await waitFrag('fast again: top level', () => top.index, Date.now(), 60, true);
  ok = Boolean(a && b && c);
} else {
  result.errors.push(`the playlist has ${t.levels.length} levels; need 2 or more`);
}
const last = await trace();
result.switches = last.switches;
result.frags = last.frags;
result.errors.push(...last.errors);
result.ok = ok;
await finish(ok ? 0 : 1);
