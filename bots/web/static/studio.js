// The studio page: a mixer over the Web Audio API for one song's stems, no build step.
//
// Every stem is decoded whole (decodeAudioData) and played from one AudioContext clock, so
// all strips start on the same sample. Key and tempo are not done in the browser: the page
// fetches the server's renders (the sound the bot would send) and swaps them in at the same
// place in the song. Export renders the mix server-side from the same levels, key, tempo and
// loop. Positions are kept in the original song's seconds; buffers at tempo t play 100/t as long.
"use strict";

(() => {
  const KEY_RANGE = [-12, 12];
  const TEMPO_RANGE = [50, 150];
  const TEMPO_STEP = 5;
  const MIN_LOOP_S = 1; // the server's shortest section
  const POLL_MS = 1000; // while the server answers 202 (rendering)
  const POLL_TRIES = 300;
  const RENDER_DEBOUNCE_MS = 450; // a few presses of "−" make one render, not one each
  const START_AHEAD_S = 0.05; // scheduling margin so every source starts on the same frame
  const PEAK_COLUMNS = 1200;
  // A key's tonic spelt as key signatures write it, as the bots do (core/facts.py, key_name).
  const MAJOR_NAMES = ["C", "Db", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B"];
  const MINOR_NAMES = ["C", "C#", "D", "Eb", "E", "F", "F#", "G", "G#", "A", "Bb", "B"];
  const LETTERS = { C: 0, D: 2, E: 4, F: 5, G: 7, A: 9, B: 11 };
  const MINUS = "\u2212";

  const $ = (id) => document.getElementById(id);

  /** 403/410: this link cannot be used; the page then shows that and nothing else. */
  class Refused extends Error {
    constructor(status) {
      super(
        status === 410
          ? "This link has expired. Open the mixer again from the chat."
          : "This link does not work. Open the mixer again from the chat.",
      );
    }
  }

  /** Any other failure, with a message meant for the user. */
  class Failed extends Error {}

  // ---- the link: token in the path, Telegram's initData in the hash when opened as a Web App

  const token = tokenInPath();
  const initData = telegramInitData();

  /** The last part of the path, `/s/{token}`; "" when it is missing or not even percent-encoding. */
  function tokenInPath() {
    try {
      return decodeURIComponent(location.pathname.split("/").filter(Boolean).pop() || "");
    } catch (_) {
      return ""; // refused below like any link that is not one of ours
    }
  }

  function telegramInitData() {
    const fromHash = new URLSearchParams(location.hash.slice(1)).get("tgWebAppData");
    if (fromHash === null) return "";
    loadTelegramScript(); // only inside Telegram: theme colours, full height
    return fromHash;
  }

  function loadTelegramScript() {
    const script = document.createElement("script");
    script.src = "https://telegram.org/js/telegram-web-app.js";
    script.onload = () => {
      const app = window.Telegram && window.Telegram.WebApp;
      if (!app) return;
      app.ready();
      app.expand();
    };
    document.head.append(script);
  }

  async function api(path, init = {}) {
    const headers = new Headers(init.headers || {});
    if (initData) headers.set("X-Telegram-Init-Data", initData);
    let response;
    try {
      response = await fetch(`../api/${encodeURIComponent(token)}/${path}`, { ...init, headers, credentials: "omit" });
    } catch (error) {
      if (error.name === "AbortError") throw error;
      throw new Failed("The studio cannot be reached. Check the connection and try again.");
    }
    if (response.status === 403 || response.status === 410) throw new Refused(response.status);
    if (response.status === 429) throw new Failed("Too many requests: wait a moment and try again.");
    if (!response.ok) throw new Failed(await errorText(response));
    return response;
  }

  async function errorText(response) {
    try {
      const body = await response.json();
      if (body && typeof body.error === "string") return body.error;
    } catch (_) {
      // not JSON: the status says enough
    }
    return `The studio could not do that (HTTP ${response.status}). Try again.`;
  }

  const sleep = (ms, signal) =>
    new Promise((resolve, reject) => {
      const timer = setTimeout(resolve, ms);
      signal?.addEventListener("abort", () => {
        clearTimeout(timer);
        reject(new DOMException("aborted", "AbortError"));
      });
    });

  /** One stem's audio at a key and tempo, waiting (bounded) while the server renders it. */
  async function fetchStem(stem, key, tempo, signal) {
    const path = `stem/${encodeURIComponent(stem)}?key=${key}&tempo=${tempo}`;
    for (let attempt = 0; attempt < POLL_TRIES; attempt++) {
      const response = await api(path, { signal });
      if (response.status !== 202) return response.arrayBuffer();
      await sleep(POLL_MS, signal);
    }
    throw new Failed("The server is taking too long to render. Try again in a minute.");
  }

  // ---- playback: one source per stem per start, all started at the same context time

  class Player {
    constructor(context, stems) {
      this.context = context;
      this.analyser = context.createAnalyser();
      this.analyser.fftSize = 2048;
      this.analyser.connect(context.destination);
      this.channels = new Map(
        stems.map((stem) => {
          const gain = context.createGain();
          gain.connect(this.analyser);
          return [stem, { gain, buffer: null, source: null }];
        }),
      );
      this.tempo = 100; // of the buffers in hand
      this.playing = false;
      this.anchorTime = 0; // context time at which anchorOffset was playing
      this.anchorOffset = 0; // seconds into the buffers
      this.pausedAt = 0; // song seconds
      this.loop = null; // {a, b} in song seconds
      this.samples = new Float32Array(this.analyser.fftSize);
    }

    get duration() {
      let longest = 0;
      for (const { buffer } of this.channels.values()) longest = Math.max(longest, buffer ? buffer.duration : 0);
      return (longest * this.tempo) / 100;
    }

    toBuffer(songSeconds) {
      return (songSeconds * 100) / this.tempo;
    }

    position() {
      if (!this.playing) return this.pausedAt;
      let offset = this.anchorOffset + Math.max(0, this.context.currentTime - this.anchorTime);
      if (this.loop) {
        const a = this.toBuffer(this.loop.a);
        const b = this.toBuffer(this.loop.b);
        if (offset >= b) offset = a + ((offset - a) % (b - a));
      }
      return (offset * this.tempo) / 100;
    }

    setBuffers(buffers, tempo) {
      const at = this.position();
      this.stopSources();
      this.tempo = tempo;
      for (const [stem, buffer] of buffers) this.channels.get(stem).buffer = buffer;
      if (this.playing) this.startAt(at);
      else this.pausedAt = Math.min(at, this.duration);
    }

    setGains(levels) {
      const now = this.context.currentTime;
      for (const [stem, level] of Object.entries(levels)) {
        this.channels.get(stem).gain.gain.setTargetAtTime(level, now, 0.015); // no click
      }
    }

    async play() {
      await this.context.resume();
      let at = this.pausedAt;
      if (at >= this.duration - 0.01) at = 0;
      if (this.loop && (at < this.loop.a || at >= this.loop.b)) at = this.loop.a;
      this.playing = true;
      this.startAt(at);
    }

    pause() {
      this.pausedAt = this.position();
      this.playing = false;
      this.stopSources();
    }

    seek(songSeconds) {
      const at = Math.max(0, Math.min(songSeconds, this.duration));
      if (this.playing) this.startAt(this.loop && (at < this.loop.a || at >= this.loop.b) ? this.loop.a : at);
      else this.pausedAt = at;
    }

    setLoop(loop) {
      const at = this.position();
      this.loop = loop;
      if (!this.playing) return;
      this.startAt(loop && (at < loop.a || at >= loop.b) ? loop.a : at);
    }

    /** Called every frame: the end of the song stops the transport. */
    tick() {
      if (this.playing && !this.loop && this.position() >= this.duration) {
        this.pause();
        this.pausedAt = 0;
      }
    }

    /** RMS of what is playing now, 0..1. */
    level() {
      this.analyser.getFloatTimeDomainData(this.samples);
      let sum = 0;
      for (const s of this.samples) sum += s * s;
      return Math.sqrt(sum / this.samples.length);
    }

    startAt(songSeconds) {
      this.stopSources();
      const when = this.context.currentTime + START_AHEAD_S;
      const offset = this.toBuffer(songSeconds);
      for (const channel of this.channels.values()) {
        if (!channel.buffer) continue;
        const source = this.context.createBufferSource();
        source.buffer = channel.buffer;
        if (this.loop) {
          source.loop = true;
          source.loopStart = this.toBuffer(this.loop.a);
          source.loopEnd = this.toBuffer(this.loop.b);
        }
        source.connect(channel.gain);
        source.start(when, offset);
        channel.source = source;
      }
      this.anchorTime = when;
      this.anchorOffset = offset;
    }

    stopSources() {
      for (const channel of this.channels.values()) {
        if (!channel.source) continue;
        channel.source.stop();
        channel.source.disconnect();
        channel.source = null;
      }
    }
  }

  // ---- pure helpers: times, keys, tempo, levels

  function formatTime(seconds) {
    const whole = Math.max(0, seconds);
    const minutes = Math.floor(whole / 60);
    const rest = (whole - minutes * 60).toFixed(2).padStart(5, "0");
    return `${minutes}:${rest}`;
  }

  /** "75", "75.5", "1:15", "1:15.25" -> seconds; null when it is not a time. */
  function parseTime(text) {
    const match = /^\s*(?:(\d+):)?(\d+(?:\.\d+)?)\s*$/.exec(text);
    if (!match) return null;
    const seconds = Number(match[2]);
    if (match[1] !== undefined && seconds >= 60) return null;
    return Number(match[1] || 0) * 60 + seconds;
  }

  const signed = (n) => (n > 0 ? `+${n}` : n < 0 ? `${MINUS}${-n}` : "0");

  /** "E minor" shifted -2 -> "E → D (−2)"; without a known key just the semitones. */
  function keyLabel(songKey, shift) {
    const found = songKey ? /^([A-G])([#b\u266f\u266d]?)\s*(major|minor|maj|min|m)?\b/.exec(songKey) : null;
    if (!found) return shift === 0 ? "original" : `${signed(shift)} st`;
    const sharp = found[2] === "#" || found[2] === "\u266f";
    const flat = found[2] === "b" || found[2] === "\u266d";
    const spelled = found[1] + (sharp ? "#" : flat ? "b" : "");
    if (shift === 0) return spelled;
    const tonic = LETTERS[found[1]] + (sharp ? 1 : flat ? -1 : 0);
    const names = /^m(in(or)?)?$/.test(found[3] || "") ? MINOR_NAMES : MAJOR_NAMES; // a bare letter is major
    return `${spelled} → ${names[(((tonic + shift) % 12) + 12) % 12]} (${signed(shift)})`;
  }

  function tempoLabel(bpm, tempo) {
    if (!bpm) return `${tempo} %`;
    const now = (bpm * tempo) / 100;
    const text = `${Number.isInteger(now) ? now : now.toFixed(1)} BPM`;
    return tempo === 100 ? text : `${text} (${tempo} %)`;
  }

  /** What each stem is heard at: solo wins over mute; a muted or unsoloed stem is 0. */
  function effectiveLevels(strips) {
    const anySolo = strips.some((s) => s.solo);
    return Object.fromEntries(
      strips.map((s) => [s.stem, (anySolo ? s.solo : !s.muted) ? Number(s.volume.toFixed(2)) : 0]),
    );
  }

  /** min/max pairs over the song, from all stems summed to mono, scaled to the loudest. */
  function peaks(buffers, columns) {
    const lengths = buffers.map((b) => b.length);
    const length = Math.max(...lengths);
    const out = new Float32Array(columns * 2);
    const data = buffers.flatMap((b) => Array.from({ length: b.numberOfChannels }, (_, c) => b.getChannelData(c)));
    const scale = 1 / Math.max(1, Math.max(...buffers.map((b) => b.numberOfChannels)));
    for (let col = 0; col < columns; col++) {
      const from = Math.floor((col * length) / columns);
      const to = Math.max(from + 1, Math.floor(((col + 1) * length) / columns));
      let lo = 0;
      let hi = 0;
      for (let i = from; i < to && i < length; i += 4) {
        let sum = 0;
        for (const channel of data) sum += channel[i] || 0;
        sum *= scale;
        if (sum < lo) lo = sum;
        if (sum > hi) hi = sum;
      }
      out[col * 2] = lo;
      out[col * 2 + 1] = hi;
    }
    let peak = 1e-6;
    for (const v of out) peak = Math.max(peak, Math.abs(v));
    return out.map((v) => v / peak); // -1..1, drawn to the canvas's height
  }

  function filenameOf(response, fallback) {
    const header = response.headers.get("Content-Disposition") || "";
    const match = /filename="?([^";]+)"?/.exec(header);
    return match ? match[1] : fallback;
  }

  // ---- the page

  const state = {
    song: null,
    player: null,
    strips: [], // {stem, volume, muted, solo, element}
    key: 0,
    tempo: 100,
    rendering: null, // AbortController of the render being fetched
    renderTimer: 0,
    overview: null, // peaks
    marks: null, // {a, b} from the loop fields when they make a loop, on or not
    scrubbing: null, // song seconds under the finger while dragging
  };

  function showNotice(text, refusal = false) {
    const notice = $("notice");
    notice.textContent = text;
    notice.classList.toggle("refusal", refusal);
  }

  function showMessage(text, error = false) {
    const message = $("message");
    if (!message) return; // refused meanwhile: the refusal is all the page says
    message.textContent = text;
    message.classList.toggle("error", error);
  }

  /** The only thing on the page from now on: no title, no stems, no sound. */
  function refuse(error) {
    clearTimeout(state.renderTimer);
    state.rendering?.abort();
    if (state.player) {
      state.player.pause();
      state.player.context.close();
    }
    const studio = $("studio");
    studio.hidden = true;
    studio.replaceChildren();
    document.title = "stembot studio";
    showNotice(error.message, true);
    document.body.dataset.state = "refused";
  }

  /** Whatever went wrong, said once: a refusal takes the page; anything else is a message. */
  function report(error) {
    if (error instanceof Refused) refuse(error);
    else if (error.name === "AbortError") return;
    else if (error instanceof Failed) showMessage(error.message, true);
    else {
      console.error(error);
      showMessage("Something went wrong in the page. Reload to try again.", true);
    }
  }

  async function loadStems(key, tempo, signal, onEach) {
    let done = 0;
    const buffers = await Promise.all(
      state.song.stems.map(async (stem) => {
        const encoded = await fetchStem(stem, key, tempo, signal);
        const buffer = await state.player.context.decodeAudioData(encoded);
        onEach?.(++done);
        return [stem, buffer];
      }),
    );
    return new Map(buffers);
  }

  function newContext(rate) {
    const Context = window.AudioContext || window.webkitAudioContext; // older iPhones
    try {
      return new Context({ sampleRate: rate, latencyHint: "playback" });
    } catch (_) {
      return new Context({ latencyHint: "playback" }); // a rate this browser refuses: it resamples
    }
  }

  async function start() {
    document.body.dataset.state = "loading";
    if (!token) throw new Refused(403);
    const song = await (await api("song")).json();
    state.song = song;
    state.player = new Player(newContext(song.rate), song.stems);
    $("title").textContent = song.title;
    document.title = `${song.title} · stembot studio`;
    $("facts").textContent = [song.key, song.bpm ? `${Math.round(song.bpm)} BPM` : null, formatTime(song.duration_s)]
      .filter(Boolean)
      .join(" · ");
    buildStrips(song.stems);
    showNotice(`Loading stems 0/${song.stems.length}…`);
    const buffers = await loadStems(0, 100, undefined, (n) => showNotice(`Loading stems ${n}/${song.stems.length}…`));
    state.player.setBuffers(buffers, 100);
    state.overview = peaks([...buffers.values()], PEAK_COLUMNS);
    showNotice("");
    $("studio").hidden = false;
    wireControls();
    updateLevels();
    updatePitch();
    drawOverview();
    $("play").disabled = false;
    document.body.dataset.state = "ready";
    requestAnimationFrame(frame);
  }

  function buildStrips(stems) {
    const template = $("strip");
    const strips = $("strips");
    for (const stem of stems) {
      const element = template.content.firstElementChild.cloneNode(true);
      element.dataset.stem = stem;
      element.querySelector(".stem").textContent = stem;
      const strip = { stem, volume: 1, muted: false, solo: false, element };
      element.querySelector(".volume").setAttribute("aria-label", `${stem} volume`);
      element.querySelector(".mute").setAttribute("aria-label", `Mute ${stem}`);
      element.querySelector(".solo").setAttribute("aria-label", `Solo ${stem}`);
      element.querySelector(".volume").addEventListener("input", (event) => {
        strip.volume = Number(event.target.value);
        updateLevels();
      });
      element.querySelector(".mute").addEventListener("click", () => {
        strip.muted = !strip.muted;
        updateLevels();
      });
      element.querySelector(".solo").addEventListener("click", () => {
        strip.solo = !strip.solo;
        updateLevels();
      });
      state.strips.push(strip);
      strips.append(element);
    }
  }

  function updateLevels() {
    const levels = effectiveLevels(state.strips);
    state.player.setGains(levels);
    for (const strip of state.strips) {
      const el = strip.element;
      el.querySelector(".mute").setAttribute("aria-pressed", String(strip.muted));
      el.querySelector(".solo").setAttribute("aria-pressed", String(strip.solo));
      el.querySelector(".gain").textContent = `${Math.round(strip.volume * 100)} %`;
      el.classList.toggle("silent", levels[strip.stem] === 0);
    }
  }

  function updatePitch() {
    $("key").textContent = keyLabel(state.song.key, state.key);
    $("tempo").textContent = tempoLabel(state.song.bpm, state.tempo);
    $("key-down").disabled = state.key <= KEY_RANGE[0];
    $("key-up").disabled = state.key >= KEY_RANGE[1];
    $("tempo-down").disabled = state.tempo <= TEMPO_RANGE[0];
    $("tempo-up").disabled = state.tempo >= TEMPO_RANGE[1];
  }

  function changePitch(keyStep, tempoStep) {
    state.key = Math.max(KEY_RANGE[0], Math.min(KEY_RANGE[1], state.key + keyStep));
    state.tempo = Math.max(TEMPO_RANGE[0], Math.min(TEMPO_RANGE[1], state.tempo + tempoStep));
    updatePitch();
    clearTimeout(state.renderTimer);
    state.renderTimer = setTimeout(() => loadRender().catch(report), RENDER_DEBOUNCE_MS);
  }

  /** The server's render at the chosen key and tempo, swapped in where the song is now. */
  async function loadRender() {
    state.rendering?.abort();
    const controller = new AbortController();
    state.rendering = controller;
    const { key, tempo } = state;
    showMessage(`Rendering key ${signed(key)}, tempo ${tempo} %…`);
    document.body.dataset.render = "pending";
    const buffers = await loadStems(key, tempo, controller.signal);
    if (controller.signal.aborted) return;
    state.player.setBuffers(buffers, tempo);
    state.rendering = null;
    document.body.dataset.render = `${key}/${tempo}`;
    showMessage("");
  }

  /** The A-B loop from the two fields, or null (with the field marked) when it is not a loop. */
  function readLoop() {
    const a = parseTime($("loop-a").value);
    const b = parseTime($("loop-b").value);
    const duration = state.song.duration_s;
    const validA = a !== null && a < duration;
    const validB = b !== null && b <= duration + 0.05 && (a === null || b - a >= MIN_LOOP_S);
    $("loop-a").setAttribute("aria-invalid", String($("loop-a").value !== "" && !validA));
    $("loop-b").setAttribute("aria-invalid", String($("loop-b").value !== "" && !validB));
    return validA && validB ? { a, b } : null;
  }

  function updateLoop() {
    const loop = readLoop();
    state.marks = loop;
    const on = $("loop").getAttribute("aria-pressed") === "true";
    $("loop").disabled = !loop;
    if (on && !loop) $("loop").setAttribute("aria-pressed", "false");
    state.player.setLoop(on && loop ? loop : null);
    drawOverview();
  }

  function mixRequest(action) {
    const loop = state.player.loop;
    return {
      levels: effectiveLevels(state.strips),
      key: state.key,
      tempo: state.tempo,
      start_s: loop ? loop.a : null,
      end_s: loop ? loop.b : null,
      action,
    };
  }

  /** The mix's answer; a download the server is still rendering (202) is asked for again, bounded. */
  async function postMix(body) {
    const init = { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) };
    for (let attempt = 0; attempt < POLL_TRIES; attempt++) {
      const response = await api("mix", init);
      if (response.status !== 202 || body.action === "send") return response;
      await sleep(POLL_MS);
    }
    throw new Failed("The server is taking too long to render the mix. Try again in a minute.");
  }

  async function exportMix(action) {
    const buttons = [$("download"), $("send")];
    buttons.forEach((b) => (b.disabled = true));
    showMessage(action === "send" ? "Sending the mix to the chat…" : "Rendering the mix…");
    try {
      const response = await postMix(mixRequest(action));
      if (action === "send") {
        showMessage("The mix is on its way to the chat.");
        return;
      }
      const url = URL.createObjectURL(await response.blob());
      const link = document.createElement("a");
      link.href = url;
      link.download = filenameOf(response, "mix.mp3");
      document.body.append(link);
      link.click();
      link.remove();
      setTimeout(() => URL.revokeObjectURL(url), 60_000);
      showMessage("Downloaded.");
    } finally {
      buttons.forEach((b) => (b.disabled = false));
    }
  }

  function wireControls() {
    const player = state.player;
    $("play").addEventListener("click", () => {
      if (player.playing) player.pause();
      else player.play().catch(report);
    });
    $("key-down").addEventListener("click", () => changePitch(-1, 0));
    $("key-up").addEventListener("click", () => changePitch(1, 0));
    $("tempo-down").addEventListener("click", () => changePitch(0, -TEMPO_STEP));
    $("tempo-up").addEventListener("click", () => changePitch(0, TEMPO_STEP));
    $("set-a").addEventListener("click", () => {
      $("loop-a").value = formatTime(player.position());
      updateLoop();
    });
    $("set-b").addEventListener("click", () => {
      $("loop-b").value = formatTime(player.position());
      updateLoop();
    });
    $("loop-a").addEventListener("input", updateLoop);
    $("loop-b").addEventListener("input", updateLoop);
    $("loop").addEventListener("click", () => {
      const on = $("loop").getAttribute("aria-pressed") !== "true";
      $("loop").setAttribute("aria-pressed", String(on));
      updateLoop();
    });
    $("loop-clear").addEventListener("click", () => {
      $("loop-a").value = "";
      $("loop-b").value = "";
      $("loop").setAttribute("aria-pressed", "false");
      updateLoop();
    });
    $("download").addEventListener("click", () => exportMix("download").catch(report));
    $("send").addEventListener("click", () => exportMix("send").catch(report));
    wireOverview();
    window.addEventListener("resize", drawOverview);
    document.addEventListener("keydown", (event) => {
      // space plays and pauses, except where it types or presses something itself
      if (event.code !== "Space" || event.target.closest("input, button")) return;
      event.preventDefault();
      $("play").click();
    });
    updateLoop();
  }

  function wireOverview() {
    const canvas = $("overview");
    const at = (event) => {
      const box = canvas.getBoundingClientRect();
      const fraction = Math.max(0, Math.min(1, (event.clientX - box.left) / box.width));
      return fraction * state.song.duration_s;
    };
    canvas.addEventListener("pointerdown", (event) => {
      canvas.setPointerCapture(event.pointerId);
      state.scrubbing = at(event);
    });
    canvas.addEventListener("pointermove", (event) => {
      if (state.scrubbing !== null) state.scrubbing = at(event);
    });
    const release = (event) => {
      if (state.scrubbing === null) return;
      state.player.seek(at(event));
      state.scrubbing = null;
    };
    canvas.addEventListener("pointerup", release);
    canvas.addEventListener("pointercancel", () => (state.scrubbing = null));
  }

  function drawOverview() {
    const canvas = $("overview");
    if (!state.overview || canvas.clientWidth === 0) return;
    const ratio = window.devicePixelRatio || 1;
    const width = Math.round(canvas.clientWidth * ratio);
    const height = Math.round(canvas.clientHeight * ratio);
    if (canvas.width !== width || canvas.height !== height) {
      canvas.width = width;
      canvas.height = height;
    }
    const g = canvas.getContext("2d");
    const style = getComputedStyle(document.documentElement);
    const duration = state.song.duration_s;
    g.clearRect(0, 0, width, height);
    const loop = state.marks;
    if (loop) {
      g.fillStyle = style.getPropertyValue("--accent");
      g.globalAlpha = state.player.loop ? 0.35 : 0.15;
      g.fillRect((loop.a / duration) * width, 0, ((loop.b - loop.a) / duration) * width, height);
      g.globalAlpha = 1;
    }
    g.fillStyle = style.getPropertyValue("--muted");
    const columns = state.overview.length / 2;
    for (let x = 0; x < width; x++) {
      const col = Math.floor((x / width) * columns);
      const lo = state.overview[col * 2];
      const hi = state.overview[col * 2 + 1];
      const top = ((1 - hi) / 2) * height;
      g.fillRect(x, top, 1, Math.max(1, ((hi - lo) / 2) * height));
    }
    const position = state.scrubbing ?? state.player.position();
    g.fillStyle = style.getPropertyValue("--fg");
    g.fillRect(Math.round((position / duration) * width), 0, Math.max(1, ratio * 2), height);
  }

  function frame() {
    if (document.body.dataset.state !== "ready") return;
    const player = state.player;
    player.tick();
    const position = state.scrubbing ?? player.position();
    $("clock").textContent = `${formatTime(position)} / ${formatTime(state.song.duration_s)}`;
    $("play").textContent = player.playing ? "❚❚" : "▶";
    $("play").setAttribute("aria-label", player.playing ? "Pause" : "Play");
    $("level").value = Math.min(1, player.level() * 2);
    drawOverview();
    requestAnimationFrame(frame);
  }

  // For the browser tests and the curious: read-only views of the transport, and the pure helpers.
  window.studio = {
    position: () => state.player?.position() ?? 0,
    level: () => state.player?.level() ?? 0,
    playing: () => Boolean(state.player?.playing),
    mixRequest: (action) => mixRequest(action),
    helpers: { keyLabel, tempoLabel, effectiveLevels, parseTime, formatTime },
  };

  start().catch((error) => {
    if (error instanceof Refused) return refuse(error);
    if (!(error instanceof Failed)) console.error(error);
    state.player?.context.close();
    $("studio").hidden = true;
    showNotice(error instanceof Failed ? error.message : "The studio could not load this song. Reload to try again.");
    document.body.dataset.state = "failed";
  });
})();
