// The arithmetic at one unit of a layer, from the activations of the layer(s) it reads and the
// layer's weights: the numbers the explorer shows beside the value /features returned.
//
// Activations are { data: Float32Array, shape } in (h, w, c) order; weights are Float32Arrays in
// Keras's layouts: conv kernel (kh, kw, in, out), dense kernel (in, out).

// TensorFlow's "same" padding before the first row (or column): the odd pixel goes after.
export function padBefore(size, kernel, stride, outSize) {
  return Math.floor(Math.max((outSize - 1) * stride + kernel - size, 0) / 2);
}

// A conv unit (y, x) of map `o`: for each input channel the patch, the kernel slice and their
// products, then the sum, the bias and the result.
export function convUnit(row, input, kernel, bias, y, x, o) {
  const [h, w, cin] = input.shape;
  const [kh, kw] = row.kernel_size;
  const [sh, sw] = row.stride ?? [1, 1];
  const [oh, ow, cout] = row.output_shape;
  const top = row.padding === "same" ? padBefore(h, kh, sh, oh) : 0;
  const left = row.padding === "same" ? padBefore(w, kw, sw, ow) : 0;
  const channels = [];
  let sum = 0;
  for (let c = 0; c < cin; c++) {
    const patch = [];
    const weights = [];
    const products = [];
    let partial = 0;
    for (let i = 0; i < kh; i++) {
      for (let j = 0; j < kw; j++) {
        const iy = y * sh + i - top;
        const ix = x * sw + j - left;
        const inside = iy >= 0 && iy < h && ix >= 0 && ix < w;
        const v = inside ? input.data[(iy * w + ix) * cin + c] : 0; // zero padding
        const k = kernel[((i * kw + j) * cin + c) * cout + o];
        patch.push(v);
        weights.push(k);
        products.push(v * k);
        partial += v * k;
      }
    }
    channels.push({ channel: c, patch, weights, products, partial });
    sum += partial;
  }
  const b = bias ? bias[o] : 0;
  return {
    rows: kh,
    cols: kw,
    origin: [y * sh - top, x * sw - left],
    channels,
    sum,
    bias: b,
    hasBias: Boolean(bias),
    result: sum + b,
  };
}

// A dense unit j: every input times its weight; the `top` strongest products (by size) listed.
export function denseUnit(row, input, kernel, bias, j, top = 10) {
  const n = input.data.length;
  const units = row.output_shape[0];
  const terms = [];
  let sum = 0;
  for (let i = 0; i < n; i++) {
    const wgt = kernel[i * units + j];
    const p = input.data[i] * wgt;
    sum += p;
    terms.push({ index: i, input: input.data[i], weight: wgt, product: p });
  }
  terms.sort((a, b) => Math.abs(b.product) - Math.abs(a.product));
  const shown = terms.slice(0, top);
  const b = bias ? bias[j] : 0;
  const pre = sum + b;
  const relu = row.activation === "relu";
  return {
    count: n,
    shown,
    shownSum: shown.reduce((s, t) => s + t.product, 0),
    sum,
    bias: b,
    hasBias: Boolean(bias),
    pre,
    relu,
    result: relu ? Math.max(0, pre) : pre,
  };
}

// The strongest connections into output unit j of a dense layer, by |weight x activation|.
export function strongestInputs(input, kernel, units, j, top) {
  const out = [];
  for (let i = 0; i < input.data.length; i++) {
    const weight = kernel[i * units + j];
    out.push({ index: i, weight, activation: input.data[i], contribution: weight * input.data[i] });
  }
  out.sort((a, b) => Math.abs(b.contribution) - Math.abs(a.contribution));
  return out.slice(0, top);
}

// Softmax, step by step: logits -> / T (the temperature layer's scale is 1 / T) -> exp -> / sum.
// Exponentials of z - max(z): the same probabilities without overflow; shown as such.
export function softmaxSteps(logits, scale) {
  const scaled = logits.map((v) => v * scale);
  const peak = Math.max(...scaled);
  const exps = scaled.map((z) => Math.exp(z - peak));
  const total = exps.reduce((a, b) => a + b, 0);
  return { scaled, peak, exps, total, probabilities: exps.map((e) => e / total) };
}
