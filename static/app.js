// Chatterbox Realtime demo: speaks typed text, or a simulated LLM stream, over /v1/stream (docs/protocol.md)
// and plays it gaplessly through an AudioWorklet (worklet.js). No build step: plain ES module.

const STREAM_RATE = 24000; // requested from the server; the worklet resamples to the AudioContext's rate
const JITTER_TARGET_MS = 60; // playback starts once this much audio is buffered (grows after underruns)
const PEAK_BUCKET = STREAM_RATE / 100; // waveform resolution: one peak per 10 ms
const MAX_RECORDING_S = 30;
const MAX_LOGGED_EVENTS = 500;
const SETTING_INPUTS = ['chunk-size', 'temperature', 'exaggeration', 'cfg-weight'];

const $ = (id) => document.getElementById(id);

// Test hook: the browser test reads this to check that audio really went through the worklet.
const demo = {
  connected: false, engine: null, voicesAvailable: null,
  framesReceived: 0, samplesReceived: 0, samplesPlayed: 0, samplesDropped: 0, bufferedMs: 0,
  jitterTargetMs: JITTER_TARGET_MS, underruns: 0, playbackState: 'idle', level: 0, outputRate: null,
  ttfaMs: null, serverTtfaMs: null, rtf: null, events: [], chunks: [], errors: [],
};
window.__demo = demo;

// ---------------------------------------------------------------------------------------------------------
// Small helpers

function apiKey() {
  return $('api-key').value.trim();
}

function authHeaders() {
  return apiKey() ? { 'X-API-Key': apiKey() } : {};
}

function announce(message) {
  $('status-line').textContent = message;
}

function setText(element, text) {
  if (element.textContent !== text) element.textContent = text; // unchanged text is not re-announced
}

function formatMs(ms) {
  return ms == null ? '—' : `${Math.round(ms)} ms`;
}

function formatSeconds(samples, rate) {
  return `${(samples / rate).toFixed(2)} s`;
}

function logEvent(message) {
  demo.events.push({ ...message, at: Math.round(performance.now()) });
  if (demo.events.length > MAX_LOGGED_EVENTS) demo.events.shift();
  const item = document.createElement('li');
  item.textContent = `${(performance.now() / 1000).toFixed(2)} s  ${message.type}` +
    (message.context_id ? `  ${message.context_id}` : '') + (message.code ? `  ${message.code}: ${message.message}` : '');
  const log = $('event-log');
  log.prepend(item);
  while (log.children.length > 50) log.lastChild.remove();
}

// ---------------------------------------------------------------------------------------------------------
// WAV encoding (16-bit PCM mono), for the session download and for microphone uploads

function encodeWav(parts, sampleRate) {
  const length = parts.reduce((sum, part) => sum + part.length, 0);
  const view = new DataView(new ArrayBuffer(44 + length * 2));
  const writeAscii = (offset, text) => [...text].forEach((c, i) => view.setUint8(offset + i, c.charCodeAt(0)));
  writeAscii(0, 'RIFF');
  view.setUint32(4, 36 + length * 2, true);
  writeAscii(8, 'WAVE');
  writeAscii(12, 'fmt ');
  view.setUint32(16, 16, true);
  view.setUint16(20, 1, true); // PCM
  view.setUint16(22, 1, true); // mono
  view.setUint32(24, sampleRate, true);
  view.setUint32(28, sampleRate * 2, true);
  view.setUint16(32, 2, true);
  view.setUint16(34, 16, true);
  writeAscii(36, 'data');
  view.setUint32(40, length * 2, true);
  let offset = 44;
  for (const part of parts) {
    for (let i = 0; i < part.length; i++, offset += 2) {
      const s = Math.max(-1, Math.min(1, part[i]));
      view.setInt16(offset, s < 0 ? s * 0x8000 : s * 0x7fff, true);
    }
  }
  return new Blob([view.buffer], { type: 'audio/wav' });
}

function saveBlob(blob, filename) {
  const link = document.createElement('a');
  link.href = URL.createObjectURL(blob);
  link.download = filename;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 10000);
}

// ---------------------------------------------------------------------------------------------------------
// Session audio: everything received, kept for the waveform, the timeline and the WAV download

