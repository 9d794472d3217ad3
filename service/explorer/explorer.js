// ConvNet explorer: draws the served model's every layer from /features. Vanilla JS, no build.
//
// Flow: GET /models -> build the page for the chosen model -> an image (drawing, file or sample)
// is POSTed to /features/<model>?encoding=base64 (and /gradcam/<model> when the model has one)
// -> the prediction, the preprocessed input and each layer's activations are painted.

const $ = (id) => document.getElementById(id);

const state = {
  models: [], // the /models list
  model: null, // the chosen entry of it
  samples: [], // samples.json entries
  layers: [], // per layer: { row, shape, data, fig, maps, canvas, rf, min, max }
  input: null, // { shape, data } of the last response
  norm: "map", // "map" | "layer"
  body: null, // the Blob last sent
  inFlight: false,
  pending: false, // the pad changed while a request was in flight
  updates: 0,
  camClass: "", // "" = the predicted class
};

// ---------------------------------------------------------------- colour scales

function ramp(stops) {
  // 256 RGB entries interpolated linearly between equally spaced stops.
  const lut = new Uint8ClampedArray(256 * 3);
  for (let i = 0; i < 256; i++) {
    const t = (i / 255) * (stops.length - 1);
    const k = Math.min(Math.floor(t), stops.length - 2);
    const f = t - k;
    for (let ch = 0; ch < 3; ch++) {
      lut[i * 3 + ch] = stops[k][ch] + (stops[k + 1][ch] - stops[k][ch]) * f;
    }
  }
  return lut;
}

// Non-negative activations (ReLU, pooling): black -> purple -> orange -> pale yellow.
const SEQUENTIAL = ramp([[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]]);
// Signed activations (conv, batchnorm, dense): blue for negative, white at zero, red for positive.
const DIVERGING = ramp([[5, 48, 97], [67, 147, 195], [247, 247, 247], [214, 96, 77], [103, 0, 31]]);
// Grad-CAM heat: transparent blue -> red.
const HEAT = ramp([[0, 0, 140], [0, 160, 255], [80, 255, 120], [255, 220, 0], [255, 0, 0]]);

function range(data, start, stride, count) {
  let lo = Infinity;
  let hi = -Infinity;
  for (let i = 0, j = start; i < count; i++, j += stride) {
    const v = data[j];
    if (v < lo) lo = v;
    if (v > hi) hi = v;
  }
  return [lo, hi];
}

// The colour scale of one map: signed layers are centred on zero, the others start at zero.
function scale(lo, hi, signed) {
  if (signed) {
    const m = Math.max(Math.abs(lo), Math.abs(hi)) || 1;
    return { lut: DIVERGING, lo: -m, hi: m };
  }
  return { lut: SEQUENTIAL, lo: 0, hi: hi > 0 ? hi : 1 };
}

function paint(canvas, data, start, stride, count, width, sc) {
  const ctx = canvas.getContext("2d");
  const img = ctx.createImageData(width, Math.ceil(count / width));
  const k = 255 / (sc.hi - sc.lo);
  for (let i = 0, j = start; i < count; i++, j += stride) {
    const t = Math.max(0, Math.min(255, Math.round((data[j] - sc.lo) * k)));
    img.data[i * 4] = sc.lut[t * 3];
    img.data[i * 4 + 1] = sc.lut[t * 3 + 1];
    img.data[i * 4 + 2] = sc.lut[t * 3 + 2];
    img.data[i * 4 + 3] = 255;
  }
  ctx.putImageData(img, 0, 0);
}

function legend(sc) {
  const c = document.createElement("canvas");
  c.width = 256;
  c.height = 1;
  const ctx = c.getContext("2d");
  const img = ctx.createImageData(256, 1);
  for (let i = 0; i < 256; i++) {
    img.data.set([sc.lut[i * 3], sc.lut[i * 3 + 1], sc.lut[i * 3 + 2], 255], i * 4);
  }
  ctx.putImageData(img, 0, 0);
  return c;
}

const fmt = (v) => (Math.abs(v) >= 100 || v === 0 ? v.toFixed(0) : v.toPrecision(3));
const pct = (p) => `${(p * 100).toFixed(1)}%`;

