// Opens the relay's embed page in headless Chromium and checks what a viewer would see.
//
//   node play.mjs URL [--expect STATE[,STATE...]] [--timeout SECONDS] [--iframe] [--only-loopback] [--viewers TEXT]
//
// The page's `data-state` must go through the listed states in order (default: `playing`). On reaching each one
// this prints a JSON line {"reached": STATE, ...} (the Rust test acts on these, e.g. stops the broadcast once it
// plays); reaching `playing` also requires the video to really play: currentTime advances and frames decode.
// The last line is the findings, {"ok": true|false, ...}; the exit status is 0 only if ok. Console errors (a
// Content-Security-Policy refusal among them) and uncaught page errors fail the run.
//
// --iframe puts the page in an <iframe> on another site, as an embedding site would, and checks it there. That
// site is served by this script on loopback under the name `localhost`, so it is cross-site to a relay reached as
// 127.0.0.1 (Chromium refuses to let a public site frame a loopback one: Local Network Access).
//
// --only-loopback cuts the browser off from everything but this machine, as on a viewer's network where the only
// reachable server is the relay: host names other than localhost do not resolve, and any request to a host other
// than 127.0.0.1 or localhost is aborted and listed under blockedRequests, which fails the run. Every origin the
// page asked anything of is listed under origins, every script it loaded under scripts.
//
// --viewers TEXT: after the states, the page's viewer count (`?viewers=1`) must come to read TEXT, e.g. "1 watching";
// it is reported as {"viewers": TEXT}.
//
// CHROMIUM names the browser binary (default /usr/bin/chromium, Debian's).

import http from 'node:http';

import { chromium } from 'playwright-core';

const args = process.argv.slice(2);
const url = args.find((a) => !a.startsWith('--') && !isOptionValue(a));
const expect = (option('--expect') ?? 'playing').split(',').filter(Boolean);
const timeoutMs = Number(option('--timeout') ?? 60) * 1000;
const inIframe = args.includes('--iframe');
const onlyLoopback = args.includes('--only-loopback');
const viewersText = option('--viewers');
const LOOPBACK = ['127.0.0.1', 'localhost'];

function option(name) {
  const at = args.indexOf(name);
  return at >= 0 ? args[at + 1] : undefined;
}

function isOptionValue(arg) {
  const at = args.indexOf(arg);
  return at > 0 && args[at - 1].startsWith('--');
}

if (!url) {
  console.error(
    'usage: node play.mjs URL [--expect STATE[,STATE...]] [--timeout SECONDS] [--iframe] [--only-loopback] [--viewers TEXT]',
  );
  process.exit(2);
}

const findings = {
  url,
  expect,
  inIframe,
  onlyLoopback,
  reached: [],
  consoleErrors: [],
  pageErrors: [],
  failedRequests: [],
  blockedRequests: [],
  origins: [],
  scripts: [],
};
const deadline = Date.now() + timeoutMs;
let browser;

function report(ok, extra = {}) {
  console.log(JSON.stringify({ ok, ...findings, ...extra }));
}

// A hard stop, so that a wedged browser never outlives the test that started it.
const watchdog = setTimeout(() => {
  report(false, { error: `gave up after ${timeoutMs / 1000} s` });
  process.exit(1);
}, timeoutMs + 15000);
watchdog.unref();

try {
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    // The machine has no GPU, no sandbox privileges and no outside network: keep Chromium to itself.
    args: [
      '--headless=new',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      '--autoplay-policy=no-user-gesture-required',
      // Nothing resolves but loopback, so not even the browser's own background requests can leave the machine.
      ...(onlyLoopback ? ['--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE localhost'] : []),
    ],
    timeout: 30000,
  });
  findings.browser = browser.version();
  const context = await browser.newContext();
  context.on('request', (request) => {
    const requested = new URL(request.url());
    if (!requested.protocol.startsWith('http') && !requested.protocol.startsWith('ws')) return; // blob:, data:
    if (!findings.origins.includes(requested.origin)) findings.origins.push(requested.origin);
    if (request.resourceType() === 'script') findings.scripts.push(request.url());
  });
  if (onlyLoopback) {
    // Aborted before it leaves the browser, and recorded: a resolver rule alone would only show up as a failure
    // the page might survive.
    await context.route('**/*', (route) => {
      if (LOOPBACK.includes(new URL(route.request().url()).hostname)) return route.continue();
      findings.blockedRequests.push(route.request().url());
      return route.abort('blockedbyclient');
    });
  }
  const page = await context.newPage();
  page.on('console', (message) => {
    // HTTP error statuses are listed under failedRequests (the page expects some, e.g. 404 for an unknown call);
    // any other console error (a script error, a Content-Security-Policy refusal) is a problem.
    const text = message.text();
    if (message.type() === 'error' && !text.startsWith('Failed to load resource: the server responded')) {
      findings.consoleErrors.push(text);
    }
  });
  page.on('pageerror', (error) => findings.pageErrors.push(String(error)));
  page.on('requestfailed', (request) => {
    // Aborted requests are normal (hls.js cancels loads when it switches or stops); others are worth seeing.
    const failure = request.failure()?.errorText ?? '';
    if (!failure.includes('ERR_ABORTED')) findings.failedRequests.push(`${request.url()}: ${failure}`);
  });
  page.on('response', (response) => {
    if (response.url() === url) findings.status = response.status();
    if (response.status() >= 400) findings.failedRequests.push(`${response.url()}: ${response.status()}`);
  });

  const player = inIframe ? await embedded(page) : page;
  if (!inIframe) await page.goto(url, { waitUntil: 'domcontentloaded', timeout: remaining() });

  for (const state of expect) {
    await player.waitForFunction((s) => document.body?.dataset.state === s, state, {
      timeout: remaining(),
      polling: 100,
    });
    const seen = { state, at: Date.now(), ...(await snapshot(player)) };
    if (state === 'playing') Object.assign(seen, await checkPlayback(player));
    findings.reached.push(seen);
    console.log(JSON.stringify({ reached: state, ...seen }));
  }

  if (viewersText !== undefined) {
    await player.waitForFunction(
      (text) => {
        const line = document.getElementById('viewers');
        return line && !line.hidden && line.textContent === text;
      },
      viewersText,
      { timeout: remaining(), polling: 100 },
    );
    findings.viewers = viewersText;
    console.log(JSON.stringify({ viewers: viewersText }));
  }

  const blocked = findings.blockedRequests.map((request) => `requested off loopback: ${request}`);
  const problems = [...findings.pageErrors, ...findings.consoleErrors, ...blocked];
  report(problems.length === 0, problems.length ? { error: `page problems: ${problems.join(' | ')}` } : {});
  await browser.close();
  process.exit(problems.length === 0 ? 0 : 1);
} catch (error) {
  const last = browser ? await lastWords(browser).catch(() => ({})) : {};
  report(false, { error: String(error?.message ?? error), ...last });
  await browser?.close().catch(() => {});
  process.exit(1);
}

