/* service._digit: MNIST-style digit normalisation in C, one call per digit.
 *
 * service/images.py holds the reference in Python (normalize_digit_python, built from
 * find_ink_python, Pillow's LANCZOS resize and place_digit_python) and the documentation of what
 * each step does; the functions here must return exactly the same bytes, which
 * tests/test_digit_kernel.py checks on generated, hostile and real digits. They exist because on a
 * 28x28 digit the per-call overhead of numpy and Pillow, not the pixels, is the cost: the
 * reference makes some 30 numpy and Pillow calls per digit, each 5-7 us when the caches are cold
 * under load; normalize_digit is one call.
 *
 * Every value stays exact as in the reference: pixels are integers 0..255 until the one float32
 * multiplication by 255 / peak, which is done in float32 as numpy does it; the resize uses the
 * arithmetic of Pillow 13's resampler (double-precision Lanczos weights turned into 22-bit
 * fixed point, two passes through 8-bit pixels, in Pillow's order); the centre of mass sums
 * integers in doubles (exact far beyond 256x256 pixels).
 *
 * unfilter_png reverses the scanline filters of an 8-bit greyscale PNG, the last step of decoding
 * one, for images.grey_png's route around Pillow (its docstring says when that is taken); the
 * tests hold it to Pillow's pixels.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <math.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>

#ifndef M_PI
#define M_PI 3.14159265358979323846
#endif

/* The largest side resize_lanczos and place_digit accept: the service works at <= 256 px
 * (images.mnist_digit), and every product of sizes below stays far inside int. */
#define MAX_SIDE 4096

/* The k-th smallest of the values counted in `histogram` (k from 0). */
static int
kth_smallest(const Py_ssize_t histogram[256], Py_ssize_t k) {
    for (int value = 0; value < 256; value++) {
        k -= histogram[value];
        if (k < 0) {
            return value;
        }
    }
    return 255; /* not reached: k < the number of values counted */
}

static int
check_image(const Py_buffer *pixels, int width, int height) {
    if (width < 1 || height < 1) {
        PyErr_Format(PyExc_ValueError, "the image is %dx%d pixels", width, height);
        return -1;
    }
    if (pixels->len != (Py_ssize_t)width * height) {
        PyErr_Format(
            PyExc_ValueError, "%zd bytes for a %dx%d image", pixels->len, width, height
        );
        return -1;
    }
    return 0;
}

/* ---- Finding the ink ------------------------------------------------------------------- */

typedef struct {
    int left, top, width, height;
    uint8_t *pixels; /* width * height bytes from PyMem_Malloc: the caller frees them */
} InkBox;

/* find_ink_python's steps: 1 and the box when there is ink, 0 when there is none, -1 with an
 * exception set when memory ran out. */
