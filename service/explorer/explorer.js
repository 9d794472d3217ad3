// ConvNet explorer: draws the served model's every layer from /features. Vanilla JS, no build.
//
// Flow: GET /models -> build the page for the chosen model -> an image (drawing, file or sample)
// is POSTed to /features/<model>?encoding=base64 (and /gradcam/<model> when the model has one)
// -> the prediction, the preprocessed input and each layer's activations are painted.

import { convUnit, denseUnit, softmaxSteps, strongestInputs } from "./arithmetic.js";

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
  inputData: null, // the preprocessed input's floats, (h, w, c)
  prediction: null, // the last response's prediction
  weights: null, // { model, layers: Map(name -> { kernel, bias, scale, offset }) } of /weights
  weightsLoading: null, // the model whose weights are being fetched
  selected: null, // the unit whose arithmetic is shown: { layer, ch, y, x } or { layer, unit }
  wiringClass: null, // the class whose connections the wiring view draws (null: the predicted)
  snapshots: null, // GET /models/<name>/snapshots of the chosen model
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
    map.addEventListener("pointerdown", (ev) => {
      at(ev);
      const r = canvas.getBoundingClientRect();
      const y = Math.min(h - 1, Math.max(0, Math.floor(((ev.clientY - r.top) / r.height) * h)));
      const x = Math.min(w - 1, Math.max(0, Math.floor(((ev.clientX - r.left) / r.width) * w)));
      cursor = { ch, y, x };
      select({ layer, ch, y, x });
    });
    map.addEventListener("pointerleave", (ev) => {
      // While the keyboard moves the cursor, a layout shift (the arithmetic panel growing)
      // moves maps under a resting mouse: that leave must not erase the keyboard's cursor.
      if (ev.pointerType !== "touch" && !document.activeElement?.classList.contains("grid")) {
        clearInspect();
      }
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
    select({ layer, ...cursor });
  });
  if (layer.row.type === "conv") buildFilters(layer, zoom);
  layer.body.append(grid);
}

