// The speak flow: one protocol context per Speak press, fed whole or as a simulated LLM token stream, and the
// server's events and audio routed back to their utterance.

import { $, announce, formatMs, formatSeconds } from './dom.js';
import { cancelMessage, endMessage, startMessage, textMessage } from './connection.js';
import { playheadSamples } from './session.js';

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

// `playback` holds the worklet's latest stats; `onChange()` asks for a redraw and `onEventHandled()` refreshes
// the figures at once after a server event.
export function createSpeaker({ session, player, connection, playback, onChange, onEventHandled }) {
  return {
    current: null, // the utterance being spoken (or the last one); earlier ones may still be cancelling
    byId: new Map(),
    channels: new Map(), // channel number -> utterance

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
      connection.send(startMessage({
        contextId: utterance.id, model: $('model').value, language: $('language').value, voice: $('voice').value,
        sampleRate: session.rate,
        chunkSize: Number($('chunk-size').value), generation: this.generation(),
      }));
      if (mode === 'llm') {
        utterance.tokens = tokenize(text);
        this.sendNextToken(utterance);
      } else {
        this.sendText(utterance, text);
        this.end(utterance);
      }
      announce(mode === 'llm' ? 'Streaming simulated LLM tokens…' : 'Speaking…');
      onChange();
    },

    sendText(utterance, text) {
      if (utterance.textSentAt == null) utterance.textSentAt = performance.now();
      connection.send(textMessage(utterance.id, text));
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
      connection.send(endMessage(utterance.id));
    },

    isActive(utterance = this.current) {
      return utterance?.state === 'starting' || utterance?.state === 'streaming';
    },

    finish(utterance, state) {
      utterance.state = state;
      clearTimeout(utterance.timer);
      this.channels.delete(utterance.channel);
      this.byId.delete(utterance.id);
    },

    // Barge-in: cancel server-side generation and fade the local playback out at once.
    stop(reason = 'stop') {
      const utterance = this.current;
      if (playback.playbackState !== 'idle') session.skipped.push({ from: playheadSamples(session, playback), to: session.total });
      player.stop();
      if (!utterance) return;
      clearTimeout(utterance.timer);
      if (this.isActive()) {
        utterance.state = 'cancelling';
        connection.send(cancelMessage(utterance.id));
        announce(reason === 'barge-in' ? 'Interrupted the previous reply.' : 'Stopped.');
      }
      onChange();
    },

    onEvent(message) {
      const utterance = this.byId.get(message.context_id);
      if (!utterance) return;
      switch (message.type) {
        case 'started':
          utterance.channel = message.channel;
          if (utterance.state === 'starting') utterance.state = 'streaming';
          this.channels.set(message.channel, utterance);
          if (message.sample_rate && message.sample_rate !== session.rate) {
            announce(`Server streams at ${message.sample_rate} Hz; expected ${session.rate} Hz.`);
          }
          break;
        case 'chunk_started':
          utterance.chunks.push({ index: message.chunk, text: message.text, state: 'synthesizing', start: null,
            end: null, stats: null });
          break;
        case 'alignment': {
          const chunk = utterance.chunks.find((c) => c.index === message.chunk);
          if (chunk) chunk.words = message.words;
          break;
        }
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
      onEventHandled();
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

    onAudioFrame(channel, samples) {
      const utterance = this.channels.get(channel);
      if (!utterance || utterance.state === 'cancelling' || utterance.state === 'cancelled') return; // barged-in
      this.onAudio(utterance, samples);
    },

    onAudio(utterance, samples) {
      if (utterance.firstAudioAt == null) {
        utterance.firstAudioAt = performance.now();
        announce(`First audio after ${formatMs(utterance.firstAudioAt - utterance.textSentAt)}.`);
      }
      utterance.samples += samples.length;
      session.append(samples);
      player.push(samples);
      onChange();
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
      this.channels.clear();
      for (const utterance of this.byId.values()) {
        this.finish(utterance, utterance.state === 'cancelling' ? 'cancelled' : 'failed');
      }
      player.flush();
    },
  };
}
