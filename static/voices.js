// The voice panel: list the library, upload a reference recording, record one from the microphone.

import { $, authHeaders, setText } from './dom.js';
import { encodeWav } from './wav.js';

const MAX_RECORDING_S = 30;

async function loadVoices(demo, selectId) {
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

async function uploadVoice(demo, blob, filename) {
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
    await loadVoices(demo, id);
    setText($('upload-status'), `Added voice “${name}”${id ? ` (${id})` : ''}.`);
  } catch (error) {
    setText($('upload-status'), `Upload failed: ${error.message}`);
  }
}

async function toggleRecording(recorder) {
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
  recorder.media.onstop = () => finishRecording(recorder, new Blob(parts, { type: recorder.media.mimeType }));
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
async function finishRecording(recorder, blob) {
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

// Binds the panel's controls; the returned `load()` refreshes the voice list (`demo` records whether the
// server has a library, for the browser test).
export function initVoicePanel(demo) {
  const recorder = { media: null, stream: null, startedAt: 0, timer: null, wav: null };
  $('upload-file').addEventListener('click', () => {
    const file = $('voice-file').files[0];
    if (!file) return setText($('upload-status'), 'Choose an audio file first.');
    uploadVoice(demo, file, file.name);
  });
  const canRecord = Boolean(navigator.mediaDevices?.getUserMedia && window.MediaRecorder);
  $('recording-controls').hidden = !canRecord;
  $('record').addEventListener('click', () => toggleRecording(recorder));
  $('upload-recording').addEventListener('click', () => uploadVoice(demo, recorder.wav, 'recording.wav'));
  return { load: () => loadVoices(demo) };
}
