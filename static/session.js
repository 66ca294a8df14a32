// Session audio: everything received, kept for the waveform, the timeline and the WAV download.

export const STREAM_RATE = 24000; // requested from the server; the worklet resamples to the AudioContext's rate
export const PEAK_BUCKET = STREAM_RATE / 100; // waveform resolution: one peak per 10 ms

export function createSession() {
  return {
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
}

// Where playback is, in session samples: `playback` holds the worklet's latest stats (output-rate samples).
export function playheadSamples(session, playback) {
  if (!playback.outputRate) return 0;
  return ((playback.samplesPlayed + playback.samplesDropped) * session.rate) / playback.outputRate;
}
