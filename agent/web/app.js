// koe browser demo: one WebSocket to `koe serve` (docs/protocol.md, version 1).
// Speech audio is scheduled back to back on an AudioContext (gapless) after a small jitter buffer;
// the mouth follows the lip-sync frames of whatever is playing right now; playback positions go
// back to the server so a barge-in keeps only what was heard. `window.koeDemo` exposes the page
// state (the end-to-end test reads it).
"use strict";

const HEADER_BYTES = 12, KIND_SPEECH = 1, KIND_MIC = 2, FLAG_LAST = 1;
const JITTER_S = 0.06;            // audio buffered before a segment starts playing
const PROGRESS_EVERY_MS = 250;
const MIC_RATE = 16000, MIC_FRAME = 320;  // 20 ms of 16 kHz PCM16
const $ = (id) => document.getElementById(id);

const demo = window.koeDemo = {
  status: "disconnected", session: null, state: null, subtitle: "", expression: null,
  framesReceived: 0, samplesScheduled: 0, maxMouth: 0, responses: [], errors: [], transcripts: [],
};

let ws = null, audio = null, rate = 48000;
let nextTime = 0;                  // AudioContext time where the next frame starts
const sources = new Set();         // scheduled AudioBufferSourceNodes (stopped on clear_audio)
const segments = new Map();        // segment id -> {text, start, end, sentMs, ended, finished}
const lips = new Map();            // "segment:seq" -> lipsync event, until its audio arrives
let mouthTimeline = [];            // {t0, frameS, volume[], vowels[]}
let mic = null;

function log(text) {
  const line = document.createElement("div");
  line.textContent = text;
  $("log").appendChild(line);
  $("log").scrollTop = 1e9;
}

function send(message) {
  if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(message));
}

function connect() {
  audio = new AudioContext({ latencyHint: "interactive" });
  rate = [16000, 22050, 24000, 32000, 44100, 48000].includes(audio.sampleRate) ? audio.sampleRate : 48000;
  demo.rate = rate;
  const url = new URL("ws", location.href);
  url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  ws = new WebSocket(url);
  ws.binaryType = "arraybuffer";
  ws.onopen = () => {
    const token = new URLSearchParams(location.search).get("token");
    send({ type: "hello", version: 1, token, audio_rate: rate, session: sessionStorage.getItem("koe-session"),
           capabilities: ["binary_audio", "playback_reports"] });
  };
  ws.onmessage = (e) => (typeof e.data === "string" ? onEvent(JSON.parse(e.data)) : onAudio(e.data));
  ws.onclose = (e) => { setStatus(`closed (${e.code} ${e.reason})`); setEnabled(false); };
}

function setStatus(text) { demo.status = text; $("status").textContent = text; }
function setEnabled(on) { for (const id of ["text", "send", "talk", "interrupt"]) $(id).disabled = !on; }

function onEvent(event) {
  switch (event.type) {
    case "ready":
      demo.session = event.session;
      sessionStorage.setItem("koe-session", event.session);
      setStatus(`connected to ${event.character.name}${event.resumed ? " (resumed)" : ""}`);
      setEnabled(true);
      break;
    case "state": demo.state = event.state; $("state").textContent = event.state; break;
    case "transcript": demo.transcripts.push(event.text); if (event.final) log(`you: ${event.text}`); break;
    case "response_start": if (event.text === null) log("(greeting)"); break;
    case "segment_start":
      segments.set(event.segment, { text: event.text, expression: event.expression, start: null, end: null,
                                     sentMs: 0, ended: false, finished: false });
      break;
    case "lipsync": lips.set(`${event.segment}:${event.seq}`, event); break;
    case "audio": onAudioFrame(event.segment, event.seq, event.last, base64ToInt16(event.data)); break;
    case "segment_end": { const s = segments.get(event.segment); if (s) s.ended = true; break; }
    case "response_end":
      demo.responses.push(event);
      log(`${event.interrupted ? "(interrupted) " : ""}koe: ${event.heard}`);
      break;
    case "clear_audio": stopPlayback(); break;
    case "error": demo.errors.push(event); log(`error ${event.code}: ${event.message}`); break;
  }
}

function base64ToInt16(data) {
  const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
  return new Int16Array(bytes.buffer);
}

function onAudio(buffer) {
  const view = new DataView(buffer);
  if (buffer.byteLength < HEADER_BYTES || view.getUint8(0) !== KIND_SPEECH) return;
  const last = (view.getUint8(1) & FLAG_LAST) !== 0;
  const segment = view.getUint32(4, true), seq = view.getUint32(8, true);
  onAudioFrame(segment, seq, last, new Int16Array(buffer.slice(HEADER_BYTES)));
}

function onAudioFrame(segment, seq, last, samples) {
  demo.framesReceived++;
  const seg = segments.get(segment);
  if (!seg || samples.length === 0) return;
  const floats = Float32Array.from(samples, (s) => s / 32768);
  const buffer = audio.createBuffer(1, floats.length, rate);
  buffer.copyToChannel(floats, 0);
  const node = audio.createBufferSource();
  node.buffer = buffer;
  node.connect(audio.destination);
  const now = audio.currentTime;
  if (nextTime < now + 0.005) nextTime = now + JITTER_S;  // starved or starting: refill the jitter buffer
  node.start(nextTime);
  sources.add(node);
  node.onended = () => sources.delete(node);
  if (seg.start === null) {
    seg.start = nextTime;
    setTimeout(() => showSubtitle(seg), Math.max(0, (nextTime - now) * 1000));
  }
  const lip = lips.get(`${segment}:${seq}`);
  if (lip) {
    lips.delete(`${segment}:${seq}`);
    mouthTimeline.push({ t0: nextTime, frameS: lip.frame_ms / 1000, volume: lip.volume, vowels: lip.vowels });
  }
  nextTime += buffer.duration;
  seg.sentMs += buffer.duration * 1000;
  seg.end = nextTime;
  demo.samplesScheduled += samples.length;
}