// ---------------------------------------------------------------- API

async function api(path, body) {
  const init = body
    ? {
        method: "POST",
        body,
        headers: { "Content-Type": body.type.startsWith("image/") ? body.type : "application/octet-stream" },
      }
    : {};
  const res = await fetch(path, init);
  const json = await res.json().catch(() => null);
  if (!res.ok) {
    const msg = json?.error?.message ?? `${res.status} ${res.statusText}`;
    throw new Error(msg);
  }
  return json;
}

function floats(b64) {
  // base64 little-endian float32 -> Float32Array (every browser we target is little-endian).
  const bin = atob(b64);
  const bytes = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
  return new Float32Array(bytes.buffer);
}

function setStatus(text, error = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", error);
}

// ---------------------------------------------------------------- receptive fields

// For each spatial layer: per axis, the input-pixel centre of unit 0, the jump between units and
// the receptive field size, from the layer table's kernel_size / stride / padding.
function receptiveFields(model) {
  const [h, w] = model.input.shape;
  let axes = [
    { start: 0, jump: 1, size: 1, n: h },
    { start: 0, jump: 1, size: 1, n: w },
  ];
  const byName = new Map([[model.input.name ?? "image", axes]]);
  const out = [];
  for (const row of model.layers) {
    // A row sees what its inputs see (the widest, where a residual add joins two paths); a
    // table without `inputs` is a chain.
    const sources = (row.inputs ?? []).map((n) => byName.get(n)).filter(Boolean);
    if (sources.length) axes = sources.reduce((a, b) => (b[0].size > a[0].size ? b : a));
    if (row.kernel_size) {
      axes = axes.map((a, i) => {
        const k = row.kernel_size[i];
        const s = row.stride?.[i] ?? 1;
        const outN = row.output_shape[i];
        const pad = row.padding === "same" ? Math.floor(Math.max((outN - 1) * s + k - a.n, 0) / 2) : 0;
        return {
          start: a.start + ((k - 1) / 2 - pad) * a.jump,
          jump: a.jump * s,
          size: a.size + (k - 1) * a.jump,
          n: outN,
        };
      });
    }
    byName.set(row.name, axes);
    out.push(row.output_shape.length === 3 ? axes : null);
  }
  return out;
}

// The input rectangle [y0, x0, y1, x1] (inclusive, clipped) that unit (y, x) of a layer sees.
function fieldOf(axes, y, x) {
  const [ay, ax] = axes;
  const [h, w] = state.model.input.shape;
  const span = (a, i, n) => {
    const c = a.start + i * a.jump;
    return [Math.max(0, Math.ceil(c - (a.size - 1) / 2)), Math.min(n - 1, Math.floor(c + (a.size - 1) / 2))];
  };
  const [y0, y1] = span(ay, y, h);
  const [x0, x1] = span(ax, x, w);
  return [y0, x0, y1, x1];
}

// ---------------------------------------------------------------- page structure per model

function box(cls, parent, y0, x0, y1, x1, h, w) {
  const b = document.createElement("div");
  b.className = `box ${cls}`;
  Object.assign(b.style, {
    top: `${(y0 / h) * 100}%`,
    left: `${(x0 / w) * 100}%`,
    height: `${((y1 - y0 + 1) / h) * 100}%`,
    width: `${((x1 - x0 + 1) / w) * 100}%`,
  });
  Object.assign(b.dataset, { y: y0, x: x0, h: y1 - y0 + 1, w: x1 - x0 + 1 });
  parent.append(b);
  return b;
}

function clearBoxes() {
  for (const b of document.querySelectorAll(".box")) b.remove();
}