static int
ink_box(const uint8_t *src, int width, int height, InkBox *box) {
    const Py_ssize_t n_pixels = (Py_ssize_t)width * height;

    /* The border's tones, each edge counted whole (corners twice), as the reference does. */
    Py_ssize_t histogram[256] = {0};
    for (int x = 0; x < width; x++) {
        histogram[src[x]]++;
        histogram[src[(Py_ssize_t)(height - 1) * width + x]]++;
    }
    for (int y = 0; y < height; y++) {
        histogram[src[(Py_ssize_t)y * width]]++;
        histogram[src[(Py_ssize_t)y * width + width - 1]]++;
    }
    const Py_ssize_t n = 2 * (Py_ssize_t)width + 2 * (Py_ssize_t)height;
    const int dark_on_light = kth_smallest(histogram, n / 2) > 127;
    /* From here on, tones as bright ink on dark: the border's, and the brightest pixel's. */
    Py_ssize_t border[256] = {0};
    for (int value = 0; value < 256; value++) {
        border[dark_on_light ? 255 - value : value] = histogram[value];
    }
    int brightest = 0;
    for (Py_ssize_t i = 0; i < n_pixels; i++) {
        int v = dark_on_light ? 255 - src[i] : src[i];
        if (v > brightest) {
            brightest = v;
        }
    }
    /* The paper's tone: the 90th percentile of the border pixels no brighter than halfway from
     * the border's median to the brightest pixel (brighter ones are ink touching the edge). */
    const int limit = kth_smallest(border, n / 2) + brightest;
    Py_ssize_t n_paper = 0;
    for (int value = 0; value < 256; value++) {
        if (2 * value > limit) {
            border[value] = 0;
        }
        n_paper += border[value];
    }
    const int tone = kth_smallest(border, (Py_ssize_t)(0.9 * (double)(n_paper - 1)));

    uint8_t *ink = PyMem_Malloc(n_pixels);
    if (ink == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    int peak = 0;
    for (Py_ssize_t i = 0; i < n_pixels; i++) {
        int v = (dark_on_light ? 255 - src[i] : src[i]) - tone;
        ink[i] = (uint8_t)(v > 0 ? v : 0);
        if (ink[i] > peak) {
            peak = ink[i];
        }
    }
    if (peak < 32) {
        PyMem_Free(ink);
        return 0;
    }
    /* numpy multiplies a float32 array by the Python float 255 / peak rounded to float32. */
    const float stretch = (float)(255.0 / (double)peak);
    int top = height, bottom = -1, left = width, right = -1;
    for (int y = 0; y < height; y++) {
        const uint8_t *row = ink + (Py_ssize_t)y * width;
        for (int x = 0; x < width; x++) {
            if ((float)row[x] * stretch > 64.0f) {
                top = y < top ? y : top;
                bottom = y;
                left = x < left ? x : left;
                right = x > right ? x : right;
            }
        }
    }
    box->left = left;
    box->top = top;
    box->width = right - left + 1;
    box->height = bottom - top + 1;
    box->pixels = PyMem_Malloc((size_t)box->width * box->height);
    if (box->pixels == NULL) {
        PyMem_Free(ink);
        PyErr_NoMemory();
        return -1;
    }
    for (int y = 0; y < box->height; y++) {
        const uint8_t *row = ink + (Py_ssize_t)(top + y) * width + left;
        uint8_t *out = box->pixels + (Py_ssize_t)y * box->width;
        for (int x = 0; x < box->width; x++) {
            out[x] = (uint8_t)((float)row[x] * stretch);
        }
    }
    PyMem_Free(ink);
    return 1;
}

/* ---- Lanczos resize, with the arithmetic of Pillow's Image.resize(size, LANCZOS) --------- */

/* Fixed-point weights: 8 bits of result, 2 bits for the filter's overshoot, as Pillow does. */
#define PRECISION_BITS 22

static double
sinc(double x) {
    if (x == 0.0) {
        return 1.0;
    }
    x *= M_PI;
    return sin(x) / x;
}

static double
lanczos3(double x) {
    return (-3.0 <= x && x < 3.0) ? sinc(x) * sinc(x / 3) : 0.0;
}

/* Which input pixels make each output pixel, and with what weights. */
typedef struct {
    int taps;        /* weights stored per output pixel */
    int *first;      /* first input pixel of output pixel i */
    int *count;      /* how many input pixels from there */
    int32_t *kernel; /* count[i] fixed-point weights at kernel + i * taps */
} Weights;

static void
free_weights(Weights *w) {
    PyMem_Free(w->first);
    PyMem_Free(w->count);
    PyMem_Free(w->kernel);
    w->first = w->count = NULL; /* safe to free twice */
    w->kernel = NULL;
}

/* Weights kept per module for the size pairs last used: computing them (two sin() calls a tap,
 * some 500 for a digit) took longer than the resize itself, and a service resizes digits between
 * few size pairs. Direct-mapped and bounded: WEIGHT_SLOTS entries a table, one table per axis (so
 * the two lookups of one resize never evict each other), some 0.8 MB in all at the sizes the
 * service resizes (at most 256 px to 20) and under 20 MB at MAX_SIDE. The GIL guards them: no
 * function here releases it. */
#define WEIGHT_SLOTS 64

typedef struct {
    int in_size, out_size; /* 0 while empty */
    Weights weights;
} WeightSlot;

typedef struct {
    WeightSlot rows[WEIGHT_SLOTS], cols[WEIGHT_SLOTS];
} ModuleState;

/* Weights for resampling in_size pixels to out_size (both 1..MAX_SIDE) over the whole image:
 * 0, or -1 with an exception set. */
static int
lanczos_weights(int in_size, int out_size, Weights *w) {
    /* Pillow takes the box as floats: (in1 - in0) is the float in_size, exact here. */
    const double scale = (double)(float)in_size / out_size;
    const double filter_scale = scale < 1.0 ? 1.0 : scale;
    const double support = 3.0 * filter_scale;
    const double inverse = 1.0 / filter_scale;
    w->taps = (int)ceil(support) * 2 + 1;
    w->first = PyMem_Malloc(sizeof(int) * out_size);
    w->count = PyMem_Malloc(sizeof(int) * out_size);
    w->kernel = PyMem_Malloc(sizeof(int32_t) * (size_t)out_size * w->taps);
    double *weights = PyMem_Malloc(sizeof(double) * w->taps);
    if (w->first == NULL || w->count == NULL || w->kernel == NULL || weights == NULL) {
        free_weights(w);
        PyMem_Free(weights);
        PyErr_NoMemory();
        return -1;
    }
    for (int i = 0; i < out_size; i++) {
        const double center = (i + 0.5) * scale;
        int first = (int)(center - support + 0.5);
        int last = (int)(center + support + 0.5);
        first = first < 0 ? 0 : first;
        last = last > in_size ? in_size : last;
        const int count = last - first;
        double sum = 0.0;
        for (int j = 0; j < count; j++) {
            weights[j] = lanczos3((j + first - center + 0.5) * inverse);
            sum += weights[j];
        }
        int32_t *kernel = w->kernel + (size_t)i * w->taps;
        for (int j = 0; j < count; j++) {
            const double k = sum != 0.0 ? weights[j] / sum : weights[j];
            const double fixed = k * (1 << PRECISION_BITS);
            kernel[j] = (int32_t)(k < 0 ? -0.5 + fixed : 0.5 + fixed); /* rounds half away */
        }
        w->first[i] = first;
        w->count[i] = count;
    }
    PyMem_Free(weights);
    return 0;
}

/* The weights for in_size -> out_size from `table`, computed on a miss: owned by the table, valid
 * until the next lookup in it; NULL with an exception set. */
static const Weights *
cached_weights(WeightSlot *table, int in_size, int out_size) {
    WeightSlot *slot = &table[((unsigned)in_size * 31u + (unsigned)out_size) % WEIGHT_SLOTS];
    if (slot->in_size != in_size || slot->out_size != out_size) {
        Weights fresh = {0};
        if (lanczos_weights(in_size, out_size, &fresh) < 0) {
            return NULL;
        }
        free_weights(&slot->weights);
        slot->weights = fresh;
        slot->in_size = in_size;
        slot->out_size = out_size;
    }
    return &slot->weights;
}

/* The 8-bit result of a fixed-point sum: its integer part, clipped to 0..255. */
static uint8_t
clip8(int64_t sum) {
    if (sum < 0) {
        return 0;
    }
    sum >>= PRECISION_BITS;
    return (uint8_t)(sum > 255 ? 255 : sum);
}

/* One horizontal pass: `rows` rows of src (width wide) from row `row0` -> dst (out_width wide). */
static void
resample_rows(const uint8_t *src, int width, int row0, int rows, const Weights *cols,
              uint8_t *dst, int out_width) {
    for (int y = 0; y < rows; y++) {
        const uint8_t *in_row = src + (Py_ssize_t)(row0 + y) * width;
        for (int x = 0; x < out_width; x++) {
            const int32_t *k = cols->kernel + (size_t)x * cols->taps;
            const uint8_t *in = in_row + cols->first[x];
            int64_t sum = 1 << (PRECISION_BITS - 1);
            for (int j = 0; j < cols->count[x]; j++) {
                sum += (int64_t)in[j] * k[j];
            }
            dst[(Py_ssize_t)y * out_width + x] = clip8(sum);
        }
    }
}

/* One vertical pass: src (width wide, its first row being input row `row0`) -> dst
 * (out_height rows of the same width). */
static void
resample_columns(const uint8_t *src, int width, int row0, const Weights *rows, uint8_t *dst,
                 int out_height) {
    for (int y = 0; y < out_height; y++) {
        const int32_t *k = rows->kernel + (size_t)y * rows->taps;
        const uint8_t *in = src + (Py_ssize_t)(rows->first[y] - row0) * width;
        for (int x = 0; x < width; x++) {
            int64_t sum = 1 << (PRECISION_BITS - 1);
            for (int j = 0; j < rows->count[y]; j++) {
                sum += (int64_t)in[(Py_ssize_t)j * width + x] * k[j];
            }
            dst[(Py_ssize_t)y * width + x] = clip8(sum);
        }
    }
}

/* src (width x height) -> dst (out_width x out_height), all sides 1..MAX_SIDE: 0, or -1 with an
 * exception set. Two passes, each rounding to 8 bits, in Pillow 13's order: vertical first when
 * the height shrinks by more than twice what the width does, else horizontal first (over only the
 * rows the vertical pass reads). A side that keeps its size is not resampled. */
static int
resize(ModuleState *state, const uint8_t *src, int width, int height, uint8_t *dst, int out_width,
       int out_height) {
    const int horizontal = out_width != width, vertical = out_height != height;
    const int vertical_first =
        height - out_height > 0 && height - out_height > (width - out_width) * 2;
    const Weights *rows = NULL, *cols = NULL;
    uint8_t *middle = NULL;
    int status = -1;
    if (!vertical && !horizontal) {
        memcpy(dst, src, (size_t)width * height);
        return 0;
    }
    if ((vertical && (rows = cached_weights(state->rows, height, out_height)) == NULL) ||
        (horizontal && (cols = cached_weights(state->cols, width, out_width)) == NULL)) {
        goto done;
    }
    if (!vertical) {
        resample_rows(src, width, 0, height, cols, dst, out_width);
    } else if (!horizontal) {
        resample_columns(src, width, 0, rows, dst, out_height);
    } else if (vertical_first) {
        middle = PyMem_Malloc((size_t)width * out_height);
        if (middle == NULL) {
            PyErr_NoMemory();
            goto done;
        }
        resample_columns(src, width, 0, rows, middle, out_height);
        resample_rows(middle, width, 0, out_height, cols, dst, out_width);
    } else {
        const int row_first = rows->first[0];
        const int row_end = rows->first[out_height - 1] + rows->count[out_height - 1];
        middle = PyMem_Malloc((size_t)out_width * (row_end - row_first));
        if (middle == NULL) {
            PyErr_NoMemory();
            goto done;
        }
        resample_rows(src, width, row_first, row_end - row_first, cols, middle, out_width);
        resample_columns(middle, out_width, row_first, rows, dst, out_height);
    }
    status = 0;

done:
    PyMem_Free(middle);
    return status;
}

/* ---- Placing the digit ----------------------------------------------------------------- */

/* place_digit_python's steps; the sizes are checked by the callers. */
static void
place(const uint8_t *src, int width, int height, int canvas_size, uint8_t *out, int out_width,
      int out_height) {
    double total = 0.0, row_moment = 0.0, col_moment = 0.0;
    for (int y = 0; y < height; y++) {
        for (int x = 0; x < width; x++) {
            const double v = src[(Py_ssize_t)y * width + x];
            total += v;
            row_moment += v * y;
            col_moment += v * x;
        }
    }
    const double cy = total != 0.0 ? row_moment / total : height / 2.0;
    const double cx = total != 0.0 ? col_moment / total : width / 2.0;
    /* Python's round(): halves to even, which nearbyint does in the default rounding mode. */
    long y0 = (long)nearbyint(canvas_size / 2.0 - cy);
    long x0 = (long)nearbyint(canvas_size / 2.0 - cx);
    y0 = y0 < 0 ? 0 : (y0 > canvas_size - height ? canvas_size - height : y0);
    x0 = x0 < 0 ? 0 : (x0 > canvas_size - width ? canvas_size - width : x0);
    y0 += (out_height - canvas_size) / 2;
    x0 += (out_width - canvas_size) / 2;
    memset(out, 0, (size_t)out_width * out_height);
    for (int y = 0; y < height; y++) {
        memcpy(out + (y0 + y) * out_width + x0, src + (Py_ssize_t)y * width, width);
    }
}

/* ---- PNG scanlines --------------------------------------------------------------------- */

/* The PNG specification's Paeth predictor (section 9.4), from the left, upper and upper-left
 * bytes. */
static uint8_t
paeth(int a, int b, int c) {
    const int p = a + b - c;
    const int pa = abs(p - a), pb = abs(p - b), pc = abs(p - c);
    if (pa <= pb && pa <= pc) {
        return (uint8_t)a;
    }
    return (uint8_t)(pb <= pc ? b : c);
}

/* Reverses the filters of `height` scanlines of one byte a pixel (src: a filter-type byte, then
 * width bytes, each line) into dst (width * height bytes): 0, or -1 with an exception set for a
 * filter type other than the five the specification defines. */
static int
unfilter(const uint8_t *src, int width, int height, uint8_t *dst) {
    for (int y = 0; y < height; y++) {
        const uint8_t *line = src + (size_t)y * (width + 1);
        const uint8_t *in = line + 1;
        uint8_t *row = dst + (size_t)y * width;
        const uint8_t *up = y > 0 ? row - width : NULL; /* above the first line: zeros */
        switch (line[0]) {
        case 0: /* None */
            memcpy(row, in, width);
            break;
        case 1: /* Sub */
            for (int x = 0; x < width; x++) {
                row[x] = (uint8_t)(in[x] + (x > 0 ? row[x - 1] : 0));
            }
            break;
        case 2: /* Up */
            for (int x = 0; x < width; x++) {
                row[x] = (uint8_t)(in[x] + (up ? up[x] : 0));
            }
            break;
        case 3: /* Average, of integers: no overflow, floor division */
            for (int x = 0; x < width; x++) {
                const int a = x > 0 ? row[x - 1] : 0, b = up ? up[x] : 0;
                row[x] = (uint8_t)(in[x] + ((a + b) >> 1));
            }
            break;
        case 4: /* Paeth */
            for (int x = 0; x < width; x++) {
                const int a = x > 0 ? row[x - 1] : 0, b = up ? up[x] : 0;
                const int c = x > 0 && up ? up[x - 1] : 0;
                row[x] = (uint8_t)(in[x] + paeth(a, b, c));
            }
            break;
        default:
            PyErr_Format(PyExc_ValueError, "filter type %d in scanline %d", line[0], y);
            return -1;
        }
    }
    return 0;
}

/* ---- The module's functions ------------------------------------------------------------ */

PyDoc_STRVAR(
    find_ink_doc,
    "find_ink(pixels, width, height, /)\n--\n\n"
    "The digit's ink, bright on dark and stretched to 0..255, cropped to its bounding box:\n"
    "(left, top, width, height, pixels), or None when nothing looks like ink.\n"
    "The same as service.images.find_ink_python."
);

static PyObject *
find_ink(PyObject *Py_UNUSED(module), PyObject *args) {
    Py_buffer pixels;
    int width, height;
    if (!PyArg_ParseTuple(args, "y*ii:find_ink", &pixels, &width, &height)) {
        return NULL;
    }
    PyObject *result = NULL;
    InkBox box = {0};
    if (check_image(&pixels, width, height) < 0) {
        goto done;
    }
    const int found = ink_box(pixels.buf, width, height, &box);
    if (found <= 0) {
        result = found == 0 ? Py_NewRef(Py_None) : NULL;
        goto done;
    }
    result = Py_BuildValue(
        "iiiiy#",
        box.left,
        box.top,
        box.width,
        box.height,
        (const char *)box.pixels,
        (Py_ssize_t)box.width * box.height
    );

done:
    PyMem_Free(box.pixels);
    PyBuffer_Release(&pixels);
    return result;
}

PyDoc_STRVAR(
    resize_lanczos_doc,
    "resize_lanczos(pixels, width, height, out_width, out_height, /)\n--\n\n"
    "An 8-bit greyscale image resized with a Lanczos filter: out_height * out_width bytes,\n"
    "the same as Pillow's Image.resize((out_width, out_height), Image.Resampling.LANCZOS).\n"
    "Every side 1..4096."
);

static PyObject *
resize_lanczos(PyObject *module, PyObject *args) {
    Py_buffer pixels;
    int width, height, out_width, out_height;
    if (!PyArg_ParseTuple(
            args, "y*iiii:resize_lanczos", &pixels, &width, &height, &out_width, &out_height
        )) {
        return NULL;
    }
    PyObject *result = NULL;
    if (check_image(&pixels, width, height) < 0) {
        goto done;
    }
    if (width > MAX_SIDE || height > MAX_SIDE || out_width < 1 || out_height < 1 ||
        out_width > MAX_SIDE || out_height > MAX_SIDE) {
        PyErr_Format(
            PyExc_ValueError,
            "cannot resize %dx%d to %dx%d: every side must be 1..%d",
            width,
            height,
            out_width,
            out_height,
            MAX_SIDE
        );
        goto done;
    }
    result = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)out_width * out_height);
    if (result != NULL &&
        resize(PyModule_GetState(module), pixels.buf, width, height,
               (uint8_t *)PyBytes_AS_STRING(result), out_width, out_height) < 0) {
        Py_CLEAR(result);
    }

