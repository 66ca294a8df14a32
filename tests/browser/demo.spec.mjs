// Drives the demo page (static/index.html) against a running server in headless Chromium.
//
//   node tests/browser/demo.spec.mjs --url http://127.0.0.1:8000/ --out var/screenshots
//
// Streams a simulated LLM reply, checks that audio really reached the AudioWorklet and that the figures and
// the timeline filled in, barges in with Stop (keyboard), speaks a whole text, downloads the session WAV,
// and saves desktop and phone screenshots. Prints one JSON line (the summary) on success; exits 1 on failure.

import { chromium } from 'playwright-core';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';

const { values: options } = parseArgs({
  options: {
    url: { type: 'string' },
    out: { type: 'string', default: 'var/screenshots' },
    chromium: { type: 'string', default: process.env.CHROMIUM ?? '/usr/bin/chromium' },
    timeout: { type: 'string', default: '20000' },
    'voice-file': { type: 'string' },
    'api-key': { type: 'string' },
    // Only speak this text in this language and report the timeline's measured word times (a server whose model
    // measures them: the multilingual one).
    'words-text': { type: 'string' },
    'words-language': { type: 'string' }, // the server's key: the page must first say it needs one, then use it // a reference recording to upload when the server has a voice library
  },
});
assert.ok(options.url, '--url is required');
const WAIT_MS = Number(options.timeout);
const DESKTOP = { width: 1280, height: 900 };
const PHONE = { width: 390, height: 844 };

function log(message) {
  process.stderr.write(`[demo.spec] ${message}\n`);
}

async function waitForDemo(page, description, predicate, arg) {
  try {
    await page.waitForFunction(predicate, arg, { timeout: WAIT_MS, polling: 50 });
  } catch (error) {
    const state = await page.evaluate(() => {
      const { events, ...rest } = window.__demo;
      return { ...rest, lastEvents: events.slice(-8).map((e) => e.type) };
    });
    throw new Error(`timed out waiting for ${description}; __demo = ${JSON.stringify(state)}`);
  }
}

const demoState = (page) => page.evaluate(() => ({ ...window.__demo, events: undefined }));

async function enterApiKey(page) {
  await page.waitForSelector('#connection[data-state="closed"]', { timeout: WAIT_MS });
  assert.match(await page.locator('#connection').textContent(), /needs an API key/);
  await page.getByLabel(/API key/).fill(options['api-key']);
  await page.getByLabel(/API key/).press('Enter');
}

async function checkAccessibility(page) {
  const unlabelled = await page.evaluate(() => [...document.querySelectorAll('input, select, textarea')]
    .filter((e) => e.type !== 'hidden' && !e.labels?.length && !e.getAttribute('aria-label'))
    .map((e) => e.id || e.outerHTML));
  assert.deepEqual(unlabelled, [], 'every form control has a label');
  const clickableDivs = await page.evaluate(() => document.querySelectorAll('div[onclick], span[onclick], [role="button"]:not(button)').length);
  assert.equal(clickableDivs, 0, 'controls are real buttons');
  const liveRegions = await page.evaluate(() => document.querySelectorAll('[aria-live]').length);
  assert.ok(liveRegions >= 2, 'figures and status are announced through aria-live regions');

  // Keyboard order: the text box, the speed slider, the voice picker, then Speak.
  await page.evaluate(() => document.activeElement?.blur());
  const visited = [];
  for (let i = 0; i < 30; i++) {
    await page.keyboard.press('Tab');
    visited.push(await page.evaluate(() => document.activeElement?.id || document.activeElement?.tagName));
  }
  const order = ['text', 'rate', 'voice', 'speak'].map((id) => visited.indexOf(id));
  assert.ok(order.every((index, i) => index >= 0 && (i === 0 || index > order[i - 1])),
    `Tab reaches text, speed, voice and Speak in order (visited: ${visited.join(' ')})`);
  return visited;
}