function buildLayers(model) {
  const list = $("layer-list");
  list.replaceChildren();
  const fields = receptiveFields(model);
  state.layers = model.layers.map((row, index) => {
    const shape = row.output_shape;
    const fig = document.createElement("figure");
    fig.className = `layer layer-${row.type}`;
    fig.dataset.layer = row.name;
    fig.id = `layer-${row.name}`;
    const cap = document.createElement("figcaption");
    const title = document.createElement("h3");
    // Text from the metadata goes in as text, never as HTML.
    const kind = document.createElement("span");
    kind.className = "type";
    kind.textContent = `${row.type} · ${shape.join("×")}`;
    title.append(`${row.name} `, kind);
    const details = document.createElement("span");
    details.className = "details";
    details.textContent = describe(row);
    const toggle = document.createElement("button");
    toggle.type = "button";
    toggle.className = "toggle";
    toggle.textContent = "Hide";
    toggle.setAttribute("aria-expanded", "true");
    toggle.setAttribute("aria-label", `Hide ${row.name}`);
    toggle.addEventListener("click", () => {
      const hidden = fig.classList.toggle("collapsed");
      toggle.textContent = hidden ? "Show" : "Hide";
      toggle.setAttribute("aria-expanded", String(!hidden));
      toggle.setAttribute("aria-label", `${hidden ? "Show" : "Hide"} ${row.name}`);
    });
    const leg = document.createElement("span");
    leg.className = "legend";
    const summary = document.createElement("span");
    summary.className = "summary";
    cap.append(title, details, leg, summary, toggle);
    const body = document.createElement("div");
    body.className = "body";
    fig.append(cap, body);
    list.append(fig);

    const layer = { row, index, shape, fig, body, legend: leg, summary, rf: fields[index], maps: [] };
    if (row.type === "softmax") {
      body.append(bars(model.classes, `${row.name} output`));
    } else if (shape.length === 3) {
      buildGrid(layer);
    } else {
      buildStrip(layer);
    }
    return layer;
  });
}

function describe(row) {
  const parts = [];
  if (row.filters) parts.push(`${row.filters} filters`);
  if (row.units) parts.push(`${row.units} units`);
  if (row.kernel_size) parts.push(`kernel ${row.kernel_size.join("×")}`);
  if (row.stride) parts.push(`stride ${row.stride.join("×")}`);
  if (row.padding) parts.push(`padding ${row.padding}`);
  if (row.activation) parts.push(row.activation);
  if (row.type === "add") parts.push(`adds ${row.inputs.join(" + ")} (a residual connection)`);
  if (row.type === "global_pool") parts.push("the mean of each map");
  if (row.type === "scale" && row.name === "temperature") {
    parts.push(`logits × ${fmt(row.scale)}: divided by the calibration temperature ${fmt(1 / row.scale)}`);
  }
  return parts.join(", ");
}

function buildGrid(layer) {
  const [h, w, c] = layer.shape;
  const zoom = Math.max(1, Math.round(56 / Math.max(h, w)));
  const grid = document.createElement("div");
  grid.className = "grid";
  grid.tabIndex = 0;
  grid.setAttribute("role", "group");
  grid.setAttribute(
    "aria-label",
    `${layer.row.name}: ${c} feature maps of ${h}×${w}. Arrow keys move the inspected unit, Page Up and Page Down change the map.`,
  );
  for (let ch = 0; ch < c; ch++) {
    const map = document.createElement("div");
    map.className = "map";
    map.dataset.channel = ch;
    map.style.width = `${w * zoom}px`;
    map.style.height = `${h * zoom}px`;
    const canvas = document.createElement("canvas");
    canvas.width = w;
    canvas.height = h;
    canvas.setAttribute("aria-hidden", "true");
    map.append(canvas);
    grid.append(map);
    layer.maps.push(map);
    const at = (ev) => {
      const r = canvas.getBoundingClientRect();
      const y = Math.min(h - 1, Math.max(0, Math.floor(((ev.clientY - r.top) / r.height) * h)));
      const x = Math.min(w - 1, Math.max(0, Math.floor(((ev.clientX - r.left) / r.width) * w)));
      inspect(layer, ch, y, x);
    };
    map.addEventListener("pointermove", at);
    map.addEventListener("pointerdown", at);
    map.addEventListener("pointerleave", (ev) => {
      if (ev.pointerType !== "touch") clearInspect();
    });
  }
  let cursor = { ch: 0, y: 0, x: 0 };
  grid.addEventListener("focus", () => inspect(layer, cursor.ch, cursor.y, cursor.x));
  grid.addEventListener("blur", clearInspect);
  grid.addEventListener("keydown", (ev) => {
    const moves = {
      ArrowUp: [0, -1, 0],
      ArrowDown: [0, 1, 0],
      ArrowLeft: [0, 0, -1],
      ArrowRight: [0, 0, 1],
      PageUp: [-1, 0, 0],
      PageDown: [1, 0, 0],
    };
    const m = moves[ev.key];
    if (!m) return;
    ev.preventDefault();
    cursor = {
      ch: (cursor.ch + m[0] + c) % c,
      y: Math.min(h - 1, Math.max(0, cursor.y + m[1])),
      x: Math.min(w - 1, Math.max(0, cursor.x + m[2])),
    };
    inspect(layer, cursor.ch, cursor.y, cursor.x);
  });
  layer.body.append(grid);
}