// One tile per filter, above the map it makes: the kernel summed over its input channels.
function buildFilters(layer, zoom) {
  const [, w, c] = layer.shape;
  const [kh, kw] = layer.row.kernel_size;
  const wrap = document.createElement("div");
  wrap.className = "filters";
  wrap.setAttribute("role", "img");
  wrap.setAttribute("aria-label", `${layer.row.name}'s ${c} filters (${kh}×${kw}): loading`);
  layer.filters = [];
  for (let ch = 0; ch < c; ch++) {
    const canvas = document.createElement("canvas");
    canvas.className = "filter";
    canvas.width = kw;
    canvas.height = kh;
    canvas.style.width = `${w * zoom}px`;
    canvas.style.height = `${Math.round((w * zoom * kh) / kw)}px`;
    canvas.dataset.channel = ch;
    wrap.append(canvas);
    layer.filters.push(canvas);
  }
  layer.filterWrap = wrap;
  layer.body.append(wrap);
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
  canvas.setAttribute(
    "aria-label",
    `${layer.row.name}: ${n} units. Click or tap a unit, or use the arrow keys, to see how it is computed.`,
  );
  canvas.tabIndex = 0;
  wrap.append(canvas);
  layer.body.append(wrap);
  layer.canvas = canvas;
  const unitAt = (ev) => {
    const r = canvas.getBoundingClientRect();
    const x = Math.floor(((ev.clientX - r.left) / r.width) * canvas.width);
    const y = Math.floor(((ev.clientY - r.top) / r.height) * canvas.height);
    const i = y * cols + x;
    return i >= 0 && i < n ? i : null;
  };
  canvas.addEventListener("pointermove", (ev) => {
    const i = unitAt(ev);
    if (layer.data && i !== null) $("readout").textContent = `${layer.row.name} unit ${i}: ${fmt(layer.data[i])}`;
  });
  canvas.addEventListener("pointerdown", (ev) => {
    const i = unitAt(ev);
    if (i !== null) select({ layer, unit: i });
  });
  canvas.addEventListener("keydown", (ev) => {
    const step = { ArrowLeft: -1, ArrowRight: 1, ArrowUp: -cols, ArrowDown: cols }[ev.key];
    if (step === undefined) return;
    ev.preventDefault();
    const at = state.selected?.layer === layer ? state.selected.unit : -step;
    select({ layer, unit: Math.min(n - 1, Math.max(0, at + step)) });
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

// ---------------------------------------------------------------- weights and filters

async function loadWeights(model) {
  if (state.weights?.model === model.name || state.weightsLoading === model.name) return;
  state.weightsLoading = model.name;
  try {
    const res = await api(`/models/${encodeURIComponent(model.name)}/weights?encoding=base64`);
    if (model !== state.model) return;
    const arr = (t) => (t ? floats(t.data) : null);
    const layers = new Map(
      res.layers.map((l) => [
        l.name,
        { kernel: arr(l.kernel), bias: arr(l.bias), scale: arr(l.scale), offset: arr(l.offset) },
      ]),
    );
    state.weights = { model: model.name, layers };
    paintFilters();
    showWiring();
    if (state.selected) select(state.selected);
    document.body.dataset.weights = model.name;
  } catch (err) {
    setStatus(`Could not load the weights: ${err.message}`, true);
  } finally {
    if (state.weightsLoading === model.name) state.weightsLoading = null;
  }
}

function weightsOf(name) {
  return state.weights?.model === state.model.name ? state.weights.layers.get(name) : undefined;
}

function paintFilters() {
  for (const layer of state.layers) {
    const wts = weightsOf(layer.row.name);
    if (!layer.filters || !wts) continue;
    const [kh, kw] = layer.row.kernel_size;
    const cout = layer.row.output_shape[2];
    const cin = wts.kernel.length / (kh * kw * cout);
    const tiles = layer.filters.map((_, o) => {
      const t = new Float32Array(kh * kw);
      for (let k = 0; k < kh * kw; k++) {
        for (let c = 0; c < cin; c++) t[k] += wts.kernel[(k * cin + c) * cout + o];
      }
      return t;
    });
    let m = 0;
    for (const t of tiles) for (const v of t) m = Math.max(m, Math.abs(v));
    const sc = { lut: DIVERGING, lo: -(m || 1), hi: m || 1 };
    tiles.forEach((t, o) => {
      paint(layer.filters[o], t, 0, 1, t.length, kw, sc);
      layer.filters[o].title = `filter ${o}`;
    });
    const summed = cin > 1 ? `, each summed over its ${cin} input channels` : "";
    const text = `${layer.row.name}'s ${cout} filters (${kh}×${kw})${summed}, above the maps they make: blue negative, white 0, red positive (±${fmt(m)})`;
    layer.filterWrap.setAttribute("aria-label", text);
    layer.filterWrap.title = text;
  }
}

// ---------------------------------------------------------------- the arithmetic at a unit

function activationOf(name) {
  if (name === "image" || name === state.model.input.name) {
    return state.inputData ? { data: state.inputData, shape: state.model.input.shape } : null;
  }
  const layer = state.layers.find((l) => l.row.name === name);
  return layer?.data ? { data: layer.data, shape: layer.shape } : null;
}

const el = (tag, cls, text) => {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
};

// A small table of numbers, kh x kw, each cell coloured by sign when `signed`.
function numbers(values, rows, cols, caption, signed = false) {
  const fig = el("figure", "nums");
  const table = el("table");
  for (let i = 0; i < rows; i++) {
    const tr = el("tr");
    for (let j = 0; j < cols; j++) {
      const v = values[i * cols + j];
      const td = el("td", signed && v !== 0 ? (v > 0 ? "pos" : "neg") : "", fmt(v));
      tr.append(td);
    }
    table.append(tr);
  }
  fig.append(table, el("figcaption", "", caption));
  return fig;
}

function eq(text) {
  return el("p", "eq", text);
}

// The arithmetic of the selected unit, in a panel under its layer.
function select(sel) {
  state.selected = sel;
  const { layer } = sel;
  let panel = $("arith");
  if (!panel) {
    panel = el("section", "arith");
    panel.id = "arith";
    panel.setAttribute("aria-live", "polite");
    panel.setAttribute("aria-label", "How the selected unit is computed");
  }
  if (panel.parentElement !== layer.fig) layer.fig.append(panel);
  const row = layer.row;
  const spatial = layer.shape.length === 3;
  const [h, w, c] = spatial ? layer.shape : [1, 1, 1];
  const index = spatial ? (sel.y * w + sel.x) * c + sel.ch : sel.unit;
  const where = spatial ? `map ${sel.ch}, row ${sel.y}, column ${sel.x}` : `unit ${sel.unit}`;
  const served = layer.data ? layer.data[index] : null;
  panel.replaceChildren(el("h4", "", `${row.name} (${row.type}), ${where}`));
  Object.assign(panel.dataset, { layer: row.name, index, kind: "none" });
  delete panel.dataset.result;
  delete panel.dataset.activation;
  if (served === null) {
    panel.append(eq("Classify an image first."));
    return;
  }
  const src = (row.inputs ?? [])[0] ?? state.layers[layer.index - 1]?.row.name ?? "image";
  const input = activationOf(src);
  const wts = weightsOf(row.name);
  let result = null;
  let kind = row.type;
  const needWeights = ["conv", "dense", "batchnorm"].includes(row.type);
  if (needWeights && !wts) {
    panel.append(eq("Loading this layer's weights…"));
    loadWeights(state.model);
    return;
  }
  if (row.type === "conv") {
    const a = convUnit(row, input, wts.kernel, wts.bias, sel.y, sel.x, sel.ch);
    const ranked = [...a.channels].sort((p, q) => Math.abs(q.partial) - Math.abs(p.partial));
    const shown = ranked.slice(0, 3);
    panel.append(
      eq(
        `The ${a.rows}×${a.cols} patch of ${src} at rows ${a.origin[0]}–${a.origin[0] + a.rows - 1}, columns ${
          a.origin[1]
        }–${a.origin[1] + a.cols - 1}${row.padding === "same" ? " (outside the picture counts as 0)" : ""}, times filter ${sel.ch}, element by element, summed${
          a.channels.length > 1 ? " over every input channel" : ""
        }:`,
      ),
    );
    for (const ch of shown) {
      const group = el("div", "channel");
      const label = a.channels.length > 1 ? ` (input channel ${ch.channel})` : "";
      group.append(
        numbers(ch.patch, a.rows, a.cols, `input patch${label}`),
        el("span", "op", "×"),
        numbers(ch.weights, a.rows, a.cols, `kernel${label}`, true),
        el("span", "op", "="),
        numbers(ch.products, a.rows, a.cols, `products, sum ${fmt(ch.partial)}`, true),
      );
      panel.append(group);
    }
    if (a.channels.length > shown.length) {
      const rest = a.sum - shown.reduce((t, ch) => t + ch.partial, 0);
      panel.append(
        eq(`…and ${a.channels.length - shown.length} more input channels, whose products sum to ${fmt(rest)} (the 3 largest shown).`),
      );
    }
    panel.append(
      eq(`sum of products = ${fmt(a.sum)}`),
      eq(a.hasBias ? `+ bias ${fmt(a.bias)}` : "+ no bias (the batch norm after this layer adds the offset)"),
      eq(`= ${fmt(a.result)}`),
    );
    result = a.result;
  } else if (row.type === "dense") {
    const a = denseUnit(row, { data: input.data }, wts.kernel, wts.bias, sel.unit);
    panel.append(eq(`Each of the ${a.count} values of ${src} times its weight to this unit; the ${a.shown.length} largest products:`));
    const table = el("table", "terms");
    const head = el("tr");
    head.append(el("th", "", `${src} unit`), el("th", "", "value"), el("th", "", "× weight"), el("th", "", "= product"));
    table.append(head);
    for (const t of a.shown) {
      const tr = el("tr");
      tr.append(el("td", "", String(t.index)), el("td", "", fmt(t.input)), el("td", "", fmt(t.weight)),
        el("td", t.product >= 0 ? "pos" : "neg", fmt(t.product)));
      table.append(tr);
    }
    panel.append(
      table,
      eq(`these ${a.shown.length} sum to ${fmt(a.shownSum)}; all ${a.count} products sum to ${fmt(a.sum)}`),
      eq(a.hasBias ? `+ bias ${fmt(a.bias)} = ${fmt(a.pre)}` : `no bias: ${fmt(a.pre)}`),
    );
    if (a.relu) panel.append(eq(`ReLU: max(0, ${fmt(a.pre)}) = ${fmt(a.result)}`));
    result = a.result;
  } else if (row.type === "relu") {
    const x = input.data[index];
    panel.append(eq(`ReLU: max(0, ${src} ${fmt(x)}) = ${fmt(Math.max(0, x))}`));
    result = Math.max(0, x);
  } else if (row.type === "batchnorm") {
    const x = input.data[index];
    result = x * wts.scale[sel.ch] + wts.offset[sel.ch];
    panel.append(
      eq(`Batch norm at inference, per channel: ${src} ${fmt(x)} × scale ${fmt(wts.scale[sel.ch])} + offset ${fmt(wts.offset[sel.ch])} = ${fmt(result)}`),
      eq("(scale = γ / √(variance + ε) and offset = β − mean × scale, from training's statistics.)"),
    );
  } else if (row.type === "add") {
    const values = row.inputs.map((n) => activationOf(n).data[index]);
    result = values.reduce((a, b) => a + b, 0);
    panel.append(eq(`Residual addition: ${row.inputs.map((n, i) => `${n} ${fmt(values[i])}`).join(" + ")} = ${fmt(result)}`));
  } else if (row.type === "pool") {
    const [ih, iw, ic] = input.shape;
    const [kh, kw] = row.kernel_size;
    const [sh, sw] = row.stride ?? row.kernel_size;
    const win = [];
    for (let i = 0; i < kh; i++) {
      for (let j = 0; j < kw; j++) {
        const yy = Math.min(ih - 1, sel.y * sh + i);
        const xx = Math.min(iw - 1, sel.x * sw + j);
        win.push(input.data[(yy * iw + xx) * ic + sel.ch]);
      }
    }
    result = Math.max(...win);
    panel.append(
      el("div", "channel").appendChild(numbers(win, kh, kw, `${src}'s ${kh}×${kw} window`)).parentElement,
      eq(`max = ${fmt(result)}`),
    );
  } else if (row.type === "global_pool") {
    const [ih, iw, ic] = input.shape;
    let sum = 0;
    for (let i = 0; i < ih * iw; i++) sum += input.data[i * ic + sel.unit];
    result = sum / (ih * iw);
    panel.append(eq(`The mean of ${src}'s map ${sel.unit}: its ${ih * iw} values sum to ${fmt(sum)}, ÷ ${ih * iw} = ${fmt(result)}`));
  } else if (row.type === "scale") {
    const x = input.data[index];
    result = x * row.scale;
    const t = row.name === "temperature" ? ` (÷ the calibration temperature ${fmt(1 / row.scale)})` : "";
    panel.append(eq(`${src} ${fmt(x)} × ${fmt(row.scale)}${t} = ${fmt(result)}`));
  } else if (row.type === "flatten" && input?.shape.length === 3) {
    const [, iw, ic] = input.shape;
    const ch = sel.unit % ic;
    const px = Math.floor(sel.unit / ic);
    result = input.data[sel.unit];
    panel.append(eq(`Flatten copies: unit ${sel.unit} is ${src}'s map ${ch}, row ${Math.floor(px / iw)}, column ${px % iw}: ${fmt(result)}`));
  } else {
    kind = "none";
    const why = {
      views: "This layer adds views of the input (its mirror image, or its shifts by one pixel), so that every later layer sees them all; nothing is computed at a unit (the maps shown are the original image's).",
      view_mean: "This layer averages each value over the image and its views; the page has only the original image's values, so it has no arithmetic view.",
      flip: "This layer adds the mirror image of the input, so that every later layer sees both; nothing is computed at a unit (the maps shown are the original image's).",
      flip_mean: "This layer averages each value over the image and its mirror image; the page has only the original image's values, so it has no arithmetic view.",
      softmax: "See the softmax table above: the logits, their exponentials and the normalisation.",
    }[row.type];
    panel.append(eq(why ?? `No arithmetic view for a ${row.type} layer.`));
  }
  panel.dataset.kind = kind;
  if (result !== null) {
    const diff = Math.abs(result - served);
    panel.dataset.result = result;
    panel.dataset.activation = served;
    panel.append(
      eq(
        diff <= 1e-4 * Math.max(1, Math.abs(served))
          ? `/features returned ${fmt(served)} for this unit (the difference, ${diff.toExponential(1)}, is float32 rounding).`
          : `/features returned ${fmt(served)} for this unit: the page's arithmetic disagrees by ${fmt(diff)}.`,
      ),
    );
  }
}

// ---------------------------------------------------------------- softmax and wiring

function logitsRow() {
  // The dense layer that feeds the softmax (through the temperature layer, where there is one).
  const softmax = state.model.layers.find((r) => r.type === "softmax");
  let row = state.model.layers.find((r) => r.name === softmax?.inputs?.[0]);
  const temperature = row?.type === "scale" ? row : null;
  if (temperature) row = state.model.layers.find((r) => r.name === temperature.inputs[0]);
  return { softmax, temperature, logits: row?.type === "dense" ? row : null };
}

function showSoftmax() {
  const { softmax, temperature, logits } = logitsRow();
  const layer = state.layers.find((l) => l.row === softmax);
  const acts = logits && activationOf(logits.name);
  if (!layer || !acts) return;
  const scale = temperature?.scale ?? 1;
  const s = softmaxSteps(Array.from(acts.data), scale);
  const table = el("table", "softmax");
  table.id = "softmax-table";
  const head = el("tr");
  const zHead = temperature ? `z = logit ÷ T` : "z = logit";
  head.append(el("th", "", "class"), el("th", "", `logit (${logits.name})`), el("th", "", zHead),
    el("th", "", "e^(z − max z)"), el("th", "", "÷ sum = probability"), el("th", "", "served"));
  table.append(head);
  state.model.classes.forEach((cls, i) => {
    const tr = el("tr");
    const servedP = state.prediction.probabilities[cls];
    Object.assign(tr.dataset, { class: cls, p: s.probabilities[i], served: servedP });
    tr.append(el("td", "", cls), el("td", "", fmt(acts.data[i])), el("td", "", fmt(s.scaled[i])),
      el("td", "", fmt(s.exps[i])), el("td", "", pct(s.probabilities[i])), el("td", "", pct(servedP)));
    table.append(tr);
  });
  const cal = state.model.calibration;
  const note = temperature
    ? `Calibration: the logits are divided by the temperature T = ${fmt(1 / scale)}${
        cal?.fitted_on ? `, fitted on ${cal.fitted_on}` : ""
      }, so that a 90 % confidence is right about 90 % of the time. Then e^z for each class, divided by their sum ${fmt(s.total)}.`
    : `e^z for each class, divided by their sum ${fmt(s.total)}.`;
  let box = layer.body.querySelector(".softmax-steps");
  if (!box) {
    box = el("div", "softmax-steps");
    layer.body.append(box);
  }
  box.replaceChildren(table, eq(note));
}

const SVG = "http://www.w3.org/2000/svg";
const svg = (tag, attrs) => {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  return e;
};

// The last dense layer as a node-link diagram: its inputs on the left, the classes on the right;
// a class's strongest connections drawn, by |weight x activation|.
function showWiring() {
  const { logits } = logitsRow();
  const layer = logits && state.layers.find((l) => l.row === logits);
  const wts = logits && weightsOf(logits.name);
  const input = logits && activationOf(logits.inputs?.[0]);
  if (!layer || !wts || !input || !state.prediction) return;
  const classes = state.model.classes;
  const n = input.data.length;
  const [W, H] = [560, Math.max(240, classes.length * 28)];
  const yIn = (i) => 10 + (i * (H - 20)) / Math.max(1, n - 1);
  const yOut = (k) => 20 + (k * (H - 40)) / Math.max(1, classes.length - 1);
  let wrap = layer.body.querySelector(".wiring");
  if (!wrap) {
    wrap = el("div", "wiring");
    layer.body.append(wrap);
  }
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "group", "aria-label": `${logits.name}'s wiring: ${n} inputs from ${logits.inputs[0]} to ${classes.length} classes. Hover, tap or focus a class to see its strongest connections.` });
  const edges = svg("g", { class: "edges" });
  root.append(edges);
  let peak = 0;
  for (const v of input.data) peak = Math.max(peak, Math.abs(v));
  for (let i = 0; i < n; i++) {
    const t = Math.round(Math.min(1, Math.abs(input.data[i]) / (peak || 1)) * 255);
    root.append(svg("circle", { cx: 40, cy: yIn(i), r: 3, fill: `rgb(${SEQUENTIAL[t * 3]},${SEQUENTIAL[t * 3 + 1]},${SEQUENTIAL[t * 3 + 2]})`, class: "in", "data-index": i }));
  }
  const info = el("p", "readout wiring-readout");
  info.setAttribute("aria-live", "polite");
  const draw = (k) => {
    state.wiringClass = classes[k];
    const top = strongestInputs(input, wts.kernel, classes.length, k, 12);
    const most = Math.max(...top.map((t) => Math.abs(t.contribution))) || 1;
    edges.replaceChildren(
      ...top.map((t) =>
        svg("line", {
          x1: 40, y1: yIn(t.index), x2: W - 120, y2: yOut(k),
          class: t.contribution >= 0 ? "pos" : "neg",
          "stroke-width": 0.5 + (4 * Math.abs(t.contribution)) / most,
          "data-from": t.index, "data-weight": t.weight, "data-activation": t.activation, "data-contribution": t.contribution,
        }),
      ),
    );
    for (const g of root.querySelectorAll("g.class")) g.classList.toggle("on", g.dataset.class === classes[k]);
    const list = top.slice(0, 5).map((t) => `unit ${t.index} (${fmt(t.activation)} × ${fmt(t.weight)} = ${fmt(t.contribution)})`).join(", ");
    info.textContent = `Class “${classes[k]}”: its logit ${fmt(layerValue(layer, k))} is the bias plus ${n} such products; the strongest: ${list}. Red raises the score, blue lowers it.`;
    wrap.dataset.class = classes[k];
  };
  classes.forEach((cls, k) => {
    const g = svg("g", { class: "class", tabindex: 0, role: "button", "data-class": cls, "aria-label": `class ${cls}: show its strongest connections` });
    g.append(svg("circle", { cx: W - 120, cy: yOut(k), r: 7 }));
    const label = svg("text", { x: W - 106, y: yOut(k) + 4 });
    label.textContent = `${cls} ${pct(state.prediction.probabilities[cls])}`;
    g.append(label);
    g.addEventListener("pointerenter", () => draw(k));
    g.addEventListener("pointerdown", () => draw(k));
    g.addEventListener("focus", () => draw(k));
    root.append(g);
  });
  wrap.replaceChildren(root, info);
  const keep = classes.indexOf(state.wiringClass);
  draw(keep >= 0 ? keep : classes.indexOf(state.prediction.label));
}

function layerValue(layer, i) {
  return layer.data ? layer.data[i] : NaN;
}

// ---------------------------------------------------------------- trying the seed's filters

const KERNELS = {
  identity: [[0, 0, 0], [0, 1, 0], [0, 0, 0]],
  "edge detection 1": [[1, 0, -1], [0, 0, 0], [-1, 0, 1]],
  "edge detection 2": [[0, 1, 0], [1, -4, 1], [0, 1, 0]],
  "edge detection 3": [[-1, -1, -1], [-1, 8, -1], [-1, -1, -1]],
  sharpen: [[0, -1, 0], [-1, 5, -1], [0, -1, 0]],
  "box blur": [[1 / 9, 1 / 9, 1 / 9], [1 / 9, 1 / 9, 1 / 9], [1 / 9, 1 / 9, 1 / 9]],
  "Gaussian blur": [[1 / 16, 2 / 16, 1 / 16], [2 / 16, 4 / 16, 2 / 16], [1 / 16, 2 / 16, 1 / 16]],
};

function setupTry() {
  const preset = $("try-kernel");
  preset.replaceChildren(...Object.keys(KERNELS).map((k) => new Option(k, k)), new Option("your own (edited)", "custom"));
  const cells = $("try-cells");
  for (let i = 0; i < 9; i++) {
    const input = Object.assign(document.createElement("input"), { type: "number", step: "any", value: "0" });
    input.setAttribute("aria-label", `kernel row ${Math.floor(i / 3) + 1}, column ${(i % 3) + 1}`);
    input.addEventListener("input", () => {
      preset.value = "custom";
      tryKernel();
    });
    cells.append(input);
  }
  const fill = () => {
    const k = KERNELS[preset.value];
    if (!k) return;
    k.flat().forEach((v, i) => (cells.children[i].value = Number(v.toFixed(4))));
    tryKernel();
  };
  preset.addEventListener("change", fill);
  $("try").addEventListener("toggle", () => $("try").open && fill());
}

let tryTimer = null;
function tryKernel() {
  clearTimeout(tryTimer);
  tryTimer = setTimeout(runKernel, 60);
}

async function runKernel() {
  if (!$("try").open || !state.inputData) return;
  const [h, w, c] = state.model.input.shape;
  const image = [];
  for (let y = 0; y < h; y++) {
    const row = [];
    for (let x = 0; x < w; x++) {
      let v = 0;
      for (let k = 0; k < c; k++) v += state.inputData[(y * w + x) * c + k];
      row.push(v / c); // colour: the mean of the channels
    }
    image.push(row);
  }
  const values = [...$("try-cells").children].map((i) => Number(i.value));
  if (values.some((v) => !Number.isFinite(v))) {
    $("try-cap").textContent = "Every kernel cell must be a number.";
    return;
  }
  const kernel = [values.slice(0, 3), values.slice(3, 6), values.slice(6, 9)];
  try {
    const res = await fetch("/convolve", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ image, kernel }),
    });
    const body = await res.json();
    if (!res.ok) throw new Error(body?.error?.message ?? res.status);
    const flat = new Float32Array(body.data.flat());
    const canvas = $("try-out");
    canvas.width = body.shape[1];
    canvas.height = body.shape[0];
    const signed = body.min < 0;
    paint(canvas, flat, 0, 1, flat.length, body.shape[1], scale(body.min, body.max, signed));
    canvas.dataset.values = JSON.stringify(body.data);
    canvas.dataset.kernel = JSON.stringify(kernel);
    $("try-cap").textContent = `${$("try-kernel").selectedOptions[0].text} applied to the ${h}×${w} input${
      c > 1 ? " (grey: the mean of its colours)" : ""
    }, computed by the service (POST /convolve): values ${fmt(body.min)} to ${fmt(body.max)}${signed ? ", white = 0" : ""}.`;
    document.body.dataset.tried = Number(document.body.dataset.tried || 0) + 1;
  } catch (err) {
    $("try-cap").textContent = `Could not apply the kernel: ${err.message}`;
  }
}

