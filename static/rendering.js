// Rendering: live figures, the chunk timeline and the waveform (redrawn on animation frames when something
// changed), the event log and the server's details.

import { $, formatMs, formatSeconds, setText } from './dom.js';
import { PEAK_BUCKET, playheadSamples } from './session.js';

const MAX_LOGGED_EVENTS = 500;
export const SETTING_INPUTS = ['chunk-size', 'temperature', 'exaggeration', 'cfg-weight'];

export function logEvent(demo, message) {
  demo.events.push({ ...message, at: Math.round(performance.now()) });
  if (demo.events.length > MAX_LOGGED_EVENTS) demo.events.shift();
  const item = document.createElement('li');
  item.textContent = `${(performance.now() / 1000).toFixed(2)} s  ${message.type}` +
    (message.context_id ? `  ${message.context_id}` : '') + (message.code ? `  ${message.code}: ${message.message}` : '');
  const log = $('event-log');
  log.prepend(item);
  while (log.children.length > 50) log.lastChild.remove();
}

// The models the server serves, the default first; the visitor's choice survives a reconnect.
function showModels(models, defaultModel) {
  const select = $('model');
  const chosen = select.value;
  select.replaceChildren(...models.map((model) => {
    const option = document.createElement('option');
    option.value = model;
    option.textContent = model === defaultModel ? `${model} (default)` : model;
    return option;
  }));
  select.value = models.includes(chosen) ? chosen : (defaultModel ?? models[0] ?? '');
}

// What the chosen model offers: its languages, and its tags as buttons that insert them into the text.
export function showModelOptions(engine) {
  const model = $('model').value || engine.default_model;
  const languages = engine.languages?.[model] ?? ['en'];
  const language = $('language');
  const chosen = language.value;
  language.replaceChildren(...languages.map((code) => {
    const option = document.createElement('option');
    option.value = code;
    option.textContent = code;
    return option;
  }));
  language.value = languages.includes(chosen) ? chosen : (languages.includes('en') ? 'en' : languages[0]);
  const tags = engine.tags?.[model] ?? [];
  $('tags-field').hidden = tags.length === 0;
  $('tags').replaceChildren(...tags.map((tag) => {
    const button = document.createElement('button');
    button.type = 'button';
    button.className = 'tag';
    button.textContent = tag;
    button.addEventListener('click', () => insertAtCursor($('text'), `${tag} `));
    return button;
  }));
}

function insertAtCursor(textarea, text) {
  const { selectionStart: start, selectionEnd: end, value } = textarea;
  textarea.value = value.slice(0, start) + text + value.slice(end);
  textarea.selectionStart = textarea.selectionEnd = start + text.length;
  textarea.focus();
}

export function showEngine(ready) {
  const engine = ready.engine ?? {};
  const name = engine.engine ?? engine.name ?? 'unknown engine';
  const parts = [name, engine.default_model, engine.device, engine.dtype].filter(Boolean);
  setText($('engine'), parts.join(' · '));
  $('engine').title = engine.engine_choice ?? '';
  showModels(engine.models ?? [], engine.default_model);
  showModelOptions(engine);
  $('engine-json').textContent = JSON.stringify({ engine: ready.engine, limits: ready.limits, defaults: ready.defaults }, null, 2);
  // Start from the server's defaults, except for settings the visitor already changed.
  const generation = ready.defaults?.generation ?? {};
  const defaults = { 'chunk-size': ready.defaults?.chunking?.chunk_size, temperature: generation.temperature,
    exaggeration: generation.exaggeration, 'cfg-weight': generation.cfg_weight };
  for (const id of SETTING_INPUTS) {
    if (defaults[id] != null && !$(id).dataset.touched) $(id).value = defaults[id];
  }
}