function buildStrip(layer) {
  const n = layer.shape[0];
  const cols = Math.min(n, 50);
  const wrap = document.createElement("div");
  wrap.className = "strip";
  const canvas = document.createElement("canvas");
  canvas.width = cols;
  canvas.height = Math.ceil(n / cols);
  canvas.style.aspectRatio = `${canvas.width} / ${canvas.height}`;
  canvas.style.maxWidth = `${Math.min(40, cols)}rem`;
  canvas.setAttribute("role", "img");
  canvas.setAttribute("aria-label", `${layer.row.name}: ${n} units`);
  wrap.append(canvas);
  layer.body.append(wrap);
  layer.canvas = canvas;
  canvas.addEventListener("pointermove", (ev) => {
    if (!layer.data) return;
    const r = canvas.getBoundingClientRect();
    const x = Math.floor(((ev.clientX - r.left) / r.width) * canvas.width);
    const y = Math.floor(((ev.clientY - r.top) / r.height) * canvas.height);
    const i = y * cols + x;
    if (i >= 0 && i < n) $("readout").textContent = `${layer.row.name} unit ${i}: ${fmt(layer.data[i])}`;
  });
}

function bars(classes, label) {
  const ol = document.createElement("ol");
  ol.className = "bars";
  ol.setAttribute("aria-label", label);
  const span = (name, text = "") => Object.assign(document.createElement("span"), { className: name, textContent: text });
  for (const cls of classes) {
    const li = document.createElement("li");
    li.dataset.class = cls;
    const track = span("track");
    track.append(span("fill"));
    li.append(span("label"), track, span("pct", "–"));
    li.querySelector(".label").textContent = cls;
    li.querySelector(".track").setAttribute("aria-hidden", "true");
    ol.append(li);
  }
  return ol;
}

function fillBars(ol, probabilities) {
  const top = Object.entries(probabilities).reduce((a, b) => (b[1] > a[1] ? b : a))[0];
  for (const li of ol.children) {
    const p = probabilities[li.dataset.class] ?? 0;
    li.dataset.p = p;
    li.classList.toggle("top", li.dataset.class === top);
    li.querySelector(".fill").style.width = `${p * 100}%`;
    li.querySelector(".pct").textContent = pct(p);
  }
}

// ---------------------------------------------------------------- hover / tap