const session = {
  parts: [], total: 0, rate: STREAM_RATE, peaks: [], bucketPeak: 0, bucketFill: 0, utterances: [],
  skipped: [], // [from, to) sample ranges that Stop dropped before they were heard

  append(samples) {
    this.parts.push(samples);
    this.total += samples.length;
    for (let i = 0; i < samples.length; i++) {
      this.bucketPeak = Math.max(this.bucketPeak, Math.abs(samples[i]));
      if (++this.bucketFill === PEAK_BUCKET) {
        this.peaks.push(this.bucketPeak);
        this.bucketPeak = 0;
        this.bucketFill = 0;
      }
    }
  },

  clear() {
    Object.assign(this, { parts: [], total: 0, peaks: [], bucketPeak: 0, bucketFill: 0, utterances: [], skipped: [] });
  },
};

// ---------------------------------------------------------------------------------------------------------
// Playback through the AudioWorklet

const player = {
  context: null, node: null, ready: null,

  // Must first run inside a user gesture (click, key) so the browser lets the context start.
  start() {
    if (!this.context) {
      this.context = new AudioContext({ latencyHint: 'interactive' });
      this.ready = this.context.audioWorklet.addModule(new URL('worklet.js', import.meta.url)).then(() => {
        this.node = new AudioWorkletNode(this.context, 'playback-processor',
          { numberOfInputs: 0, numberOfOutputs: 1, outputChannelCount: [2] });
        this.node.port.onmessage = (event) => onPlaybackStats(event.data);
        this.node.port.postMessage({ type: 'config', inputRate: session.rate, targetMs: JITTER_TARGET_MS });
        this.node.connect(this.context.destination);
      });
    }
    if (this.context.state === 'suspended') this.context.resume();
    return this.ready;
  },

  post(message, transfer) {
    this.node?.port.postMessage(message, transfer);
  },

  push(samples) {
    const copy = samples.slice(); // the session keeps the original; the worklet gets its own buffer
    this.post({ type: 'audio', samples: copy }, [copy.buffer]);
  },

  drain() { this.post({ type: 'drain' }); },
  flush() { this.post({ type: 'flush' }); },
  stop() { this.post({ type: 'stop' }); },
  resetJitterTarget() { this.post({ type: 'reset-target' }); },
};

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
  ui.dirty = true;
}

// ---------------------------------------------------------------------------------------------------------
// WebSocket connection

const connection = {
  socket: null, opening: null, channels: new Map(), // channel number -> utterance

  streamUrl() {
    const url = new URL('/v1/stream', location.href);
    url.protocol = location.protocol === 'https:' ? 'wss:' : 'ws:';
    if (apiKey()) url.searchParams.set('api_key', apiKey());
    return url.href;
  },

  // Resolves once the server's `ready` event arrived; reuses an open connection.
  ensure() {
    if (this.socket?.readyState === WebSocket.OPEN && demo.connected) return Promise.resolve();
    if (this.opening) return this.opening;
    setConnectionStatus('connecting', 'Connecting…');
    const socket = new WebSocket(this.streamUrl());
    socket.binaryType = 'arraybuffer';
    this.socket = socket;
    const opening = new Promise((resolve, reject) => {
      socket.onmessage = (event) => {
        if (typeof event.data !== 'string') return onAudioFrame(event.data);
        const message = JSON.parse(event.data);
        if (message.type === 'ready') resolve();
        onServerEvent(message);
      };
      socket.onclose = (event) => {
        reject(new Error(`connection closed (${event.code}${event.reason ? ` ${event.reason}` : ''})`));
        if (this.socket === socket) this.onClosed(event);
      };
    }).finally(() => {
      if (this.opening === opening) this.opening = null;
    });
    this.opening = opening;
    return opening;
  },

  send(message) {
    if (this.socket?.readyState === WebSocket.OPEN) this.socket.send(JSON.stringify(message));
  },

  onClosed(event) {
    demo.connected = false;
    this.channels.clear();
    setConnectionStatus('closed', `Disconnected (${describeClose(event)})`);
    speaker.onDisconnected();
  },

  reconnect() {
    const previous = this.socket;
    Object.assign(this, { socket: null, opening: null });
    demo.connected = false;
    this.channels.clear();
    speaker.onDisconnected();
    previous?.close(1000, 'reconnect');
    return this.ensure();
  },
};

