// Unit tests of the playback worklet (static/worklet.js) outside a browser: the AudioWorklet globals are
// stubbed, and process() is called render quantum by render quantum like the audio thread would.
//
//   node --test tests/browser/worklet.unit.mjs

import assert from 'node:assert/strict';
import fs from 'node:fs';
import { test } from 'node:test';
import vm from 'node:vm';

const SOURCE = fs.readFileSync(new URL('../../static/worklet.js', import.meta.url), 'utf8');
const QUANTUM = 128;
const INPUT_RATE = 24000;

function loadProcessor(outputRate) {
  const registered = {};
  class AudioWorkletProcessor {
    constructor() {
      this.messages = [];
      this.port = { postMessage: (message) => this.messages.push(message), onmessage: null };
    }
  }
  const context = vm.createContext({
    sampleRate: outputRate, AudioWorkletProcessor, Float32Array, Math,
    registerProcessor: (name, cls) => { registered[name] = cls; },
  });
  vm.runInContext(SOURCE, context);
  const processor = new registered['playback-processor']();
  const send = (message) => processor.port.onmessage({ data: message });
  send({ type: 'config', inputRate: INPUT_RATE, targetMs: 60 });
  const render = (quanta = 1) => {
    const out = [];
    for (let q = 0; q < quanta; q++) {
      const channels = [new Float32Array(QUANTUM), new Float32Array(QUANTUM)];
      processor.process([], [channels]);
      assert.deepEqual(channels[1], channels[0], 'both output channels carry the same mono signal');
      out.push(...channels[0]);
    }
    return Float32Array.from(out);
  };
  const stats = () => processor.messages.findLast((m) => m.type === 'stats');
  return { processor, send, render, stats };
}

function sine(frequency, rate, from, count, amplitude = 0.5) {
  return Float32Array.from({ length: count }, (_, i) => amplitude * Math.sin((2 * Math.PI * frequency * (from + i)) / rate));
}

// Feeds `total` samples of a 24 kHz sine in irregular pieces, as network frames arrive.
function feedSine(send, frequency, total) {
  const sizes = [1, 7, 480, 960, 333, 2400, 64];
  for (let sent = 0, k = 0; sent < total; k++) {
    const size = Math.min(sizes[k % sizes.length], total - sent);
    send({ type: 'audio', samples: sine(frequency, INPUT_RATE, sent, size) });
    sent += size;
  }
}

for (const outputRate of [48000, 44100]) {
  test(`resampling 24 kHz to ${outputRate} Hz is continuous across frame seams`, () => {
    const { send, render, stats } = loadProcessor(outputRate);
    feedSine(send, 440, INPUT_RATE); // one second
    send({ type: 'drain' });
    const out = render(Math.floor((0.9 * outputRate) / QUANTUM));
    const fadeIn = Math.round(0.003 * outputRate);
    const expected = sine(440, outputRate, 0, out.length);
    let worst = 0;
    for (let i = fadeIn; i < out.length; i++) worst = Math.max(worst, Math.abs(out[i] - expected[i]));
    assert.ok(worst < 2e-3, `largest deviation from the ideal sine: ${worst}`);
    assert.equal(stats().received, INPUT_RATE);
    assert.equal(stats().underruns, 0);
  });
}

test('playback waits for the jitter buffer, then plays', () => {
  const { send, render, stats } = loadProcessor(48000);
  send({ type: 'audio', samples: sine(300, INPUT_RATE, 0, 0.03 * INPUT_RATE) }); // 30 ms < 60 ms target
  assert.ok(render(4).every((v) => v === 0), 'silent while buffering');
  assert.equal(stats().state, 'buffering');
  send({ type: 'audio', samples: sine(300, INPUT_RATE, 0.03 * INPUT_RATE, 0.04 * INPUT_RATE) });
  const out = render(1);
  assert.equal(stats().state, 'playing');
  assert.ok(out.some((v) => v !== 0), 'plays once 60 ms are buffered');
});

test('an underrun is counted and deepens the jitter buffer; a drained end is not an underrun', () => {
  const { send, render, stats } = loadProcessor(48000);
  send({ type: 'audio', samples: sine(300, INPUT_RATE, 0, 0.1 * INPUT_RATE) });
  render(Math.ceil((0.12 * 48000) / QUANTUM));
  assert.equal(stats().underruns, 1, 'ran dry while more audio was owed');
  assert.equal(stats().state, 'buffering');
  assert.ok(stats().targetMs > 60, `target grew to ${stats().targetMs} ms`);

  send({ type: 'audio', samples: sine(300, INPUT_RATE, 0, 0.02 * INPUT_RATE) });
  send({ type: 'drain' }); // below the target, but nothing more is coming: play it out
  render(Math.ceil((0.04 * 48000) / QUANTUM));
  assert.equal(stats().state, 'idle');
  assert.equal(stats().underruns, 1);
  assert.equal(stats().buffered, 0);
});

test('stop fades out within a few ms, drops the rest, and later audio plays afresh', () => {
  const { send, render, stats } = loadProcessor(48000);
  send({ type: 'audio', samples: new Float32Array(INPUT_RATE).fill(0.5) }); // 1 s of a loud constant
  render(10);
  send({ type: 'stop' });
  const out = render(8);
  const fadeLength = Math.round(0.012 * 48000);
  for (let i = 1; i < fadeLength; i++) assert.ok(out[i] <= out[i - 1], 'the fade only falls');
  assert.ok(out[0] > 0.45, 'the fade starts from the level that was playing (no jump down)');
  assert.ok(out[0] - out[1] < 0.01, 'each step of the fade is small (no click)');
  assert.ok(out.subarray(fadeLength).every((v) => v === 0), 'silent after the fade');
  assert.equal(stats().buffered, 0);
  assert.equal(stats().level, 0);
  assert.ok(stats().dropped > 0.9 * 48000 - 10 * QUANTUM - fadeLength - 1, 'the unplayed audio was dropped');

  send({ type: 'audio', samples: new Float32Array(0.1 * INPUT_RATE).fill(0.25) });
  const after = render(10);
  assert.ok(after.some((v) => Math.abs(v - 0.25) < 1e-6), 'audio sent after a stop plays');
});

test('the ring grows when the server runs far ahead of real time, keeping every sample in order', () => {
  const { send, render, stats } = loadProcessor(48000);
  const seconds = 25; // more than the initial 10 s ring
  const ramp = Float32Array.from({ length: seconds * INPUT_RATE }, (_, i) => (i % 1000) / 1000 - 0.5);
  send({ type: 'audio', samples: ramp });
  assert.ok(stats().buffered >= seconds * 48000 - 8,  `buffered ${stats().buffered} samples`);
  const out = render(Math.floor((seconds * 48000) / QUANTUM) - 1);
  // Upsampled by 2 exactly: every other output sample is an input sample, away from the ramp's wraps.
  let mismatches = 0;
  for (let i = 2000; i < out.length; i += 2) {
    const input = i / 2;
    if (input % 1000 > 2 && input % 1000 < 998 && Math.abs(out[i] - ramp[input]) > 1e-5) mismatches++;
  }
  assert.equal(mismatches, 0);
});