function inspect(layer, ch, y, x) {
  if (!layer.data) return;
  clearBoxes();
  const [h, w, c] = layer.shape;
  box("cursor", layer.maps[ch], y, x, y, x, h, w);
  let text = `${layer.row.name}, map ${ch}, row ${y}, column ${x}: ${fmt(layer.data[(y * w + x) * c + ch])}`;

  const [y0, x0, y1, x1] = fieldOf(layer.rf, y, x);
  const [ih, iw] = state.model.input.shape;
  box("rf", $("input-fig").querySelector(".map"), y0, x0, y1, x1, ih, iw);
  text += `; sees input rows ${y0}–${y1}, columns ${x0}–${x1}`;

  const source = layer.row.inputs?.[0];
  const prev = source ? state.layers.find((l) => l.row.name === source) : state.layers[layer.index - 1];
  if (layer.row.type === "pool" && prev?.shape.length === 3) {
    const [ph, pw, pc] = prev.shape;
    const [kh, kw] = layer.row.kernel_size;
    const [sh, sw] = layer.row.stride ?? layer.row.kernel_size;
    const wy0 = y * sh;
    const wx0 = x * sw;
    const wy1 = Math.min(ph - 1, wy0 + kh - 1);
    const wx1 = Math.min(pw - 1, wx0 + kw - 1);
    box("window", prev.maps[ch], wy0, wx0, wy1, wx1, ph, pw);
    let best = [wy0, wx0];
    for (let yy = wy0; yy <= wy1; yy++) {
      for (let xx = wx0; xx <= wx1; xx++) {
        if (prev.data[(yy * pw + xx) * pc + ch] > prev.data[(best[0] * pw + best[1]) * pc + ch]) best = [yy, xx];
      }
    }
    box("max", prev.maps[ch], best[0], best[1], best[0], best[1], ph, pw);
    text += `; pooled from ${prev.row.name} rows ${wy0}–${wy1}, columns ${wx0}–${wx1}, max at row ${best[0]}, column ${best[1]}`;
  }
  $("readout").textContent = text;
}

function clearInspect() {
  clearBoxes();
  $("readout").textContent = "";
}

// ---------------------------------------------------------------- rendering a response

function showInput(input) {
  const [h, w, c] = input.shape;
  const canvas = $("input");
  canvas.width = w;
  canvas.height = h;
  const { scale: s = 1, offset = 0 } = state.model.preprocessing ?? {};
  const data = floats(input.data);
  const ctx = canvas.getContext("2d");
  const img = ctx.createImageData(w, h);
  for (let i = 0; i < h * w; i++) {
    for (let k = 0; k < 3; k++) img.data[i * 4 + k] = (data[i * c + (c === 3 ? k : 0)] - offset) / s;
    img.data[i * 4 + 3] = 255;
  }
  ctx.putImageData(img, 0, 0);
  state.input = { shape: input.shape, canvas };
}

function paintLayers() {
  for (const layer of state.layers) {
    if (!layer.data || layer.row.type === "softmax") continue;
    const { data, shape } = layer;
    const [lo, hi] = range(data, 0, 1, data.length);
    const signed = lo < 0;
    const layerScale = scale(lo, hi, signed);
    let mode = "per layer";
    if (shape.length === 3) {
      const [h, w, c] = shape;
      let strongest = 0;
      let strongestMax = -Infinity;
      for (let ch = 0; ch < c; ch++) {
        const [mlo, mhi] = range(data, ch, c, h * w);
        const sc = state.norm === "map" ? scale(mlo, mhi, signed) : layerScale;
        paint(layer.maps[ch].querySelector("canvas"), data, ch, c, h * w, w, sc);
        layer.maps[ch].title = `map ${ch}: ${fmt(mlo)} to ${fmt(mhi)}`;
        if (mhi > strongestMax) [strongest, strongestMax] = [ch, mhi];
      }
      if (state.norm === "map") mode = "per map";
      layer.summary.textContent = `strongest: map ${strongest} (${fmt(strongestMax)})`;
    } else {
      paint(layer.canvas, data, 0, 1, data.length, layer.canvas.width, layerScale);
      let top = 0;
      for (let i = 1; i < data.length; i++) if (data[i] > data[top]) top = i;
      layer.summary.textContent = `strongest: unit ${top} (${fmt(data[top])})`;
    }
    const bar = legend(layerScale);
    bar.setAttribute("aria-hidden", "true");
    const lab = (t) => Object.assign(document.createElement("span"), { textContent: t });
    layer.legend.replaceChildren(
      lab(fmt(layerScale.lo)),
      bar,
      lab(fmt(layerScale.hi)),
      lab(`(values ${fmt(lo)} to ${fmt(hi)}; colours ${mode}${signed ? ", white = 0" : ""})`),
    );
  }
}