done:
    PyBuffer_Release(&pixels);
    return result;
}

static int
check_placement(int width, int height, int canvas_size, int out_width, int out_height) {
    if (width > canvas_size || height > canvas_size || canvas_size > out_width ||
        canvas_size > out_height || out_width > MAX_SIDE || out_height > MAX_SIDE) {
        PyErr_Format(
            PyExc_ValueError,
            "a %dx%d digit does not fit a %d canvas in a %dx%d output",
            width,
            height,
            canvas_size,
            out_width,
            out_height
        );
        return -1;
    }
    return 0;
}

PyDoc_STRVAR(
    place_digit_doc,
    "place_digit(pixels, width, height, canvas_size, out_width, out_height, /)\n--\n\n"
    "A scaled digit centred by its centre of mass in a canvas_size square, that square\n"
    "centred in out_width x out_height: out_height * out_width bytes.\n"
    "The same as service.images.place_digit_python."
);

static PyObject *
place_digit(PyObject *Py_UNUSED(module), PyObject *args) {
    Py_buffer pixels;
    int width, height, canvas_size, out_width, out_height;
    if (!PyArg_ParseTuple(
            args,
            "y*iiiii:place_digit",
            &pixels,
            &width,
            &height,
            &canvas_size,
            &out_width,
            &out_height
        )) {
        return NULL;
    }
    PyObject *result = NULL;
    if (check_image(&pixels, width, height) < 0 ||
        check_placement(width, height, canvas_size, out_width, out_height) < 0) {
        goto done;
    }
    result = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)out_width * out_height);
    if (result != NULL) {
        place(pixels.buf, width, height, canvas_size, (uint8_t *)PyBytes_AS_STRING(result),
              out_width, out_height);
    }

