// Chatterbox Realtime demo: speaks typed text, or a simulated LLM stream, over /v1/stream (docs/protocol.md)
// and plays it gaplessly through an AudioWorklet (worklet.js). No build step: plain ES modules, wired here.

import { $, announce, authHeaders, setText } from './dom.js';
import { createConnection } from './connection.js';
import { createPlayer, JITTER_TARGET_MS } from './player.js';
import { createRenderer, logEvent, SETTING_INPUTS, showEngine, showModelOptions } from './rendering.js';
import { createSession } from './session.js';
import { createSpeaker } from './speaker.js';
import { initVoicePanel } from './voices.js';
import { encodeWav, saveBlob } from './wav.js';

// Test hook: the browser test reads this to check that audio really went through the worklet.
const demo = {
  connected: false, engine: null, voicesAvailable: null,
  framesReceived: 0, samplesReceived: 0, samplesPlayed: 0, samplesDropped: 0, bufferedMs: 0,
  jitterTargetMs: JITTER_TARGET_MS, underruns: 0, playbackState: 'idle', level: 0, outputRate: null,
  ttfaMs: null, serverTtfaMs: null, rtf: null, events: [], chunks: [], errors: [],
};
window.__demo = demo;

const session = createSession();
const player = createPlayer({ inputRate: session.rate, onStats: onPlaybackStats });
const connection = createConnection({
  demo, onEvent: onServerEvent, onAudio: (channel, samples) => speaker.onAudioFrame(channel, samples),
  onDisconnected: () => speaker.onDisconnected(),
});
const speaker = createSpeaker({
  session, player, connection, playback: demo, onChange: () => renderer.invalidate(),
  onEventHandled: () => renderer.updateDemoFigures(),
});
const renderer = createRenderer({ demo, session, speaker });

function onPlaybackStats(stats) {
  const wasPlaying = demo.playbackState === 'playing';
  Object.assign(demo, {
    samplesReceived: stats.received, samplesPlayed: stats.played, samplesDropped: stats.dropped,
    bufferedMs: stats.bufferedMs, jitterTargetMs: stats.targetMs, underruns: stats.underruns,
    playbackState: stats.state, level: stats.level, outputRate: stats.outputRate,
  });
  const utterance = speaker.current;
  if (!wasPlaying && stats.state === 'playing' && utterance && utterance.firstSoundAt == null) {
    utterance.firstSoundAt = performance.now();
  }
  renderer.invalidate();
}

function onServerEvent(message) {
  logEvent(demo, message);
  switch (message.type) {
    case 'ready':
      demo.engine = message.engine ?? null;
      showEngine(message);
      break;
    case 'error':
      demo.errors.push(message);
      announce(`Server error ${message.code}: ${message.message}`);
      speaker.onError(message);
      break;
    default:
      speaker.onEvent(message);
  }
  renderer.invalidate();
}

function bindRange(inputId, outputId, format) {
  const update = () => setText($(outputId), format($(inputId).value));
  $(inputId).addEventListener('input', update);
  update();
}

function updateModeControls() {
  $('llm-controls').disabled = !$('mode-llm').checked;
}

function downloadSession() {
  const stamp = new Date().toISOString().replace(/[:T]/g, '-').slice(0, 19);
  saveBlob(encodeWav(session.parts, session.rate), `chatterbox-session-${stamp}.wav`);
}

function clearSession() {
  session.clear();
  demo.chunks = [];
  renderer.invalidate();
}

function init() {
  const params = new URLSearchParams(location.search);
  if (params.get('api_key')) $('api-key').value = params.get('api_key');
  bindRange('rate', 'rate-value', (v) => `${v} tokens/s`);
  bindRange('jitter', 'jitter-value', (v) => `${v}%`);
  $('model').addEventListener('change', () => { if (demo.engine) showModelOptions(demo.engine); });
  $('mode-whole').addEventListener('change', updateModeControls);
  $('mode-llm').addEventListener('change', updateModeControls);
  updateModeControls();
  for (const id of SETTING_INPUTS) $(id).addEventListener('input', () => { $(id).dataset.touched = '1'; });
  $('speak-form').addEventListener('submit', (event) => {
    event.preventDefault();
    const text = $('text').value.trim();
    if (!text) return announce('Type something to speak first.');
    speaker.speak(text, $('mode-llm').checked ? 'llm' : 'whole').catch((error) => announce(`Could not speak: ${error.message}`));
  });
  $('text').addEventListener('keydown', (event) => {
    if (event.key === 'Enter' && (event.ctrlKey || event.metaKey)) $('speak-form').requestSubmit();
  });
  $('stop').addEventListener('click', () => speaker.stop());
  document.addEventListener('keydown', (event) => {
    if (event.key === 'Escape' && !$('stop').disabled) speaker.stop();
  });
  $('download').addEventListener('click', downloadSession);
  $('clear').addEventListener('click', clearSession);
  const voices = initVoicePanel(demo);
  $('connection-form').addEventListener('submit', (event) => {
    event.preventDefault();
    connection.reconnect().then(voices.load).catch((error) => announce(`Could not connect: ${error.message}`));
  });
  $('server-details').addEventListener('toggle', async () => {
    if (!$('server-details').open) return;
    const response = await fetch('/optimization-status', { headers: authHeaders() }).catch(() => null);
    $('optimization-json').textContent = response?.ok ? JSON.stringify(await response.json(), null, 2)
      : `unavailable (${response ? `HTTP ${response.status}` : 'network error'})`;
  });
  window.addEventListener('resize', () => renderer.invalidate());

  // Voices load once connected: with an API key the first attempt fails, and the voice list would too.
  connection.ensure().then(voices.load).catch((error) => announce(`Could not connect: ${error.message}`));
  renderer.start();
}

init();
