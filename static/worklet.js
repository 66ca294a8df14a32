// Playback worklet: resamples the stream (24 kHz) to the AudioContext's rate, keeps the result in a ring
// buffer, and plays it gaplessly behind a small jitter buffer that grows after each underrun.
//
// Messages in:  {type: 'config', inputRate, targetMs}, {type: 'audio', samples: Float32Array},
//               {type: 'drain'} (no more audio is coming for now: play the tail even below the target),
//               {type: 'flush'} (the stream ended: push the resampler's last samples out, then drain),
//               {type: 'stop'} (barge-in: fade out over a few ms, then drop everything buffered).
// Messages out: {type: 'stats', ...} a few dozen times a second and at every state change.

const FADE_OUT_S = 0.012; // long enough to avoid a click, short enough to feel instant
const FADE_IN_S = 0.003; // after an underrun the waveform resumes mid-cycle
const STATS_EVERY_S = 0.025;
const MAX_TARGET_MS = 800;

// Streaming 4-point Catmull-Rom interpolator; keeps three samples of history across calls so chunk seams
// are continuous. Good enough for upsampling speech; a downsampling context would need a low-pass first.
class StreamResampler {
  constructor(inputRate, outputRate) {
    this.step = inputRate / outputRate;
    this.reset();
  }

  reset() {
    this.history = new Float32Array(3);
    this.position = 3; // index of the next output sample in [history..., input...]
  }

  process(input) {
    const buffer = new Float32Array(3 + input.length);
    buffer.set(this.history, 0);
    buffer.set(input, 3);
    const end = buffer.length;
    const output = new Float32Array(Math.ceil((end - this.position) / this.step) + 1);
    let count = 0;
    let position = this.position;
    while (Math.floor(position) + 2 < end) {
      const i = Math.floor(position);
      const t = position - i;
      const xm1 = buffer[i - 1], x0 = buffer[i], x1 = buffer[i + 1], x2 = buffer[i + 2];
      const c1 = 0.5 * (x1 - xm1);
      const c2 = xm1 - 2.5 * x0 + 2 * x1 - 0.5 * x2;
      const c3 = 0.5 * (x2 - xm1) + 1.5 * (x0 - x1);
      output[count++] = ((c3 * t + c2) * t + c1) * t + x0;
      position += this.step;
    }
    this.history = buffer.slice(end - 3);
    this.position = position - (end - 3);
    return output.subarray(0, count);
  }
}

// Single-threaded ring (messages and process() run on the same audio thread); grows instead of dropping,
// because the server may run far ahead of real time.
class RingBuffer {
  constructor(capacity) {
    this.data = new Float32Array(capacity);
    this.readIndex = 0;
    this.length = 0;
  }

  write(samples) {
    if (this.length + samples.length > this.data.length) this.grow(this.length + samples.length);
    const capacity = this.data.length;
    const start = (this.readIndex + this.length) % capacity;
    const first = Math.min(samples.length, capacity - start);
    this.data.set(samples.subarray(0, first), start);
    this.data.set(samples.subarray(first), 0);
    this.length += samples.length;
  }

  read(target, offset, count) {
    const n = Math.min(count, this.length);
    const first = Math.min(n, this.data.length - this.readIndex);
    target.set(this.data.subarray(this.readIndex, this.readIndex + first), offset);
    target.set(this.data.subarray(0, n - first), offset + first);
    this.readIndex = (this.readIndex + n) % this.data.length;
    this.length -= n;
    return n;
  }

  grow(minimum) {
    let capacity = this.data.length * 2;
    while (capacity < minimum) capacity *= 2;
    const data = new Float32Array(capacity);
    const length = this.read(data, 0, this.length);
    this.data = data;
    this.readIndex = 0;
    this.length = length;
  }

  clear() {
    this.readIndex = 0;
    this.length = 0;
  }
}

class PlaybackProcessor extends AudioWorkletProcessor {
  constructor() {
    super();
    this.ring = new RingBuffer(sampleRate * 10);
    this.resampler = new StreamResampler(24000, sampleRate);
    this.inputRate = 24000;
    this.initialTargetMs = 60;
    this.targetMs = 60;
    this.state = 'idle'; // idle: nothing to play; buffering: waiting for the target; playing
    this.draining = false;
    this.fadeTail = null; // the last few ms before a stop, played with a falling gain
    this.fadePosition = 0;
    this.fadeInLeft = 0;
    this.received = 0; // input-rate samples received
    this.played = 0; // output-rate samples played from the ring
    this.dropped = 0; // output-rate samples discarded by stop
    this.underruns = 0;
    this.level = 0; // peak of the last render quantum
    this.sinceStats = 0;
    this.port.onmessage = (event) => this.onMessage(event.data);
  }