done:
    PyBuffer_Release(&pixels);
    return result;
}

PyDoc_STRVAR(
    normalize_digit_doc,
    "normalize_digit(pixels, width, height, box_size, canvas_size, out_width, out_height,\n"
    "                scale=None, /)\n"
    "--\n\n"
    "A greyscale image of a digit, MNIST style: its ink found, scaled into a box_size square\n"
    "(Lanczos), centred by its centre of mass in a canvas_size square, that square centred in\n"
    "out_width x out_height: out_height * out_width bytes, all 0 when there is no ink.\n"
    "With a scale, each byte times float32(scale) instead, as native-endian float32s: the\n"
    "model's input, with no numpy pass over the pixels.\n"
    "The same as service.images.normalize_digit_python."
);

static PyObject *
normalize_digit(PyObject *module, PyObject *args) {
    Py_buffer pixels;
    int width, height, box_size, canvas_size, out_width, out_height;
    PyObject *scale_arg = Py_None;
    if (!PyArg_ParseTuple(
            args,
            "y*iiiiii|O:normalize_digit",
            &pixels,
            &width,
            &height,
            &box_size,
            &canvas_size,
            &out_width,
            &out_height,
            &scale_arg
        )) {
        return NULL;
    }
    PyObject *result = NULL;
    InkBox box = {0};
    uint8_t *scaled = NULL;
    uint8_t *placed = NULL;
    float pixel_scale = 0.0f;
    if (check_image(&pixels, width, height) < 0) {
        goto done;
    }
    if (scale_arg != Py_None) {
        const double value = PyFloat_AsDouble(scale_arg);
        if (value == -1.0 && PyErr_Occurred()) {
            goto done;
        }
        pixel_scale = (float)value; /* numpy's np.float32(scale): the same rounding */
    }
    if (box_size < 1 || box_size > canvas_size || canvas_size > out_width ||
        canvas_size > out_height || out_width > MAX_SIDE || out_height > MAX_SIDE) {
        PyErr_Format(
            PyExc_ValueError,
            "a %d box does not fit a %d canvas in a %dx%d output",
            box_size,
            canvas_size,
            out_width,
            out_height
        );
        goto done;
    }
    const int found = ink_box(pixels.buf, width, height, &box);
    if (found < 0) {
        goto done;
    }
    const size_t n_out = (size_t)out_width * out_height;
    const int as_floats = scale_arg != Py_None;
    result = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(n_out * (as_floats ? sizeof(float) : 1)));
    if (result == NULL) {
        goto done;
    }
    /* Floats: the digit is placed in a byte buffer first, then scaled into the result. */
    uint8_t *out = (uint8_t *)PyBytes_AS_STRING(result);
    if (as_floats) {
        out = placed = PyMem_Malloc(n_out);
        if (placed == NULL) {
            PyErr_NoMemory();
            Py_CLEAR(result);
            goto done;
        }
    }
    if (found == 0) { /* a blank canvas is a black input */
        memset(out, 0, n_out);
        goto to_floats;
    }
    /* The reference's arithmetic: a double scale, Python's round() (halves to even). */
    const double scale = (double)box_size / (box.width > box.height ? box.width : box.height);
    const int new_width = fmax(1.0, nearbyint(box.width * scale));
    const int new_height = fmax(1.0, nearbyint(box.height * scale));
    scaled = PyMem_Malloc((size_t)new_width * new_height);
    if (scaled == NULL) {
        PyErr_NoMemory();
        Py_CLEAR(result);
        goto done;
    }
    if (resize(PyModule_GetState(module), box.pixels, box.width, box.height, scaled, new_width,
               new_height) < 0) {
        Py_CLEAR(result);
        goto done;
    }
    place(scaled, new_width, new_height, canvas_size, out, out_width, out_height);

