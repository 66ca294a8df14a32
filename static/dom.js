// DOM and formatting helpers shared by the demo's modules (no state of their own).

export const $ = (id) => document.getElementById(id);

export function apiKey() {
  return $('api-key').value.trim();
}

export function authHeaders() {
  return apiKey() ? { 'X-API-Key': apiKey() } : {};
}

export function announce(message) {
  $('status-line').textContent = message;
}

export function setText(element, text) {
  if (element.textContent !== text) element.textContent = text; // unchanged text is not re-announced
}

export function formatMs(ms) {
  return ms == null ? '—' : `${Math.round(ms)} ms`;
}

export function formatSeconds(samples, rate) {
  return `${(samples / rate).toFixed(2)} s`;
}