function showFeatures(res) {
  const { prediction } = res;
  fillBars($("bars"), prediction.probabilities);
  const ranked = Object.entries(prediction.probabilities).sort((a, b) => b[1] - a[1]);
  const others = ranked.slice(1, 3).map(([k, p]) => `${k} ${pct(p)}`).join(", ");
  const doubt = prediction.uncertain ? " Uncertain: the model does not know this image well." : "";
  $("summary").textContent = `Prediction: ${prediction.label} (${pct(prediction.confidence)}). Next: ${others}.${doubt}`;
  showInput(res.input);
  const [h, w] = res.input.shape;
  $("input").setAttribute(
    "aria-label",
    `Preprocessed ${h}×${w} input; the model predicts ${prediction.label} with ${pct(prediction.confidence)}`,
  );
  $("input-cap").textContent = `The ${h}×${w} input as the model sees it. Top classes: ${ranked
    .slice(0, 3)
    .map(([k, p]) => `${k} ${pct(p)}`)
    .join(", ")}.`;

  const byName = new Map(res.layers.map((l) => [l.name, l]));
  for (const layer of state.layers) {
    const got = byName.get(layer.row.name);
    layer.data = got ? floats(got.data) : null;
    if (got) layer.shape = got.shape;
    if (layer.row.type === "softmax") {
      fillBars(layer.body.querySelector(".bars"), prediction.probabilities);
      layer.summary.textContent = `${prediction.label}: ${pct(prediction.confidence)}`;
    }
  }
  clearInspect();
  paintLayers();
}

function showGradcam(res) {
  const [h, w] = res.heatmap.shape;
  const heat = floats(res.heatmap.data);
  const small = document.createElement("canvas");
  small.width = w;
  small.height = h;
  const sctx = small.getContext("2d");
  const img = sctx.createImageData(w, h);
  for (let i = 0; i < h * w; i++) {
    // Colour and opacity both grow with the heat: cold regions leave the picture visible.
    const t = Math.max(0, Math.min(255, Math.round(heat[i] * 255)));
    img.data.set([HEAT[t * 3], HEAT[t * 3 + 1], HEAT[t * 3 + 2], 40 + 0.7 * t], i * 4);
  }
  sctx.putImageData(img, 0, 0);
  const canvas = $("gradcam");
  const ctx = canvas.getContext("2d");
  ctx.imageSmoothingEnabled = false;
  ctx.globalAlpha = 1;
  ctx.drawImage(state.input.canvas, 0, 0, canvas.width, canvas.height);
  ctx.imageSmoothingEnabled = true;
  ctx.drawImage(small, 0, 0, canvas.width, canvas.height);
  let peak = 0;
  for (let i = 1; i < heat.length; i++) if (heat[i] > heat[peak]) peak = i;
  const where = `${["top", "middle", "bottom"][Math.min(2, Math.floor((Math.floor(peak / w) / h) * 3))]} ${
    ["left", "centre", "right"][Math.min(2, Math.floor(((peak % w) / w) * 3))]
  }`;
  const text =
    heat[peak] > 0
      ? `Grad-CAM for class “${res.class}” at layer ${res.layer}: the warmer and more opaque the colour, the more that region raised the class's score (most at the ${where}).`
      : `Grad-CAM for class “${res.class}” at layer ${res.layer}: no region raised the class's score.`;
  $("gradcam-cap").textContent = text;
  canvas.setAttribute("role", "img");
  canvas.setAttribute("aria-label", text);
  $("gradcam-fig").dataset.class = res.class;
  $("gradcam-fig").hidden = false;
}

// ---------------------------------------------------------------- sending images