  onMessage(message) {
    switch (message.type) {
      case 'config':
        this.inputRate = message.inputRate;
        this.resampler = new StreamResampler(message.inputRate, sampleRate);
        this.initialTargetMs = this.targetMs = message.targetMs;
        break;
      case 'audio':
        this.received += message.samples.length;
        this.ring.write(this.resampler.process(message.samples));
        this.draining = false;
        if (this.state === 'idle') this.setState('buffering');
        break;
      case 'flush':
        this.ring.write(this.resampler.process(new Float32Array(3)));
        this.resampler.reset();
        this.draining = true;
        break;
      case 'drain':
        this.draining = true;
        break;
      case 'stop':
        this.stop();
        break;
      case 'reset-target':
        this.targetMs = this.initialTargetMs;
        break;
    }
    this.postStats();
  }

  // Barge-in: keep only a few ms to fade out (no click), drop the rest; later audio starts a new stream.
  stop() {
    if (this.state === 'playing') {
      this.fadeTail = new Float32Array(Math.round(FADE_OUT_S * sampleRate));
      this.fadeTail = this.fadeTail.subarray(0, this.ring.read(this.fadeTail, 0, this.fadeTail.length));
      this.fadePosition = 0;
      this.played += this.fadeTail.length;
    }
    this.dropped += this.ring.length;
    this.ring.clear();
    this.resampler.reset();
    this.draining = false;
    this.setState('idle');
  }

  setState(state) {
    if (state === this.state) return;
    this.state = state;
    if (state === 'playing') this.fadeInLeft = Math.round(FADE_IN_S * sampleRate);
    this.postStats();
  }

  bufferedMs() {
    return (this.ring.length / sampleRate) * 1000;
  }

  postStats() {
    this.sinceStats = 0;
    this.port.postMessage({
      type: 'stats', state: this.state, received: this.received, played: this.played, dropped: this.dropped,
      buffered: this.ring.length, bufferedMs: this.bufferedMs(), targetMs: this.targetMs,
      underruns: this.underruns, level: this.level, outputRate: sampleRate, inputRate: this.inputRate,
    });
  }

  process(_inputs, outputs) {
    const channels = outputs[0];
    const out = channels[0];
    const frames = out.length;
    out.fill(0);
    if (this.state === 'buffering' && (this.bufferedMs() >= this.targetMs || this.draining)) {
      this.setState('playing');
    }
    if (this.fadeTail) this.renderFadeOut(out);
    else if (this.state === 'playing') this.render(out, frames);
    let peak = 0;
    for (let k = 0; k < frames; k++) peak = Math.max(peak, Math.abs(out[k]));
    const fellSilent = peak === 0 && this.level > 0;
    this.level = peak;
    for (let c = 1; c < channels.length; c++) channels[c].set(out);
    this.sinceStats += frames / sampleRate;
    // Report silence at once: the page (and its test) wait for it after Stop.
    if (this.sinceStats >= STATS_EVERY_S || fellSilent) this.postStats();
    return true;
  }

  render(out, frames) {
    const got = this.ring.read(out, 0, frames);
    this.played += got;
    this.fadeIn(out, got);
    if (got < frames) {
      if (this.draining) {
        this.setState('idle');
      } else {
        // Ran dry while more audio was owed: wait for a deeper buffer before resuming, so the next hiccup
        // is absorbed.
        this.underruns += 1;
        this.targetMs = Math.min(MAX_TARGET_MS, this.targetMs * 1.5 + 20);
        this.setState('buffering');
      }
    }
  }

  fadeIn(out, count) {
    const total = Math.round(FADE_IN_S * sampleRate);
    for (let k = 0; k < count && this.fadeInLeft > 0; k++, this.fadeInLeft--) {
      out[k] *= 1 - this.fadeInLeft / total;
    }
  }

  renderFadeOut(out) {
    const tail = this.fadeTail;
    const count = Math.min(out.length, tail.length - this.fadePosition);
    for (let k = 0; k < count; k++, this.fadePosition++) {
      out[k] = tail[this.fadePosition] * (1 - (this.fadePosition + 1) / tail.length);
    }
    if (this.fadePosition === tail.length) this.fadeTail = null;
  }
}

registerProcessor('playback-processor', PlaybackProcessor);