// With a voice library: upload a reference file and expect it in the picker. Without: the page says so.
async function checkVoices(page) {
  const available = await page.evaluate(() => window.__demo.voicesAvailable);
  if (!available) {
    assert.ok(await page.getByRole('button', { name: 'Upload file' }).isDisabled(), 'uploads are disabled without a voice library');
    assert.match(await page.locator('#voice-note').textContent(), /no voice library/);
    return { available, uploaded: null };
  }
  if (!options['voice-file']) return { available, uploaded: null };
  const name = `browser-test-${Date.now().toString(36)}`;
  await page.getByLabel('Voice name').fill(name);
  await page.getByLabel(/Audio file/).setInputFiles(options['voice-file']);
  await page.getByRole('button', { name: 'Upload file' }).click();
  await page.waitForSelector(`#voice option[value="${name}"]`, { state: 'attached', timeout: WAIT_MS });
  assert.equal(await page.locator('#voice').inputValue(), name, 'the uploaded voice is selected');
  const recorded = await recordFromMicrophone(page);
  await page.locator('#voice').selectOption('default');
  return { available, uploaded: name, recorded };
}

// Chromium's fake microphone (a beep): MediaRecorder, then decoding to WAV, preview and upload.
async function recordFromMicrophone(page) {
  await page.getByRole('button', { name: 'Record from microphone' }).click();
  await page.waitForTimeout(1500);
  await page.getByRole('button', { name: 'Stop recording' }).click();
  await page.waitForSelector('#recording-preview:not([hidden])', { timeout: WAIT_MS });
  const status = await page.locator('#upload-status').textContent();
  const seconds = Number(status.match(/Recorded (\d+\.\d) s/)?.[1]);
  assert.ok(seconds >= 1 && seconds <= 3, `recorded about 1.5 s (${status})`);
  await page.getByLabel('Voice name').fill(`browser-mic-${Date.now().toString(36)}`);
  await page.getByRole('button', { name: 'Upload recording' }).click();
  // A beep may be refused as a voice; either way the page must show the server's answer.
  await page.waitForFunction(() => /Added voice|Upload failed: /.test(document.getElementById('upload-status').textContent),
    null, { timeout: WAIT_MS });
  return { seconds, status: await page.locator('#upload-status').textContent() };
}

async function setRange(page, id, value) {
  await page.evaluate(([inputId, v]) => {
    const input = document.getElementById(inputId);
    input.value = String(v);
    input.dispatchEvent(new Event('input', { bubbles: true }));
  }, [id, value]);
}

// Also leaves a screenshot of the page while the stream is in flight (demo-streaming.png).
async function streamSimulatedLlm(page) {
  await page.getByLabel('as a simulated LLM stream', { exact: false }).check();
  await setRange(page, 'rate', 30);
  await page.getByRole('button', { name: 'Speak' }).click();
  // A quarter of a second played proves the worklet is pulled by the audio clock, not just fed.
  await waitForDemo(page, 'audio played by the worklet, figures and a finished chunk', () => {
    const d = window.__demo;
    return d.samplesReceived > 0 && d.outputRate && d.samplesPlayed > 0.25 * d.outputRate && d.ttfaMs != null
      && d.rtf != null && d.chunks.some((c) => c.state === 'done');
  });
  await page.screenshot({ path: path.join(options.out, 'demo-streaming.png'), fullPage: true });
  const state = await demoState(page);
  assert.equal(state.utteranceState, 'streaming', 'the simulated LLM is still streaming when Stop is pressed');
  assert.ok(state.framesReceived > 0, 'binary audio frames arrived');
  const figures = await page.evaluate(() => ({
    ttfa: document.getElementById('fig-ttfa').textContent,
    rtf: document.getElementById('fig-rtf').textContent,
    chunks: document.querySelectorAll('#chunks li').length,
    chunkText: document.querySelector('#chunks li .chunk-text')?.textContent ?? '',
    chunkMeta: document.querySelector('#chunks li .chunk-meta')?.textContent ?? '',
  }));
  assert.match(figures.ttfa, /^\d+ ms$/, 'time to first audio shows a number');
  assert.match(figures.rtf, /^\d+\.\d\d×$/, 'real-time factor shows a number');
  assert.ok(figures.chunks >= 1 && figures.chunkText.length > 0, 'the timeline lists the chunk texts');
  assert.match(figures.chunkMeta, /audio \d+\.\d\d–\d+\.\d\d s/, 'a chunk shows the audio span it produced');
  return { state, figures };
}