to_floats:
    if (as_floats) { /* 0 times a negative scale is -0.0f, as in numpy: no memset of floats */
        float *floats = (float *)PyBytes_AS_STRING(result);
        for (size_t i = 0; i < n_out; i++) {
            floats[i] = (float)placed[i] * pixel_scale; /* numpy: uint8 -> float32, then times */
        }
    }

done:
    PyMem_Free(placed);
    PyMem_Free(scaled);
    PyMem_Free(box.pixels);
    PyBuffer_Release(&pixels);
    return result;
}

PyDoc_STRVAR(
    unfilter_png_doc,
    "unfilter_png(scanlines, width, height, /)\n--\n\n"
    "The pixels of an 8-bit greyscale, non-interlaced PNG from its inflated image data: height\n"
    "scanlines, each a filter-type byte and width bytes -> height * width bytes, as Pillow\n"
    "decodes them. Every side 1..4096; ValueError for any other size or filter type."
);

static PyObject *
unfilter_png(PyObject *Py_UNUSED(module), PyObject *args) {
    Py_buffer scanlines;
    int width, height;
    if (!PyArg_ParseTuple(args, "y*ii:unfilter_png", &scanlines, &width, &height)) {
        return NULL;
    }
    PyObject *result = NULL;
    if (width < 1 || height < 1 || width > MAX_SIDE || height > MAX_SIDE) {
        PyErr_Format(PyExc_ValueError, "the image is %dx%d pixels", width, height);
        goto done;
    }
    if (scanlines.len != (Py_ssize_t)height * (width + 1)) {
        PyErr_Format(
            PyExc_ValueError, "%zd bytes of scanlines for a %dx%d image", scanlines.len, width,
            height
        );
        goto done;
    }
    result = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)width * height);
    if (result != NULL &&
        unfilter(scanlines.buf, width, height, (uint8_t *)PyBytes_AS_STRING(result)) < 0) {
        Py_CLEAR(result);
    }