function describeClose(event) {
  if (event.code === 1008) return apiKey() ? 'the API key was refused' : 'this server needs an API key';
  if (event.code === 1006) return 'connection lost';
  return `closed ${event.code}${event.reason ? `: ${event.reason}` : ''}`;
}

function setConnectionStatus(state, text) {
  const pill = $('connection');
  pill.dataset.state = state;
  setText(pill, text);
}

function onServerEvent(message) {
  logEvent(message);
  switch (message.type) {
    case 'ready':
      demo.connected = true;
      demo.engine = message.engine ?? null;
      setConnectionStatus('open', 'Connected');
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
  ui.dirty = true;
}

function onAudioFrame(buffer) {
  demo.framesReceived += 1;
  const channel = new DataView(buffer).getUint32(0, true);
  const utterance = connection.channels.get(channel);
  if (!utterance || utterance.state === 'cancelling' || utterance.state === 'cancelled') return; // barged-in
  speaker.onAudio(utterance, new Float32Array(buffer, 4, (buffer.byteLength - 4) >> 2));
}

function showEngine(ready) {
  const engine = ready.engine ?? {};
  const name = engine.engine ?? engine.name ?? 'unknown engine';
  const parts = [name, engine.device, engine.dtype].filter(Boolean);
  setText($('engine'), parts.join(' · '));
  $('engine-json').textContent = JSON.stringify({ engine: ready.engine, limits: ready.limits, defaults: ready.defaults }, null, 2);
  // Start from the server's defaults, except for settings the visitor already changed.
  const generation = ready.defaults?.generation ?? {};
  const defaults = { 'chunk-size': ready.defaults?.chunking?.chunk_size, temperature: generation.temperature,
    exaggeration: generation.exaggeration, 'cfg-weight': generation.cfg_weight };
  for (const id of SETTING_INPUTS) {
    if (defaults[id] != null && !$(id).dataset.touched) $(id).value = defaults[id];
  }
}

// ---------------------------------------------------------------------------------------------------------
// Utterances: one protocol context per Speak press

function tokenize(text) {
  // LLM tokens split words anywhere: cut long words into 2-4 character pieces after their leading space.
  const tokens = [];
  for (const word of text.match(/\s*\S+/g) ?? []) {
    let rest = word;
    while (rest.length > 5) {
      const cut = (rest.match(/^\s*/)[0].length) + 2 + Math.floor(Math.random() * 3);
      tokens.push(rest.slice(0, cut));
      rest = rest.slice(cut);
    }
    tokens.push(rest);
  }
  return tokens;
}

function nextTokenDelayMs() {
  const rate = Number($('rate').value);
  const jitter = Number($('jitter').value) / 100;
  let delay = (1000 / rate) * (1 + jitter * (2 * Math.random() - 1));
  if (Math.random() < jitter * 0.04) delay *= 6; // an occasional stall, like a busy LLM backend
  return Math.max(0, delay);
}

let utteranceCounter = 0;

const speaker = {
  current: null, // the utterance being spoken (or the last one); earlier ones may still be cancelling
  byId: new Map(),

  generation() {
    return {
      temperature: Number($('temperature').value),
      exaggeration: Number($('exaggeration').value),
      cfg_weight: Number($('cfg-weight').value),
    };
  },

  async speak(text, mode) {
    await player.start();
    await connection.ensure();
    if (this.isActive()) this.stop('barge-in');
    player.resetJitterTarget();
    const utterance = {
      id: `utt-${++utteranceCounter}-${Date.now().toString(36)}`, state: 'starting', channel: null,
      textSentAt: null, firstAudioAt: null, firstSoundAt: null, lastChunkEnd: session.total, samples: 0, chunks: [], stats: null, timer: null, tokens: [], sentTokens: 0,
      sentText: '',
    };
    this.current = utterance;
    this.byId.set(utterance.id, utterance);
    session.utterances.push(utterance);
    $('transcript').textContent = '';
    connection.send({
      type: 'start', context_id: utterance.id, voice: $('voice').value || 'default',
      output: { encoding: 'pcm_f32le', sample_rate: STREAM_RATE },
      chunking: { chunk_size: Number($('chunk-size').value) }, generation: this.generation(),
    });
    if (mode === 'llm') {
      utterance.tokens = tokenize(text);
      this.sendNextToken(utterance);
    } else {
      this.sendText(utterance, text);
      this.end(utterance);
    }
    announce(mode === 'llm' ? 'Streaming simulated LLM tokens…' : 'Speaking…');
    ui.dirty = true;
  },

  sendText(utterance, text) {
    if (utterance.textSentAt == null) utterance.textSentAt = performance.now();
    connection.send({ type: 'text', context_id: utterance.id, text });
    utterance.sentText += text;
    $('transcript').textContent = utterance.sentText;
  },

  sendNextToken(utterance) {
    if (utterance !== this.current || utterance.state === 'cancelling' || utterance.state === 'cancelled') return;
    if (utterance.sentTokens === utterance.tokens.length) return this.end(utterance);
    this.sendText(utterance, utterance.tokens[utterance.sentTokens++]);
    utterance.timer = setTimeout(() => this.sendNextToken(utterance), nextTokenDelayMs());
  },

  end(utterance) {
    connection.send({ type: 'end', context_id: utterance.id });
  },

  isActive(utterance = this.current) {
    return utterance?.state === 'starting' || utterance?.state === 'streaming';
  },

  finish(utterance, state) {
    utterance.state = state;
    clearTimeout(utterance.timer);
    connection.channels.delete(utterance.channel);
    this.byId.delete(utterance.id);
  },

  // Barge-in: cancel server-side generation and fade the local playback out at once.
  stop(reason = 'stop') {
    const utterance = this.current;
    if (demo.playbackState !== 'idle') session.skipped.push({ from: playheadSamples(), to: session.total });
    player.stop();
    if (!utterance) return;
    clearTimeout(utterance.timer);
    if (this.isActive()) {
      utterance.state = 'cancelling';
      connection.send({ type: 'cancel', context_id: utterance.id });
      announce(reason === 'barge-in' ? 'Interrupted the previous reply.' : 'Stopped.');
    }
    ui.dirty = true;
  },

  onEvent(message) {
    const utterance = this.byId.get(message.context_id);
    if (!utterance) return;
    switch (message.type) {
      case 'started':
        utterance.channel = message.channel;
        if (utterance.state === 'starting') utterance.state = 'streaming';
        connection.channels.set(message.channel, utterance);
        if (message.sample_rate && message.sample_rate !== session.rate) {
          announce(`Server streams at ${message.sample_rate} Hz; expected ${session.rate} Hz.`);
        }
        break;
      case 'chunk_started':
        utterance.chunks.push({ index: message.chunk, text: message.text, state: 'synthesizing', start: null,
          end: null, stats: null });
        break;
      case 'chunk_done':
        this.onChunkDone(utterance, message);
        break;
      case 'flushed':
        player.drain();
        break;
      case 'cancelled': {
        // Audio stopped being accepted at Stop, so the interrupted chunk's audio is whatever came before it.
        const interrupted = utterance.chunks.find((c) => c.state === 'synthesizing');
        if (interrupted) Object.assign(interrupted, { start: utterance.lastChunkEnd, end: session.total });
        utterance.chunks.filter((c) => c.state === 'synthesizing').forEach((c) => { c.state = 'cancelled'; });
        this.finish(utterance, 'cancelled');
        if (utterance === this.current) announce('Cancelled: the server stopped generating.');
        break;
      }
      case 'done':
        this.finish(utterance, 'done');
        utterance.stats = message.stats ?? null;
        player.flush();
        announce(`Done: ${formatSeconds(utterance.samples, session.rate)} of audio, ` +
          `first audio after ${formatMs(utterance.firstAudioAt - utterance.textSentAt)}.`);
        break;
    }
    updateDemoFigures();
  },

  onChunkDone(utterance, message) {
    const chunk = utterance.chunks.find((c) => c.index === message.chunk);
    // A context's chunks are spoken in order, so this chunk's audio is everything since the previous one ended.
    const span = { start: utterance.lastChunkEnd, end: session.total };
    utterance.lastChunkEnd = session.total;
    if (chunk) Object.assign(chunk, span, { state: 'done', stats: message.stats ?? null });
    // When the server has spoken all text sent so far, the next audio waits on the (simulated) LLM, not on
    // the network: play the tail out, and do not count the pause as an underrun.
    const visible = (text) => text.replace(/\s+/g, '').length;
    const chunked = utterance.chunks.reduce((sum, c) => sum + visible(c.text), 0);
    if (utterance.chunks.every((c) => c.state === 'done') && chunked >= visible(utterance.sentText)) player.drain();
  },

  onAudio(utterance, samples) {
    if (utterance.firstAudioAt == null) {
      utterance.firstAudioAt = performance.now();
      announce(`First audio after ${formatMs(utterance.firstAudioAt - utterance.textSentAt)}.`);
    }
    utterance.samples += samples.length;
    session.append(samples);
    player.push(samples);
    ui.dirty = true;
  },

  // Errors that end a context (docs/protocol.md); the others leave it running.
  onError(message) {
    const utterance = this.byId.get(message.context_id);
    const fatal = ['engine_error', 'slow_consumer', 'text_too_long', 'unknown_voice', 'invalid_settings',
      'bad_request', 'too_many_contexts'];
    if (utterance && this.isActive(utterance) && fatal.includes(message.code)) {
      this.finish(utterance, 'failed');
      player.flush();
    }
  },

  onDisconnected() {
    for (const utterance of this.byId.values()) {
      this.finish(utterance, utterance.state === 'cancelling' ? 'cancelled' : 'failed');
    }
    player.flush();
  },
};

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

// ---------------------------------------------------------------------------------------------------------
// Rendering: figures, timeline, waveform (redrawn on animation frames when something changed)

const ui = {
  dirty: true,
  timelineKey: '',
};

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

function playheadSamples() {
  if (!demo.outputRate) return 0;
  return ((demo.samplesPlayed + demo.samplesDropped) * session.rate) / demo.outputRate;
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
  });
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
  const playedBucket = playheadSamples() / PEAK_BUCKET;
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
  playhead.style.left = `${(100 * playheadSamples()) / session.rate / axisSeconds()}%`;
  playhead.hidden = session.total === 0;
}

