// Playback through the AudioWorklet (worklet.js), which holds the jitter buffer.

export const JITTER_TARGET_MS = 60; // playback starts once this much audio is buffered (grows after underruns)

// `onStats` receives the worklet's periodic playback stats.
export function createPlayer({ inputRate, onStats }) {
  return {
    context: null, node: null, ready: null,

    // Must first run inside a user gesture (click, key) so the browser lets the context start.
    start() {
      if (!this.context) {
        this.context = new AudioContext({ latencyHint: 'interactive' });
        this.ready = this.context.audioWorklet.addModule(new URL('worklet.js', import.meta.url)).then(() => {
          this.node = new AudioWorkletNode(this.context, 'playback-processor',
            { numberOfInputs: 0, numberOfOutputs: 1, outputChannelCount: [2] });
          this.node.port.onmessage = (event) => onStats(event.data);
          this.node.port.postMessage({ type: 'config', inputRate, targetMs: JITTER_TARGET_MS });
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
      const copy = samples.slice(); // the caller keeps the original; the worklet gets its own buffer
      this.post({ type: 'audio', samples: copy }, [copy.buffer]);
    },

    drain() { this.post({ type: 'drain' }); },
    flush() { this.post({ type: 'flush' }); },
    stop() { this.post({ type: 'stop' }); },
    resetJitterTarget() { this.post({ type: 'reset-target' }); },
  };
}