done:
    PyBuffer_Release(&scanlines);
    return result;
}

static PyMethodDef methods[] = {
    {"find_ink", find_ink, METH_VARARGS, find_ink_doc},
    {"resize_lanczos", resize_lanczos, METH_VARARGS, resize_lanczos_doc},
    {"place_digit", place_digit, METH_VARARGS, place_digit_doc},
    {"normalize_digit", normalize_digit, METH_VARARGS, normalize_digit_doc},
    {"unfilter_png", unfilter_png, METH_VARARGS, unfilter_png_doc},
    {NULL, NULL, 0, NULL},
};

static PyModuleDef_Slot slots[] = {
#ifdef Py_mod_multiple_interpreters
    {Py_mod_multiple_interpreters, Py_MOD_PER_INTERPRETER_GIL_SUPPORTED},
#endif
    {0, NULL},
};

static void
free_module(void *module) {
    ModuleState *state = PyModule_GetState((PyObject *)module);
    if (state == NULL) {
        return;
    }
    for (int i = 0; i < WEIGHT_SLOTS; i++) {
        free_weights(&state->rows[i].weights);
        free_weights(&state->cols[i].weights);
    }
}

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "service._digit",
    .m_doc = "MNIST-style digit normalisation in C; see service/images.py.",
    .m_size = sizeof(ModuleState), /* zeroed by Python: every slot empty */
    .m_methods = methods,
    .m_slots = slots,
    .m_free = free_module,
};

PyMODINIT_FUNC
PyInit__digit(void) {
    return PyModuleDef_Init(&module_def);
}