// ---------------------------------------------------------------- watching it learn

async function loadSnapshots(model) {
  const view = $("learning");
  view.dataset.state = "loading";
  state.snapshots = null;
  try {
    const res = await api(`/models/${encodeURIComponent(model.name)}/snapshots`);
    if (model !== state.model) return;
    state.snapshots = res;
    if (!res.snapshots.length) {
      view.dataset.state = "none";
      $("learning-body").replaceChildren(
        eq(`${model.name} v${model.version} was exported without training snapshots, so this page cannot show it learning.`),
      );
      return;
    }
    $("learning-body").replaceChildren(lossCurve(res), el("ol", "snapshots"), el("div", "snapshot-detail"));
    $("learning-body").querySelector(".snapshot-detail").setAttribute("aria-live", "polite");
    view.dataset.state = "ready";
    if (state.body && state.prediction) runSnapshots(state.body);
  } catch (err) {
    view.dataset.state = "error";
    $("learning-body").replaceChildren(eq(`Could not load the training snapshots: ${err.message}`));
  }
}

// The loss per epoch (training and validation), with the snapshots' epochs marked.
function lossCurve(res) {
  const series = Object.entries(res.history).filter(([k, v]) => k.includes("loss") && v.length);
  const [W, H, pad] = [420, 160, 28];
  const epochs = Math.max(1, ...series.map(([, v]) => v.length));
  const top = Math.max(...series.flatMap(([, v]) => v)) || 1;
  const x = (e) => pad + ((W - 2 * pad) * e) / epochs; // epoch e ends at x(e)
  const y = (v) => H - pad + (-(H - 2 * pad) * v) / top;
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "loss", role: "img" });
  root.append(svg("line", { x1: pad, y1: H - pad, x2: W - pad, y2: H - pad, class: "axis" }));
  root.append(svg("line", { x1: pad, y1: pad, x2: pad, y2: H - pad, class: "axis" }));
  for (const s of res.snapshots) {
    root.append(svg("line", { x1: x(s.epoch), y1: pad, x2: x(s.epoch), y2: H - pad, class: "mark", "data-snapshot": s.name }));
  }
  const words = [];
  for (const [name, values] of series) {
    const points = values.map((v, i) => `${x(i + 1)},${y(v)}`).join(" ");
    root.append(svg("polyline", { points, class: name, "data-series": name, "data-points": values.length }));
    words.push(`${name.replace("_", " ")} ${fmt(values[0])} after epoch 1 to ${fmt(values.at(-1))} after epoch ${values.length}`);
  }
  const label = svg("text", { x: pad, y: pad - 8 });
  label.textContent = `loss per epoch (${series.map(([k]) => k).join(", dashed: ")}); lines: the snapshots`;
  root.append(label);
  root.setAttribute("aria-label", `Loss curve: ${words.join("; ")}.`);
  const fig = el("figure", "loss-fig");
  fig.append(root);
  return fig;
}