function renderLoop() {
  if (ui.dirty || demo.playbackState !== 'idle') {
    ui.dirty = false;
    updateDemoFigures();
    renderFigures();
    renderTimeline();
    renderWaveform();
  }
  requestAnimationFrame(renderLoop);
}

// ---------------------------------------------------------------------------------------------------------
// Voices: list, upload a reference recording, record one from the microphone

async function loadVoices(selectId) {
  const select = $('voice');
  let voices = [];
  try {
    const response = await fetch('/v1/voices', { headers: authHeaders() });
    demo.voicesAvailable = response.ok;
    if (response.ok) voices = (await response.json()).voices ?? [];
  } catch {
    demo.voicesAvailable = false;
  }
  if (!voices.some((v) => v.id === 'default')) voices.unshift({ id: 'default', name: 'default' });
  const previous = selectId ?? select.value;
  select.replaceChildren(...voices.map((v) => new Option(v.name && v.name !== v.id ? `${v.name} (${v.id})` : v.id, v.id)));
  if (voices.some((v) => v.id === previous)) select.value = previous;
  $('voice-library').disabled = !demo.voicesAvailable;
  $('voice-note').textContent = demo.voicesAvailable
    ? `${voices.length} voice${voices.length === 1 ? '' : 's'} in the library.`
    : 'This server has no voice library: the default voice speaks.';
}