async function send(blob) {
  state.body = blob;
  if (state.inFlight) {
    state.pending = true;
    return;
  }
  state.inFlight = true;
  document.body.dataset.state = "busy";
  const model = state.model;
  try {
    const q = new URLSearchParams({ encoding: "base64" });
    const wantCam = Boolean(model.signatures?.gradcam);
    const camQ = new URLSearchParams({ encoding: "base64" });
    if (state.camClass) camQ.set("class", state.camClass);
    const [features, cam] = await Promise.all([
      api(`/features/${encodeURIComponent(model.name)}?${q}`, blob),
      wantCam ? api(`/gradcam/${encodeURIComponent(model.name)}?${camQ}`, blob) : null,
    ]);
    if (model === state.model) {
      showFeatures(features);
      if (cam) showGradcam(cam);
      state.updates += 1;
      document.body.dataset.updates = state.updates;
      setStatus(`Classified as ${features.prediction.label}.`);
    }
  } catch (err) {
    setStatus(`Could not classify the image: ${err.message}`, true);
  } finally {
    state.inFlight = false;
    if (state.pending && state.body) {
      state.pending = false;
      const next = state.body;
      if (next === padBlobMarker) padSend();
      else send(next);
    } else {
      document.body.dataset.state = "ready";
    }
  }
}

// The pad is re-encoded lazily: while a request is in flight only a marker is remembered.
const padBlobMarker = new Blob([]);

function padSend() {
  if (state.inFlight) {
    state.body = padBlobMarker;
    state.pending = true;
    return;
  }
  document.body.dataset.state = "busy";
  $("pad").toBlob((blob) => (blob ? send(blob) : (document.body.dataset.state = "ready")), "image/png");
}

// ---------------------------------------------------------------- drawing pad

function setupPad() {
  const pad = $("pad");
  const ctx = pad.getContext("2d");
  let drawing = false;
  let last = null;
  const clear = () => {
    ctx.fillStyle = "#000";
    ctx.fillRect(0, 0, pad.width, pad.height);
  };
  clear();
  const point = (ev) => {
    const r = pad.getBoundingClientRect();
    return [((ev.clientX - r.left) / r.width) * pad.width, ((ev.clientY - r.top) / r.height) * pad.height];
  };
  const stroke = (to) => {
    ctx.strokeStyle = "#fff";
    ctx.lineWidth = pad.width / 12;
    ctx.lineCap = "round";
    ctx.lineJoin = "round";
    ctx.beginPath();
    ctx.moveTo(...(last ?? to));
    ctx.lineTo(...to);
    ctx.stroke();
    last = to;
  };
  let timer = null;
  const live = () => {
    // While drawing: at most one request in flight, and no more than ~8 a second.
    if (timer) return;
    document.body.dataset.state = "busy";
    timer = setTimeout(() => {
      timer = null;
      padSend();
    }, 120);
  };
  pad.addEventListener("pointerdown", (ev) => {
    ev.preventDefault();
    pad.setPointerCapture(ev.pointerId);
    if (pad.dataset.source && pad.dataset.source !== "drawing") clear();
    pad.dataset.source = "drawing";
    drawing = true;
    last = null;
    stroke(point(ev));
    live();
  });
  pad.addEventListener("pointermove", (ev) => {
    if (!drawing) return;
    for (const e of ev.getCoalescedEvents?.() ?? [ev]) stroke(point(e));
    live();
  });
  const end = () => {
    if (!drawing) return;
    drawing = false;
    last = null;
    clearTimeout(timer);
    timer = null;
    padSend();
  };
  pad.addEventListener("pointerup", end);
  pad.addEventListener("pointercancel", end);
  $("clear").addEventListener("click", () => {
    clear();
    delete pad.dataset.source;
    setStatus("Cleared.");
  });
  return { clear, ctx };
}

// Show a chosen image on the pad (fitted), and send its original bytes.
async function useImage(blob, label) {
  const pad = $("pad");
  const ctx = pad.getContext("2d");
  ctx.fillStyle = "#000";
  ctx.fillRect(0, 0, pad.width, pad.height);
  try {
    const bmp = await createImageBitmap(blob);
    const k = Math.min(pad.width / bmp.width, pad.height / bmp.height);
    const [dw, dh] = [bmp.width * k, bmp.height * k];
    ctx.imageSmoothingEnabled = k < 1;
    ctx.drawImage(bmp, (pad.width - dw) / 2, (pad.height - dh) / 2, dw, dh);
  } catch {
    // A format this browser cannot draw (HEIC, say) is still sent: the service decodes it.
  }
  pad.dataset.source = "image";
  setStatus(`Classifying ${label}…`);
  send(blob);
}