async function runSnapshots(blob) {
  const model = state.model;
  if (!state.snapshots?.snapshots.length || blob === padBlobMarker) return;
  try {
    const res = await api(`/snapshots/${encodeURIComponent(model.name)}`, blob);
    if (model !== state.model) return;
    const list = $("learning-body").querySelector("ol.snapshots");
    const detail = $("learning-body").querySelector(".snapshot-detail");
    const show = (s) => {
      const ranked = Object.entries(s.prediction.probabilities).sort((a, b) => b[1] - a[1]);
      const chart = bars(model.classes, `${s.label}: class probabilities`);
      fillBars(chart, s.prediction.probabilities);
      detail.replaceChildren(
        eq(`${s.label} (epoch ${fmt(s.epoch)}, step ${s.step}): ${ranked.slice(0, 3).map(([k, p]) => `${k} ${pct(p)}`).join(", ")}`),
        chart,
      );
      detail.dataset.snapshot = s.name;
      for (const li of list.children) li.classList.toggle("on", li.dataset.snapshot === s.name);
    };
    list.replaceChildren(
      ...res.snapshots.map((s) => {
        const li = el("li");
        Object.assign(li.dataset, {
          snapshot: s.name,
          label: s.prediction.label,
          probabilities: JSON.stringify(s.prediction.probabilities),
        });
        const b = el("button", "", `${s.label}: ${s.prediction.label} ${pct(s.prediction.confidence)}`);
        b.type = "button";
        b.addEventListener("click", () => show(s));
        b.addEventListener("pointerenter", () => show(s));
        const strip = el("span", "mini");
        strip.setAttribute("aria-hidden", "true");
        for (const cls of model.classes) {
          const bar = el("span");
          bar.style.height = `${Math.round(s.prediction.probabilities[cls] * 100)}%`;
          bar.classList.toggle("top", cls === s.prediction.label);
          strip.append(bar);
        }
        li.append(b, strip);
        return li;
      }),
    );
    const keep = res.snapshots.find((s) => s.name === detail.dataset.snapshot) ?? res.snapshots.at(-1);
    show(keep);
    $("learning").dataset.state = "shown";
  } catch (err) {
    $("learning").dataset.state = "error";
    setStatus(`Could not run the training snapshots: ${err.message}`, true);
  }
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
  state.inputData = data;
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
  state.prediction = prediction;
  clearInspect();
  paintLayers();
  showSoftmax();
  showWiring();
  if (state.selected) select(state.selected);
  runKernel();
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
      loadWeights(model); // after the first classification: it never waits for them
      runSnapshots(blob);
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
  state.weights = null;
  state.selected = null;
  state.wiringClass = null;
  state.inputData = null;
  state.prediction = null;
  delete document.body.dataset.weights;
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
  loadSnapshots(model);
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
  setupTry();
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