// The library's names are also ids: 1-64 characters of a-z, 0-9, '_' and '-', starting with a letter or digit.
function voiceId(text) {
  return text.toLowerCase().normalize('NFKD').replace(/[\u0300-\u036f]/g, '').replace(/[^a-z0-9_-]+/g, '-')
    .replace(/^[-_]+|-+$/g, '').slice(0, 64);
}

async function uploadVoice(blob, filename) {
  const name = voiceId($('voice-name').value) || voiceId(filename.replace(/\.[^.]+$/, '')) || 'my-voice';
  const form = new FormData();
  form.append('file', blob, filename);
  form.append('name', name);
  setText($('upload-status'), `Uploading “${name}”…`);
  try {
    const response = await fetch('/v1/voices', { method: 'POST', body: form, headers: authHeaders() });
    const body = await response.json().catch(() => ({}));
    if (!response.ok) throw new Error(body.message ?? body.detail ?? body.error?.message ?? `HTTP ${response.status}`);
    const id = body.id ?? body.voice?.id;
    await loadVoices(id);
    setText($('upload-status'), `Added voice “${name}”${id ? ` (${id})` : ''}.`);
  } catch (error) {
    setText($('upload-status'), `Upload failed: ${error.message}`);
  }
}

const recorder = { media: null, stream: null, startedAt: 0, timer: null, wav: null };