async function bargeIn(page) {
  const utteranceId = await page.evaluate(() => window.__demo.events.findLast((e) => e.type === 'started').context_id);
  const stop = page.getByRole('button', { name: 'Stop' });
  await stop.focus();
  await page.keyboard.press('Enter');
  await waitForDemo(page, 'the cancelled event and silent playback', (id) => {
    const d = window.__demo;
    return d.events.some((e) => e.type === 'cancelled' && e.context_id === id)
      && d.playbackState === 'idle' && d.bufferedMs === 0 && d.level === 0;
  }, utteranceId);
  const before = await page.evaluate(() => ({ played: window.__demo.samplesPlayed, received: window.__demo.samplesReceived,
    sent: document.getElementById('transcript').textContent.length }));
  await page.waitForTimeout(400);
  const after = await page.evaluate(() => ({ played: window.__demo.samplesPlayed, received: window.__demo.samplesReceived,
    sent: document.getElementById('transcript').textContent.length, level: window.__demo.level,
    status: document.getElementById('status-line').textContent }));
  assert.equal(after.played, before.played, 'nothing plays after Stop');
  assert.equal(after.received, before.received, 'no audio of the cancelled context reaches the worklet');
  assert.equal(after.sent, before.sent, 'the simulated LLM stopped sending tokens');
  assert.equal(after.level, 0, 'the output is silent');
  return { utteranceId, ...after };
}

async function timelineWords(page) {
  await page.locator('#language').selectOption(options['words-language']);
  await page.getByLabel('all at once', { exact: false }).check();
  await page.getByLabel('Text to speak').fill(options['words-text']);
  await page.getByRole('button', { name: 'Speak' }).click();
  await page.waitForSelector('.chunk-words', { timeout: WAIT_MS });
  await waitForDemo(page, 'the done event', () => window.__demo.utteranceState === 'done');
  return {
    words: await page.locator('.chunk-words').allTextContents(),
    ticks: await page.locator('.word-tick').count(),
  };
}

async function speakWholeText(page, voice) {
  await page.getByLabel('all at once', { exact: false }).check();
  await page.locator('#voice').selectOption(voice);
  await page.getByLabel('Text to speak').fill('Short and sweet. The whole text goes in one message.');
  const playedBefore = await page.evaluate(() => window.__demo.samplesPlayed);
  await page.getByRole('button', { name: 'Speak' }).click();
  await waitForDemo(page, 'the done event and playback of the whole text', (before) => {
    const d = window.__demo;
    return d.utteranceState === 'done' && d.samplesPlayed > before && d.chunks.length > 0
      && d.chunks.every((c) => c.state === 'done');
  }, playedBefore);
  return demoState(page);
}

async function downloadSessionWav(page, outDir) {
  const [download] = await Promise.all([page.waitForEvent('download'), page.getByRole('button', { name: 'Download WAV' }).click()]);
  const file = path.join(outDir, 'demo-session.wav');
  await download.saveAs(file);
  const wav = fs.readFileSync(file);
  assert.equal(wav.toString('ascii', 0, 4), 'RIFF');
  assert.equal(wav.toString('ascii', 8, 12), 'WAVE');
  assert.equal(wav.readUInt32LE(24), 24000, 'the WAV is at the stream rate');
  const seconds = wav.readUInt32LE(40) / 2 / 24000;
  assert.ok(seconds > 0.2, `the WAV holds the session audio (${seconds.toFixed(2)} s)`);
  return { file, seconds };
}

async function screenshots(page, outDir) {
  const desktop = path.join(outDir, 'demo.png');
  await page.screenshot({ path: desktop, fullPage: true });
  await page.setViewportSize(PHONE);
  await page.waitForTimeout(200);
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert.ok(overflow <= 0, `no horizontal scrolling on a phone-sized screen (overflow ${overflow}px)`);
  const phone = path.join(outDir, 'demo-phone.png');
  await page.screenshot({ path: phone, fullPage: true });
  return { desktop, phone };
}