// Loads a page of another site that frames the embed, as the README shows, and returns the embed's frame.
async function embedded(page) {
  const site = http.createServer((_request, response) => {
    response.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
    response.end(`<!doctype html><title>Another site</title><h1>Watch</h1>
      <iframe src="${url}" width="640" height="360" allow="autoplay; fullscreen" allowfullscreen></iframe>`);
  });
  await new Promise((resolve) => site.listen(0, '127.0.0.1', resolve));
  site.unref();
  findings.embedder = `http://localhost:${site.address().port}/`;
  await page.goto(findings.embedder, { waitUntil: 'domcontentloaded', timeout: remaining() });
  const frame = await (await page.waitForSelector('iframe', { timeout: remaining() })).contentFrame();
  await frame.waitForLoadState('domcontentloaded', { timeout: remaining() });
  if (frame.url() !== url) throw new Error(`the iframe shows ${frame.url()}, not ${url}`);
  return frame;
}

function remaining() {
  return Math.max(1000, deadline - Date.now());
}

// What the page shows and what its player knows.
async function snapshot(player) {
  return player.evaluate(() => {
    const video = document.getElementById('video');
    const quality = video.getVideoPlaybackQuality?.();
    const hls = window.hlsRelayEmbed?.hls;
    const details = hls?.latestLevelDetails ?? hls?.levels?.[hls.currentLevel]?.details;
    return {
      dataState: document.body.dataset.state,
      status: document.getElementById('status').textContent,
      viewers: document.getElementById('viewers')?.textContent ?? null,
      engine: document.body.dataset.engine ?? null,
      currentTime: video.currentTime,
      readyState: video.readyState,
      videoWidth: video.videoWidth,
      videoHeight: video.videoHeight,
      totalVideoFrames: quality?.totalVideoFrames ?? null,
      droppedVideoFrames: quality?.droppedVideoFrames ?? null,
      lowLatencyMode: hls ? hls.config.lowLatencyMode : null,
      // LL-HLS: hls.js saw EXT-X-PART in the playlist it plays.
      parts: details?.partList?.length ?? 0,
      partTarget: details?.partTarget ?? null,
      latency: hls?.latency ?? null,
      endedBy: window.hlsRelayEmbed?.endedBy ?? null,
    };
  });
}

// The video plays: its clock moves on by at least 1.5 s and decoded frames keep coming, within 20 s.
async function checkPlayback(player) {
  const before = await snapshot(player);
  const handle = await player.waitForFunction(
    ({ t0, f0 }) => {
      const video = document.getElementById('video');
      const frames = video.getVideoPlaybackQuality().totalVideoFrames;
      return video.currentTime >= t0 + 1.5 && frames > Math.max(f0, 0) && video.videoWidth > 0
        ? { currentTime: video.currentTime, totalVideoFrames: frames }
        : false;
    },
    { t0: before.currentTime, f0: before.totalVideoFrames ?? 0 },
    { timeout: Math.min(20000, remaining()), polling: 200 },
  );
  const after = await handle.jsonValue();
  return {
    advancedBy: after.currentTime - before.currentTime,
    framesDecoded: after.totalVideoFrames - (before.totalVideoFrames ?? 0),
  };
}

async function lastWords(browser) {
  const page = browser.contexts()[0]?.pages()[0];
  const player = inIframe ? page?.frames().find((f) => f.url() === url) : page;
  return player ? { last: await snapshot(player) } : {};
}
