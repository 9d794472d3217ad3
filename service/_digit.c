/* service._digit: the two per-pixel steps of MNIST-style digit normalisation, in C.
 *
 * service/images.py holds the reference of both steps in numpy (find_ink_python and
 * place_digit_python) and the documentation of what they do; the functions here must return
 * exactly the same bytes, which tests/test_digit_kernel.py checks on generated, hostile and real
 * digits. They exist because on a 28x28 digit numpy's per-call overhead, not the pixels, is the
 * cost: the reference's two steps take about 23 us in a loop (some 25 numpy calls), these 2 us.
 *
 * Every value stays exact as in the reference: pixels are integers 0..255 until the one float32
 * multiplication by 255 / peak, which is done in float32 as numpy does it, and the centre of
 * mass sums integers in doubles (exact far beyond 256x256 pixels).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <math.h>
#include <stdint.h>
#include <string.h>

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
    uint8_t *ink = NULL;
    if (check_image(&pixels, width, height) < 0) {
        goto done;
    }
    const uint8_t *src = pixels.buf;
    const Py_ssize_t n_pixels = pixels.len;

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
    const Py_ssize_t paper = (Py_ssize_t)(0.9 * (double)(n - 1));
    const int dark_on_light = kth_smallest(histogram, n / 2) > 127;
    const int tone =
        dark_on_light ? kth_smallest(histogram, n - 1 - paper) : kth_smallest(histogram, paper);

    ink = PyMem_Malloc(n_pixels);
    if (ink == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    int peak = 0;
    for (Py_ssize_t i = 0; i < n_pixels; i++) {
        int v = dark_on_light ? tone - src[i] : src[i] - tone;
        ink[i] = (uint8_t)(v > 0 ? v : 0);
        if (ink[i] > peak) {
            peak = ink[i];
        }
    }
    if (peak < 32) {
        result = Py_NewRef(Py_None);
        goto done;
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
    const int box_width = right - left + 1, box_height = bottom - top + 1;
    PyObject *box = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)box_width * box_height);
    if (box == NULL) {
        goto done;
    }
    uint8_t *out = (uint8_t *)PyBytes_AS_STRING(box);
    for (int y = 0; y < box_height; y++) {
        const uint8_t *row = ink + (Py_ssize_t)(top + y) * width + left;
        for (int x = 0; x < box_width; x++) {
            out[(Py_ssize_t)y * box_width + x] = (uint8_t)((float)row[x] * stretch);
        }
    }
    result = Py_BuildValue("iiiiN", left, top, box_width, box_height, box);

done:
    PyMem_Free(ink);
    PyBuffer_Release(&pixels);
    return result;
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
    if (check_image(&pixels, width, height) < 0) {
        goto done;
    }
    if (width > canvas_size || height > canvas_size || canvas_size > out_width ||
        canvas_size > out_height || out_width > 4096 || out_height > 4096) {
        PyErr_Format(
            PyExc_ValueError,
            "a %dx%d digit does not fit a %d canvas in a %dx%d output",
            width,
            height,
            canvas_size,
            out_width,
            out_height
        );
        goto done;
    }
    const uint8_t *src = pixels.buf;
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

    result = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)out_width * out_height);
    if (result == NULL) {
        goto done;
    }
    uint8_t *out = (uint8_t *)PyBytes_AS_STRING(result);
    memset(out, 0, (size_t)out_width * out_height);
    for (int y = 0; y < height; y++) {
        memcpy(out + (y0 + y) * out_width + x0, src + (Py_ssize_t)y * width, width);
    }

done:
    PyBuffer_Release(&pixels);
    return result;
}

static PyMethodDef methods[] = {
    {"find_ink", find_ink, METH_VARARGS, find_ink_doc},
    {"place_digit", place_digit, METH_VARARGS, place_digit_doc},
    {NULL, NULL, 0, NULL},
};

static PyModuleDef_Slot slots[] = {
#ifdef Py_mod_multiple_interpreters
    {Py_mod_multiple_interpreters, Py_MOD_PER_INTERPRETER_GIL_SUPPORTED},
#endif
    {0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "service._digit",
    .m_doc = "MNIST-style digit normalisation steps in C; see service/images.py.",
    .m_size = 0,
    .m_methods = methods,
    .m_slots = slots,
};

PyMODINIT_FUNC
PyInit__digit(void) {
    return PyModuleDef_Init(&module_def);
}