function showSubtitle(seg) {
  demo.subtitle = seg.text;
  demo.expression = seg.expression;
  $("subtitle").textContent = seg.text;
  $("expression").textContent = seg.expression || "-";
  $("face").className = seg.expression || "";
}

function playedMs(seg) {
  if (seg.start === null) return 0;
  return Math.round(Math.max(0, Math.min(audio.currentTime - seg.start, seg.sentMs / 1000)) * 1000);
}

function reportPlayback() {
  if (!audio) return;
  for (const [id, seg] of segments) {
    if (seg.finished || seg.start === null || audio.currentTime < seg.start) continue;
    if (seg.ended && audio.currentTime >= seg.end) {
      seg.finished = true;
      send({ type: "playback_finished", segment: id, played_ms: Math.round(seg.sentMs) });
      segments.delete(id);
    } else {
      send({ type: "playback_progress", segment: id, played_ms: playedMs(seg) });
    }
  }
}

function stopPlayback() {
  for (const node of sources) { try { node.stop(); } catch (_) { /* not started */ } }
  sources.clear();
  segments.clear();
  lips.clear();
  mouthTimeline = [];
  nextTime = 0;
  demo.subtitle = "";
  $("subtitle").textContent = "";
}

function interrupt() {
  const playing = [...segments.entries()].find(([, s]) => s.start !== null && audio.currentTime >= s.start);
  const message = { type: "interrupt" };
  if (playing) Object.assign(message, { segment: playing[0], played_ms: playedMs(playing[1]) });
  send(message);
  stopPlayback();
}

// The mouth: opening from the volume, shape from the vowel weights (A open, I wide, U/O round, E mid).
const VOWEL_SHAPE = [[1.0, 1.0], [1.3, 0.35], [0.55, 0.6], [1.15, 0.6], [0.7, 0.9]];  // [width, height]
function animate() {
  requestAnimationFrame(animate);
  if (!audio) return;
  const now = audio.currentTime;
  mouthTimeline = mouthTimeline.filter((m) => now < m.t0 + m.volume.length * m.frameS);
  let volume = 0, width = 1, height = 1;
  const m = mouthTimeline.find((m) => now >= m.t0);
  if (m) {
    const i = Math.min(m.volume.length - 1, Math.floor((now - m.t0) / m.frameS));
    volume = m.volume[i];
    const v = m.vowels[i], total = v.reduce((a, b) => a + b, 0) || 1;
    width = v.reduce((a, w, k) => a + (w / total) * VOWEL_SHAPE[k][0], 0);
    height = v.reduce((a, w, k) => a + (w / total) * VOWEL_SHAPE[k][1], 0);
  }
  demo.maxMouth = Math.max(demo.maxMouth, volume);
  $("mouth").style.height = `${0.3 + 2.5 * volume * height}rem`;
  $("mouth").style.width = `${4 * width}rem`;
}

// Microphone: 16 kHz PCM16 in 20 ms binary frames; the browser's echo cancellation keeps the
// character's own voice out, so the server's VAD hears only the user (and barges in on them).
async function toggleMic() {
  if (mic) {
    mic.stream.getTracks().forEach((t) => t.stop());
    await mic.context.close();
    mic = null;
    $("talk").textContent = "Talk (mic)";
    return;
  }
  const stream = await navigator.mediaDevices.getUserMedia({
    audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true, channelCount: 1 },
  });
  const context = new AudioContext({ sampleRate: MIC_RATE });
  await context.audioWorklet.addModule("mic-worklet.js");
  const node = new AudioWorkletNode(context, "mic-frames", { processorOptions: { frame: MIC_FRAME } });
  let seq = 0;
  node.port.onmessage = (e) => {
    if (!ws || ws.readyState !== WebSocket.OPEN) return;
    const pcm = e.data;  // Int16Array of MIC_FRAME samples
    const frame = new ArrayBuffer(HEADER_BYTES + pcm.byteLength);
    const view = new DataView(frame);
    view.setUint8(0, KIND_MIC);
    view.setUint32(8, seq++, true);
    new Int16Array(frame, HEADER_BYTES).set(pcm);
    ws.send(frame);
  };
  context.createMediaStreamSource(stream).connect(node);
  mic = { stream, context };
  $("talk").textContent = "Stop mic";
}

$("connect").onclick = () => { if (!ws || ws.readyState > WebSocket.OPEN) connect(); };
$("interrupt").onclick = interrupt;
$("talk").onclick = () => toggleMic().catch((e) => log(`microphone: ${e.message}`));
$("say").onsubmit = (e) => {
  e.preventDefault();
  const text = $("text").value.trim();
  if (!text) return;
  if (audio.state === "suspended") audio.resume();
  if (sources.size) stopPlayback();  // talking over the reply: the server cuts it too
  send({ type: "text_input", text });
  log(`you: ${text}`);
  $("text").value = "";
};
setInterval(reportPlayback, PROGRESS_EVERY_MS);
requestAnimationFrame(animate);