async function main() {
  fs.mkdirSync(options.out, { recursive: true });
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'cbr-chromium-'));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: options.chromium,
    headless: true,
    viewport: DESKTOP,
    acceptDownloads: true,
    permissions: ['microphone'],
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--autoplay-policy=no-user-gesture-required',
      '--use-fake-device-for-media-stream', '--use-fake-ui-for-media-stream'],
  });
  const problems = [];
  try {
    const page = context.pages()[0] ?? await context.newPage();
    page.on('pageerror', (error) => problems.push(`page error: ${error.message}`));
    page.on('console', (message) => {
      // The voice library route may not exist on this server (404: the page shows just "default"), and the
      // fake microphone's beep may be refused as a voice (422: the page shows the server's reason).
      const allowed = /\/v1\/voices$/.test(message.location().url) && /\b(404|422)\b/.test(message.text());
      if (message.type() === 'error' && !allowed) problems.push(`console: ${message.text()} (${message.location().url})`);
    });

    log(`opening ${options.url}`);
    await page.goto(options.url);
    if (options['api-key']) await enterApiKey(page);
    await page.waitForSelector('#connection[data-state="open"]', { timeout: WAIT_MS });
    if (options['words-text']) {
      process.stdout.write(`${JSON.stringify(await timelineWords(page))}\n`);
      return;
    }
    await waitForDemo(page, 'the voice list', () => window.__demo.voicesAvailable !== null);
    const voices = await page.locator('#voice option').evaluateAll((options) => options.map((o) => o.value));
    assert.ok(voices.includes('default'), 'the voice picker offers the default voice');
    const tabOrder = await checkAccessibility(page);
    log('voices');
    const voiceLibrary = await checkVoices(page);

    // The model picker lists what the server serves, the default selected; the LLM stream speaks with the last.
    const models = await page.locator('#model option').evaluateAll((options) => options.map((o) => o.value));
    const defaultModel = await page.locator('#model').inputValue();
    await page.locator('#model').selectOption(models[models.length - 1]);
    // Turbo offers its tags as buttons that insert them at the cursor.
    const tags = await page.locator('#tags button').evaluateAll((buttons) => buttons.map((b) => b.textContent));
    assert.ok(tags.includes('[laugh]'), `turbo's tags are offered (${tags.join(' ')})`);
    await page.locator('#text').evaluate((box) => { box.selectionStart = box.selectionEnd = 0; });
    await page.locator('#tags button', { hasText: '[laugh]' }).click();
    assert.ok((await page.locator('#text').inputValue()).startsWith('[laugh] '), 'the tag went into the text');
    const languages = await page.locator('#language option').evaluateAll((options) => options.map((o) => o.value));
    assert.deepEqual(languages, ['en'], 'turbo speaks English');

    log('simulated LLM stream');
    const llm = await streamSimulatedLlm(page);
    await page.locator('#model').selectOption(defaultModel);
    log('barge-in with Stop');
    const stop = await bargeIn(page);
    log(`whole text, voice ${voiceLibrary.uploaded ?? 'default'}`);
    const whole = await speakWholeText(page, voiceLibrary.uploaded ?? 'default');
    log('download');
    const wav = await downloadSessionWav(page, options.out);
    const text = await page.evaluate(() => document.body.innerText);
    const figures = await page.evaluate(() => Object.fromEntries([...document.querySelectorAll('.figure')]
      .map((f) => [f.querySelector('dt').textContent, f.querySelector('dd').textContent.trim()])));
    const shots = await screenshots(page, options.out);
    assert.deepEqual(problems, [], 'no errors in the page');
    const summary = { ok: true, models, defaultModel, tags, voices, voiceLibrary, tabOrder, llm, stop, whole, wav, figures, screenshots: shots, text,
      engine: await page.locator('#engine').textContent() };
    process.stdout.write(`${JSON.stringify(summary)}\n`);
  } finally {
    await context.close();
    fs.rmSync(profile, { recursive: true, force: true });
  }
}

main().catch((error) => {
  process.stderr.write(`[demo.spec] FAILED: ${error.stack ?? error}\n`);
  process.exit(1);
});