// `demo` is the test hook the figures are aggregated into; `speaker.current` is the utterance they describe.
export function createRenderer({ demo, session, speaker }) {
  let dirty = true;

  // Aggregates the current utterance's stats into the figures the page and the test hook show.
  function updateDemoFigures() {
    const utterance = speaker.current;
    if (!utterance) return;
    demo.ttfaMs = utterance.firstAudioAt == null ? null : utterance.firstAudioAt - utterance.textSentAt;
    const done = utterance.chunks.filter((c) => c.stats);
    // The server's share: from the chunk's release (its text complete) to its first audio byte.
    demo.serverTtfaMs = utterance.stats?.ttfa_from_release_ms ?? done[0]?.stats.ttfa_ms ?? null;
    const synthesisMs = done.reduce((sum, c) => sum + (c.stats.synthesis_ms ?? 0), 0);
    const audioS = done.reduce((sum, c) => sum + (c.stats.audio_s ?? 0), 0);
    demo.rtf = utterance.stats?.rtf ?? (audioS > 0 ? synthesisMs / 1000 / audioS : null);
    demo.serverUnderruns = utterance.stats?.underruns ?? null;
    demo.chunks = utterance.chunks.map(({ index, text, state, start, end, stats }) => ({ index, text, state, start, end, stats }));
    demo.utteranceState = utterance.state;
  }

  function renderFigures() {
    const utterance = speaker.current;
    setText($('fig-ttfa'), formatMs(demo.ttfaMs));
    setText($('fig-ttfa-server'), demo.serverTtfaMs == null ? '' : `${formatMs(demo.serverTtfaMs)} after the text was released`);
    const firstSound = utterance?.firstSoundAt == null ? null : utterance.firstSoundAt - utterance.textSentAt;
    setText($('fig-first-sound'), formatMs(firstSound));
    setText($('fig-rtf'), demo.rtf == null ? '—' : `${demo.rtf.toFixed(2)}×`);
    setText($('fig-underruns'), String(demo.underruns));
    setText($('fig-underruns-server'), demo.serverUnderruns == null ? '' : `server clock: ${demo.serverUnderruns}`);
    setText($('fig-buffered'), `${Math.round(demo.bufferedMs)} ms`);
    setText($('fig-target'), `start threshold ${Math.round(demo.jitterTargetMs)} ms`);
    setText($('fig-received'), formatSeconds(session.total, session.rate));
    setText($('fig-played'), demo.outputRate ? formatSeconds(demo.samplesPlayed, demo.outputRate) : '0.00 s');
    setText($('fig-state'), utterance ? `${utterance.state}, playback ${demo.playbackState}` : `playback ${demo.playbackState}`);
    $('stop').disabled = !(speaker.isActive() || demo.playbackState !== 'idle');
    $('download').disabled = session.total === 0;
    $('clear').disabled = session.total === 0 || speaker.isActive();
  }

  function axisSeconds() {
    return Math.max(5, Math.ceil((session.total / session.rate) * 1.1));
  }

  function chunkSpan(utterance, chunk) {
    if (chunk.end != null) return chunk;
    const first = utterance.chunks.find((c) => c.state === 'synthesizing');
    if (chunk === first && utterance.state === 'streaming') return { start: utterance.lastChunkEnd, end: session.total };
    return null;
  }

  function sessionChunks() {
    return session.utterances.flatMap((utterance, reply) => utterance.chunks.map((chunk) => ({ utterance, reply, chunk })));
  }

  function renderTimeline() {
    const list = $('chunks');
    const chunks = sessionChunks();
    const axis = axisSeconds();
    setText($('axis-end'), `${axis} s`);
    $('timeline-empty').hidden = chunks.length > 0;
    while (list.children.length > chunks.length) list.lastChild.remove();
    chunks.forEach(({ utterance, reply, chunk }, i) => {
      let row = list.children[i];
      if (!row) {
        row = document.createElement('li');
        row.className = 'chunk';
        row.innerHTML = '<div class="chunk-head"><span class="chunk-index"></span> <q class="chunk-text"></q></div>' +
          '<div class="chunk-track" aria-hidden="true"><div class="chunk-bar"></div></div><div class="chunk-meta"></div>';
        list.append(row);
      }
      row.dataset.state = chunk.state;
      setText(row.querySelector('.chunk-index'), `reply ${reply + 1} #${chunk.index}`);
      setText(row.querySelector('.chunk-text'), chunk.text.trim());
      const span = chunkSpan(utterance, chunk);
      const bar = row.querySelector('.chunk-bar');
      bar.style.left = span ? `${(100 * span.start) / session.rate / axis}%` : '0';
      bar.style.width = span ? `${Math.max(0.4, (100 * (span.end - span.start)) / session.rate / axis)}%` : '0';
      const meta = [];
      if (span) {
        meta.push(`audio ${(span.start / session.rate).toFixed(2)}–${(span.end / session.rate).toFixed(2)} s`);
      }
      if (chunk.stats) {
        meta.push(`first audio ${formatMs(chunk.stats.ttfa_ms)}`, `synthesis ${formatMs(chunk.stats.synthesis_ms)}`,
          `RTF ${chunk.stats.rtf?.toFixed(2) ?? '—'}`);
      } else {
        meta.push(chunk.state);
      }
      setText(row.querySelector('.chunk-meta'), meta.join(' · '));
      showWords(row, chunk, span, axis);
    });
  }

  // Measured word times (multilingual model): a tick per word start on the chunk's bar, and the words with
  // their times under it.
  function showWords(row, chunk, span, axis) {
    let words = row.querySelector('.chunk-words');
    if (!chunk.words?.length || !span) {
      words?.remove();
      row.querySelectorAll('.word-tick').forEach((tick) => tick.remove());
      return;
    }
    if (!words) {
      words = document.createElement('div');
      words.className = 'chunk-words';
      row.append(words);
    }
    setText(words, chunk.words.map((w) => `${w.word} ${(w.start_ms / 1000).toFixed(2)}`).join(' · '));
    const track = row.querySelector('.chunk-track');
    track.querySelectorAll('.word-tick').forEach((tick) => tick.remove());
    for (const word of chunk.words) {
      const tick = document.createElement('i');
      tick.className = 'word-tick';
      tick.style.left = `${(100 * (span.start / session.rate + word.start_ms / 1000)) / axis}%`;
      track.append(tick);
    }
  }

  function renderWaveform() {
    const canvas = $('waveform');
    const dpr = window.devicePixelRatio || 1;
    const width = Math.max(1, Math.round(canvas.clientWidth * dpr));
    const height = Math.max(1, Math.round(canvas.clientHeight * dpr));
    if (canvas.width !== width || canvas.height !== height) Object.assign(canvas, { width, height });
    const g = canvas.getContext('2d');
    const style = getComputedStyle(canvas);
    g.clearRect(0, 0, width, height);
    const axisBuckets = (axisSeconds() * session.rate) / PEAK_BUCKET;
    const playedBucket = playheadSamples(session, demo) / PEAK_BUCKET;
    const colour = (bucket) => {
      const sample = bucket * PEAK_BUCKET;
      if (session.skipped.some((range) => sample >= range.from && sample < range.to)) return '--wave-skipped';
      return bucket < playedBucket ? '--wave-played' : '--wave';
    };
    for (let x = 0; x < width; x++) {
      const from = Math.floor((x / width) * axisBuckets);
      const to = Math.max(from + 1, Math.floor(((x + 1) / width) * axisBuckets));
      if (from >= session.peaks.length) break;
      let peak = 0;
      for (let b = from; b < to && b < session.peaks.length; b++) peak = Math.max(peak, session.peaks[b]);
      const h = Math.max(1, peak * height * 0.95);
      g.fillStyle = style.getPropertyValue(colour(from));
      g.fillRect(x, (height - h) / 2, 1, h);
    }
    g.fillStyle = style.getPropertyValue('--chunk-edge');
    for (const { chunk } of sessionChunks()) {
      if (chunk.end == null) continue;
      g.fillRect(Math.round(((chunk.end / session.rate) / axisSeconds()) * width), 0, Math.max(1, dpr), height);
    }
    const playhead = $('playhead');
    playhead.style.left = `${(100 * playheadSamples(session, demo)) / session.rate / axisSeconds()}%`;
    playhead.hidden = session.total === 0;
  }

  function renderLoop() {
    if (dirty || demo.playbackState !== 'idle') {
      dirty = false;
      updateDemoFigures();
      renderFigures();
      renderTimeline();
      renderWaveform();
    }
    requestAnimationFrame(renderLoop);
  }

  return {
    invalidate() { dirty = true; }, // something changed: redraw on the next animation frame
    updateDemoFigures,
    start() { requestAnimationFrame(renderLoop); },
  };
}