function setupInputs() {
  $("file").addEventListener("change", () => {
    const file = $("file").files[0];
    if (file) useImage(file, file.name);
  });
  const drop = $("drop");
  drop.addEventListener("dragover", (ev) => {
    ev.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (ev) => {
    ev.preventDefault();
    drop.classList.remove("over");
    const file = ev.dataTransfer.files[0];
    if (file) useImage(file, file.name);
  });
  for (const radio of document.querySelectorAll('input[name="norm"]')) {
    radio.addEventListener("change", () => {
      state.norm = radio.value;
      paintLayers();
    });
  }
  $("model").addEventListener("change", () => selectModel($("model").value));
  $("cam-class").addEventListener("change", () => {
    state.camClass = $("cam-class").value;
    if (state.body) state.body === padBlobMarker ? padSend() : send(state.body);
  });
}

function showSamples() {
  const list = $("sample-list");
  list.replaceChildren();
  const mine = state.samples.filter((s) => s.model === state.model.name);
  for (const s of mine.length ? mine : state.samples) {
    const b = document.createElement("button");
    b.type = "button";
    b.dataset.file = s.file;
    const label = `sample ${s.label} (${s.source})`;
    b.setAttribute("aria-label", `Classify ${label}`);
    b.title = label;
    const img = document.createElement("img");
    img.src = `/explorer/samples/${s.file}`;
    img.alt = "";
    b.append(img);
    b.addEventListener("click", async () => {
      const res = await fetch(img.src);
      useImage(await res.blob(), label);
    });
    list.append(b);
  }
  $("samples").hidden = list.children.length === 0;
}

function selectModel(name) {
  const model = state.models.find((m) => m.name === name) ?? state.models[0];
  state.model = model;
  state.camClass = "";
  // What was drawn for the previous model is not sent again when its request returns.
  state.body = null;
  state.pending = false;
  $("model").value = model.name;
  const digits = model.preprocessing?.resize === "mnist_digit";
  $("model-desc").textContent = model.description ?? `Classes: ${model.classes.join(", ")}.`;
  $("pad-hint").textContent = digits
    ? "Draw a digit here, or drop an image file on the pad."
    : "Drop or choose a photo (you can also draw here).";
  const bl = $("bars");
  bl.replaceWith(Object.assign(bars(model.classes, "Class probabilities"), { id: "bars" }));
  $("bars").setAttribute("aria-describedby", "summary");
  $("summary").textContent = "Nothing classified yet.";
  $("gradcam-fig").hidden = true;
  const cam = $("cam-class");
  cam.replaceChildren(new Option("the predicted class", ""), ...model.classes.map((c) => new Option(c, c)));
  buildLayers(model);
  showSamples();
  const padCtx = $("pad").getContext("2d");
  padCtx.fillStyle = "#000";
  padCtx.fillRect(0, 0, $("pad").width, $("pad").height);
  delete $("pad").dataset.source;
  const url = new URL(location.href);
  url.searchParams.set("model", model.name);
  history.replaceState(null, "", url);
  document.body.dataset.model = model.name;
  setStatus(`Model ${model.name} v${model.version}: ${model.layers.length} layers.`);
}

async function main() {
  setupPad();
  setupInputs();
  try {
    const [models, samples] = await Promise.all([
      api("/models"),
      fetch("/explorer/samples/samples.json").then((r) => (r.ok ? r.json() : { samples: [] })),
    ]);
    state.models = models.models;
    state.samples = samples.samples;
  } catch (err) {
    setStatus(`Could not load the models: ${err.message}. Reload when the service is ready.`, true);
    document.body.dataset.state = "error";
    return;
  }
  if (state.models.length === 0) {
    setStatus("The service serves no models.", true);
    document.body.dataset.state = "error";
    return;
  }
  const select = $("model");
  select.replaceChildren(...state.models.map((m) => new Option(`${m.name} (v${m.version})`, m.name)));
  select.disabled = false;
  selectModel(new URLSearchParams(location.search).get("model") ?? state.models[0]?.name);
  document.body.dataset.state = "ready";
}

main();