async function toggleRecording() {
  if (recorder.media?.state === 'recording') return recorder.media.stop();
  try {
    recorder.stream = await navigator.mediaDevices.getUserMedia({ audio: true });
  } catch (error) {
    setText($('upload-status'), `Microphone unavailable: ${error.message}`);
    return;
  }
  const parts = [];
  recorder.media = new MediaRecorder(recorder.stream);
  recorder.media.ondataavailable = (event) => parts.push(event.data);
  recorder.media.onstop = () => finishRecording(new Blob(parts, { type: recorder.media.mimeType }));
  recorder.media.start();
  recorder.startedAt = performance.now();
  $('record').textContent = 'Stop recording';
  $('record').setAttribute('aria-pressed', 'true');
  recorder.timer = setInterval(() => {
    const seconds = (performance.now() - recorder.startedAt) / 1000;
    setText($('upload-status'), `Recording… ${seconds.toFixed(0)} s (speak for 5-15 s)`);
    if (seconds >= MAX_RECORDING_S) recorder.media.stop();
  }, 250);
}

// Decode the browser's compressed recording and re-encode it as WAV, which any server-side decoder reads.
async function finishRecording(blob) {
  clearInterval(recorder.timer);
  recorder.stream.getTracks().forEach((track) => track.stop());
  $('record').textContent = 'Record from microphone';
  $('record').setAttribute('aria-pressed', 'false');
  try {
    const decoder = new OfflineAudioContext(1, 1, 48000);
    const audio = await decoder.decodeAudioData(await blob.arrayBuffer());
    const mono = new Float32Array(audio.length);
    for (let c = 0; c < audio.numberOfChannels; c++) {
      audio.getChannelData(c).forEach((v, i) => { mono[i] += v / audio.numberOfChannels; });
    }
    recorder.wav = encodeWav([mono], audio.sampleRate);
    if (!$('voice-name').value.trim()) $('voice-name').value = `recording-${new Date().toTimeString().slice(0, 8).replace(/:/g, '')}`;
    $('recording-preview').src = URL.createObjectURL(recorder.wav);
    $('recording-preview').hidden = false;
    $('upload-recording').disabled = false;
    setText($('upload-status'), `Recorded ${audio.duration.toFixed(1)} s. Listen, then upload it.`);
  } catch (error) {
    setText($('upload-status'), `Could not decode the recording: ${error.message}`);
  }
}

// ---------------------------------------------------------------------------------------------------------
// Wiring

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
  ui.dirty = true;
}

function init() {
  const params = new URLSearchParams(location.search);
  if (params.get('api_key')) $('api-key').value = params.get('api_key');
  bindRange('rate', 'rate-value', (v) => `${v} tokens/s`);
  bindRange('jitter', 'jitter-value', (v) => `${v}%`);
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
  $('connection-form').addEventListener('submit', (event) => {
    event.preventDefault();
    connection.reconnect().then(() => loadVoices()).catch((error) => announce(`Could not connect: ${error.message}`));
  });
  $('server-details').addEventListener('toggle', async () => {
    if (!$('server-details').open) return;
    const response = await fetch('/optimization-status', { headers: authHeaders() }).catch(() => null);
    $('optimization-json').textContent = response?.ok ? JSON.stringify(await response.json(), null, 2)
      : `unavailable (${response ? `HTTP ${response.status}` : 'network error'})`;
  });
  $('upload-file').addEventListener('click', () => {
    const file = $('voice-file').files[0];
    if (!file) return setText($('upload-status'), 'Choose an audio file first.');
    uploadVoice(file, file.name);
  });
  const canRecord = Boolean(navigator.mediaDevices?.getUserMedia && window.MediaRecorder);
  $('recording-controls').hidden = !canRecord;
  $('record').addEventListener('click', toggleRecording);
  $('upload-recording').addEventListener('click', () => uploadVoice(recorder.wav, 'recording.wav'));
  window.addEventListener('resize', () => { ui.dirty = true; });

  // Voices load once connected: with an API key the first attempt fails, and the voice list would too.
  connection.ensure().then(() => loadVoices()).catch((error) => announce(`Could not connect: ${error.message}`));
  requestAnimationFrame(renderLoop);
}

init();
