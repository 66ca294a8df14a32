// WebSocket client for /v1/stream and the protocol messages the demo sends (docs/protocol.md).

import { $, apiKey, setText } from './dom.js';

// The `start` message of one context; every option a reply can choose goes through here.
export function startMessage({ contextId, model, language, voice, sampleRate, chunkSize, generation }) {
  return {
    type: 'start', context_id: contextId, voice: voice || 'default', ...(model ? { model } : {}),
    ...(language ? { language } : {}),
    alignment: true, // measured word times, from the models that measure them (the multilingual one)
    output: { encoding: 'pcm_f32le', sample_rate: sampleRate },
    chunking: { chunk_size: chunkSize }, generation,
  };
}

export const textMessage = (contextId, text) => ({ type: 'text', context_id: contextId, text });
export const endMessage = (contextId) => ({ type: 'end', context_id: contextId });
export const cancelMessage = (contextId) => ({ type: 'cancel', context_id: contextId });

function streamUrl() {
  const url = new URL('/v1/stream', location.href);
  url.protocol = location.protocol === 'https:' ? 'wss:' : 'ws:';
  if (apiKey()) url.searchParams.set('api_key', apiKey());
  return url.href;
}

function describeClose(event) {
  if (event.code === 1008) return apiKey() ? 'the API key was refused' : 'this server needs an API key';
  if (event.code === 1006) return 'connection lost';
  return `closed ${event.code}${event.reason ? `: ${event.reason}` : ''}`;
}

export function setConnectionStatus(state, text) {
  const pill = $('connection');
  pill.dataset.state = state;
  setText(pill, text);
}

// `onEvent(message)` gets every JSON event, `onAudio(channel, samples)` every audio frame, `onDisconnected()`
// runs when the socket closes or is replaced; `demo.connected` mirrors the connection for the browser test.
export function createConnection({ demo, onEvent, onAudio, onDisconnected }) {
  function onAudioFrame(buffer) {
    demo.framesReceived += 1;
    const channel = new DataView(buffer).getUint32(0, true);
    onAudio(channel, new Float32Array(buffer, 4, (buffer.byteLength - 4) >> 2));
  }

  return {
    socket: null, opening: null,

    // Resolves once the server's `ready` event arrived; reuses an open connection.
    ensure() {
      if (this.socket?.readyState === WebSocket.OPEN && demo.connected) return Promise.resolve();
      if (this.opening) return this.opening;
      setConnectionStatus('connecting', 'Connecting…');
      const socket = new WebSocket(streamUrl());
      socket.binaryType = 'arraybuffer';
      this.socket = socket;
      const opening = new Promise((resolve, reject) => {
        socket.onmessage = (event) => {
          if (typeof event.data !== 'string') return onAudioFrame(event.data);
          const message = JSON.parse(event.data);
          if (message.type === 'ready') {
            demo.connected = true;
            setConnectionStatus('open', 'Connected');
            resolve();
          }
          onEvent(message);
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
      setConnectionStatus('closed', `Disconnected (${describeClose(event)})`);
      onDisconnected();
    },

    reconnect() {
      const previous = this.socket;
      Object.assign(this, { socket: null, opening: null });
      demo.connected = false;
      onDisconnected();
      previous?.close(1000, 'reconnect');
      return this.ensure();
    },
  };
}
