/*
 * hash_strings(values, num_buckets, seed=0): xxh64(UTF-8 bytes of values[i], seed) % num_buckets.
 *
 * values is a sequence of str/bytes (list, tuple, 1-D object ndarray) or a 1-D
 * numpy array of dtype str_ or bytes_. Worker threads hash; none of them calls
 * the C API, and they read only immutable str/bytes data:
 *  - a list is read in place with the GIL held by the calling thread, which
 *    only waits: no Python code can run, so nothing can mutate the list or
 *    free an item. Releasing the GIL would need a private copy first (an
 *    incref and a decref of every item, two extra passes over the objects:
 *    8.7 of 23 ms for a million short strings), so lists keep it.
 *  - any other sequence is copied into a private tuple (a tuple is its own
 *    copy), which keeps every item alive; the loop then runs without the GIL.
 *  - a numpy str_/bytes_ array is read through the buffer protocol (UCS4 or
 *    bytes cells, trailing NULs stripped as numpy does), without the GIL.
 * A str's own UTF-8 cache is never filled (PyUnicode_AsUTF8 would keep a
 * second copy of every string alive for as long as the string lives):
 * non-ASCII strings are encoded into a per-thread scratch buffer instead.
 * A lone surrogate (e.g. from surrogateescape) cannot be encoded: the loop
 * records the first one, and the UnicodeEncodeError that str.encode would
 * raise is raised once the GIL is back.
 */
#include "example_module.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "xxhash64.h"

EP_INTERNAL const char ep_hash_strings_doc[] =
    "hash_strings(values, num_buckets, seed=0, threads=1) -> DLPack capsule\n\n"
    "values: list/tuple of str or bytes, or a 1-D numpy array of dtype object, str_ or bytes_.\n"
    "Returns a 1-D int64 CPU tensor (as a \"dltensor\" capsule) with\n"
    "result[i] = xxh64(utf8(values[i]), seed) % num_buckets.";

/* Growable byte buffer used without the GIL (plain malloc, never PyMem). */
typedef struct {
    uint8_t *data;
    size_t capacity;
} scratch_buffer;

static int scratch_reserve(scratch_buffer *scratch, size_t size)
{
    if (size <= scratch->capacity) {
        return 0;
    }
    uint8_t *grown = realloc(scratch->data, size);
    if (grown == NULL) {
        return -1;
    }
    scratch->data = grown;
    scratch->capacity = size;
    return 0;
}

/* Writes the UTF-8 of a non-ASCII code point as 4 bytes (only the first ones count) and returns its length.
 * Branch-free: in mixed text the 2/3/4-byte cases come in no pattern the branch predictor can learn, and
 * a mispredicted branch per character cost more than computing all three encodings. *invalid gets a
 * nonzero bit for a surrogate or a value above U+10FFFF. */
static inline Py_ssize_t encode_non_ascii(uint32_t c, uint8_t *out, uint32_t *invalid)
{
    uint32_t two = (0xC0 | (c >> 6)) | (0x80 | (c & 0x3F)) << 8;
    uint32_t three = (0xE0 | (c >> 12)) | (0x80 | ((c >> 6) & 0x3F)) << 8 | (0x80 | (c & 0x3F)) << 16;
    uint32_t four = (0xF0 | (c >> 18)) | (0x80 | ((c >> 12) & 0x3F)) << 8 | (0x80 | ((c >> 6) & 0x3F)) << 16 |
                    (uint32_t)(0x80 | (c & 0x3F)) << 24;
    uint32_t bytes = c < 0x800 ? two : c < 0x10000 ? three : four;
    memcpy(out, &bytes, 4); /* little-endian: the first byte is the low one */
    *invalid |= (uint32_t)(c - 0xD800 < 0x800) | (uint32_t)(c > 0x10FFFF);
    return 2 + (c >= 0x800) + (c >= 0x10000);
}

/* The UTF-8 of one code point at p; returns the end. ASCII takes the (well predicted) branch. */
static inline uint8_t *put_code_point(uint32_t c, uint8_t *p, uint32_t *invalid)
{
    if (c < 0x80) {
        *p = (uint8_t)c;
        return p + 1;
    }
    return p + encode_non_ascii(c, p, invalid);
}

/* The UTF-8 of one Latin-1 character (1 or 2 bytes, writes 2), branch-free; returns the end. */
static inline uint8_t *put_latin1(uint8_t c, uint8_t *p)
{
    p[0] = c < 0x80 ? c : (uint8_t)(0xC0 | (c >> 6));
    p[1] = (uint8_t)(0x80 | (c & 0x3F));
    return p + 1 + (c >> 7);
}

/* Latin-1 text: 1 or 2 bytes per character, branch-free, never invalid; 8-character ASCII runs copied
 * whole. */
static Py_ssize_t encode_ucs1(const void *text, Py_ssize_t length, uint8_t *out)
{
    const uint8_t *units = text;
    uint8_t *p = out;
    Py_ssize_t i = 0;
    for (; i + 8 <= length; i += 8) {
        uint64_t word;
        memcpy(&word, units + i, 8);
        if ((word & UINT64_C(0x8080808080808080)) == 0) {
            memcpy(p, &word, 8);
            p += 8;
            continue;
        }
        for (int k = 0; k < 8; k++) {
            uint8_t c = units[i + k];
            p = put_latin1(c, p);
        }
    }
    for (; i < length; i++) {
        uint8_t c = units[i];
        p = put_latin1(c, p);
    }
    return p - out;
}

/* UCS-2 or UCS-4 text (a str's 2- and 4-byte kinds, numpy's str_ cells); unit_size is 2 or 4, a
 * constant at each call, so the compiler specializes the loops. Units are loaded with memcpy because
 * numpy cells may be unaligned (a plain load for str data; little-endian, as everywhere in this module).
 * Runs of ASCII are tested and packed a 64-bit word (4 or 2 units) at a time. Returns the byte count,
 * or -1 if a code point cannot be encoded (a lone surrogate, a value above U+10FFFF). */
static inline Py_ssize_t encode_wide(const void *text, Py_ssize_t length, uint8_t *out, int unit_size)
{
    const char *units = text;
    const int per_word = 8 / unit_size;
    const int unit_bits = 8 * unit_size;
    const uint64_t unit_mask = unit_size == 2 ? UINT64_C(0xFFFF) : UINT64_C(0xFFFFFFFF);
    const uint64_t non_ascii = unit_size == 2 ? UINT64_C(0xFF80FF80FF80FF80) : UINT64_C(0xFFFFFF80FFFFFF80);
    uint8_t *p = out;
    uint32_t invalid = 0;
    Py_ssize_t i = 0;
    for (; i + per_word <= length; i += per_word) {
        uint64_t word;
        memcpy(&word, units + unit_size * i, 8);
        if ((word & non_ascii) == 0) {
            for (int k = 0; k < per_word; k++) {
                p[k] = (uint8_t)(word >> (unit_bits * k));
            }
            p += per_word;
            continue;
        }
        for (int k = 0; k < per_word; k++) {
            p = put_code_point((uint32_t)((word >> (unit_bits * k)) & unit_mask), p, &invalid);
        }
    }
    for (; i < length; i++) {
        uint32_t c = 0;
        memcpy(&c, units + unit_size * i, (size_t)unit_size);
        p = put_code_point(c, p, &invalid);
    }
    return invalid ? -1 : p - out;
}

/* Encodes `length` code units of `unit_size` bytes (1, 2 or 4: a str's kind) into scratch; the byte count,
 * -1 at a code point UTF-8 cannot hold, -2 without memory. */
static Py_ssize_t encode_units(int unit_size, const void *text, Py_ssize_t length, scratch_buffer *scratch)
{
    if (scratch_reserve(scratch, 4 * (size_t)length + 1) < 0) {
        return -2;
    }
    switch (unit_size) {
    case 1:
        return encode_ucs1(text, length, scratch->data);
    case 2:
        return encode_wide(text, length, scratch->data, 2);
    default:
        return encode_wide(text, length, scratch->data, 4);
    }
}

/* What went wrong in a GIL-free loop, reported once the GIL is back. */
typedef enum { LOOP_OK = 0, LOOP_NOT_ENCODABLE, LOOP_NO_MEMORY, LOOP_NOT_A_STRING, LOOP_NOT_READY } loop_status;

typedef struct {
    loop_status status;
    Py_ssize_t index;
} loop_result;

/* Types are checked here, in the worker threads (reading the type of an object that is kept alive is
 * safe): one pass over the objects instead of two, and the objects are the memory traffic. */
static loop_result hash_items(PyObject *const *items, Py_ssize_t n, uint64_t seed, ep_fastmod64 fm, int64_t *out)
{
    scratch_buffer scratch = {NULL, 0};
    loop_result result = {LOOP_OK, 0};
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = items[i];
        const void *bytes;
        Py_ssize_t size;
        if (PyBytes_Check(item)) {
            bytes = PyBytes_AS_STRING(item);
            size = PyBytes_GET_SIZE(item);
        } else if (!PyUnicode_Check(item)) {
            result = (loop_result){LOOP_NOT_A_STRING, i};
            break;
#if PY_VERSION_HEX < 0x030C0000
        } else if (!PyUnicode_IS_READY(item)) { /* legacy strings exist until 3.12; readying needs the GIL */
            result = (loop_result){LOOP_NOT_READY, i};
            break;
#endif
        } else if (PyUnicode_IS_ASCII(item)) {
            bytes = PyUnicode_DATA(item); /* ASCII data is its own UTF-8 */
            size = PyUnicode_GET_LENGTH(item);
        } else {
            size = encode_units(PyUnicode_KIND(item), PyUnicode_DATA(item), PyUnicode_GET_LENGTH(item), &scratch);
            if (size < 0) {
                result = (loop_result){size == -1 ? LOOP_NOT_ENCODABLE : LOOP_NO_MEMORY, i};
                break;
            }
            bytes = scratch.data;
        }
        out[i] = (int64_t)ep_fastmod64_apply(xxh64(bytes, (size_t)size, seed), fm);
    }
    free(scratch.data);
    return result;
}

/* Below this many strings per thread, starting a thread costs more than it saves. */
#define STRINGS_PER_THREAD 32768

/* One call's work, shared by the threads of ep_parallel_for; each range reports its first failure. */
typedef struct {
    PyObject *const *items;          /* a sequence's items, or */
    const struct fixed_width_cells_ *cells; /* a numpy array's cells */
    uint64_t seed;
    ep_fastmod64 fm;
    int64_t *out;
    pthread_mutex_t lock; /* guards first_failure */
    loop_result first_failure;
} strings_job;

static void record_failure(strings_job *job, loop_result failure)
{
    if (failure.status == LOOP_OK) {
        return;
    }
    pthread_mutex_lock(&job->lock);
    if (job->first_failure.status == LOOP_OK || failure.index < job->first_failure.index) {
        job->first_failure = failure;
    }
    pthread_mutex_unlock(&job->lock);
}

static void hash_items_range(void *context, int64_t begin, int64_t end)
{
    strings_job *job = context;
    loop_result failure = hash_items(job->items + begin, (Py_ssize_t)(end - begin), job->seed, job->fm,
                                     job->out + begin);
    failure.index += (Py_ssize_t)begin;
    record_failure(job, failure);
}

/* Cells of a numpy str_ (UCS4) or bytes_ array. */
typedef struct fixed_width_cells_ {
    const char *base;
    Py_ssize_t stride;
    Py_ssize_t itemsize;
    int is_ucs4;
} fixed_width_cells;

static loop_result hash_cells(const fixed_width_cells *cells, Py_ssize_t n, uint64_t seed, ep_fastmod64 fm,
                              int64_t *out)
{
    scratch_buffer scratch = {NULL, 0};
    loop_result result = {LOOP_OK, 0};
    for (Py_ssize_t i = 0; i < n; i++) {
        const char *cell = cells->base + i * cells->stride;
        Py_ssize_t size = cells->itemsize;
        const void *bytes = cell;
        if (cells->is_ucs4) {
            Py_ssize_t length = size / 4;
            Py_UCS4 c = 0;
            while (length > 0 && (memcpy(&c, cell + 4 * (length - 1), 4), c == 0)) {
                length--; /* numpy drops trailing NULs */
            }
            size = encode_units(4, cell, length, &scratch);
            if (size < 0) {
                result = (loop_result){size == -1 ? LOOP_NOT_ENCODABLE : LOOP_NO_MEMORY, i};
                break;
            }
            bytes = scratch.data;
        } else {
            while (size > 0 && cell[size - 1] == '\0') {
                size--;
            }
        }
        out[i] = (int64_t)ep_fastmod64_apply(xxh64(bytes, (size_t)size, seed), fm);
    }
    free(scratch.data);
    return result;
}

static void hash_cells_range(void *context, int64_t begin, int64_t end)
{
    strings_job *job = context;
    fixed_width_cells cells = *job->cells;
    cells.base += begin * cells.stride;
    loop_result failure = hash_cells(&cells, (Py_ssize_t)(end - begin), job->seed, job->fm, job->out + begin);
    failure.index += (Py_ssize_t)begin;
    record_failure(job, failure);
}

/* Runs a job's ranges (without the GIL unless keep_gil); returns its first failure. */
static loop_result run_job(strings_job *job, ep_range_function function, int64_t n, int threads, int keep_gil)
{
    job->first_failure = (loop_result){LOOP_OK, 0};
    pthread_mutex_init(&job->lock, NULL);
    if (keep_gil) {
        ep_parallel_for(n, STRINGS_PER_THREAD, threads, function, job);
    } else {
        Py_BEGIN_ALLOW_THREADS
        ep_parallel_for(n, STRINGS_PER_THREAD, threads, function, job);
        Py_END_ALLOW_THREADS
    }
    pthread_mutex_destroy(&job->lock);
    return job->first_failure;
}

/* Sets the exception for a failed loop; `item` is the offending str (NULL for numpy cells). */
static void raise_loop_error(loop_result result, PyObject *item, const fixed_width_cells *cells)
{
    if (result.status == LOOP_NO_MEMORY) {
        PyErr_NoMemory();
        return;
    }
    if (result.status == LOOP_NOT_A_STRING) {
        PyErr_Format(PyExc_TypeError, "hash_strings(): values[%zd] must be str or bytes, not %.200s", result.index,
                     Py_TYPE(item)->tp_name);
        return;
    }
    PyObject *text = item != NULL ? Py_NewRef(item)
                                  : PyUnicode_FromKindAndData(PyUnicode_4BYTE_KIND,
                                                              cells->base + result.index * cells->stride,
                                                              cells->itemsize / 4);
    if (text == NULL) {
        return; /* e.g. a code point above U+10FFFF: PyUnicode_FromKindAndData raised ValueError */
    }
    PyObject *encoded = PyUnicode_AsUTF8String(text); /* raises the UnicodeEncodeError str.encode gives */
    if (encoded != NULL) {
        Py_DECREF(encoded);
        PyErr_Format(PyExc_ValueError, "hash_strings(): values[%zd] cannot be encoded as UTF-8", result.index);
    }
    Py_DECREF(text);
}

static PyObject *hash_sequence(PyObject *values, uint64_t seed, ep_fastmod64 fm, int threads)
{
    PyObject *result = NULL;
    DLManagedTensor *out = NULL;
#ifdef Py_GIL_DISABLED
    int keep_gil = 0; /* free-threaded: holding "the GIL" would not stop other threads */
#else
    int keep_gil = PyList_CheckExact(values);
#endif
    /* A list read in place (see the top of this file); anything else copied into a private tuple. */
    PyObject *snapshot = keep_gil ? Py_NewRef(values) : PySequence_Tuple(values);
    if (snapshot == NULL) {
        return NULL;
    }
    Py_ssize_t n = PySequence_Fast_GET_SIZE(snapshot);
    PyObject *const *items = PySequence_Fast_ITEMS(snapshot);
    int64_t shape = (int64_t)n;
    out = ep_dl_alloc_int64(1, &shape, shape);
    if (out == NULL) {
        goto done;
    }
    strings_job job = {.items = items, .seed = seed, .fm = fm, .out = out->dl_tensor.data};
    loop_result loop = run_job(&job, hash_items_range, n, threads, keep_gil);
#if PY_VERSION_HEX < 0x030C0000
    if (loop.status == LOOP_NOT_READY) { /* legacy strings (gone in 3.12): ready them all, then go again */
        for (Py_ssize_t i = 0; i < n; i++) {
            if (PyUnicode_Check(items[i]) && PyUnicode_READY(items[i]) < 0) {
                goto done;
            }
        }
        loop = run_job(&job, hash_items_range, n, threads, keep_gil);
    }
#endif
    if (loop.status != LOOP_OK) {
        raise_loop_error(loop, items[loop.index], NULL);
        goto done;
    }
    result = ep_dl_capsule(out);
    out = NULL;
done:
    if (out != NULL) {
        out->deleter(out);
    }
    Py_DECREF(snapshot);
    return result;
}

/* 1 for a fixed-width str_/bytes_ format ("10w", "<3s", ...), 0 for "O", -1 (TypeError set) otherwise. */
static int parse_cell_format(const char *format, int *is_ucs4)
{
    const char *p = format != NULL ? format : "B";
    if (*p == '<' || *p == '=' || *p == '@') {
        p++; /* native order; every target of this module is little-endian */
    }
    if (strcmp(p, "O") == 0) {
        return 0;
    }
    while (*p >= '0' && *p <= '9') {
        p++;
    }
    if ((*p == 'w' || *p == 's') && p[1] == '\0') {
        *is_ucs4 = *p == 'w';
        return 1;
    }
    PyErr_Format(PyExc_TypeError, "hash_strings(): a numpy array of values must have dtype object, str_ or "
                 "bytes_ in native byte order (buffer format %s)", format != NULL ? format : "B");
    return -1;
}

static PyObject *hash_buffer(PyObject *values, uint64_t seed, ep_fastmod64 fm, int threads)
{
    PyObject *result = NULL;
    DLManagedTensor *out = NULL;
    Py_buffer view;
    int is_ucs4 = 0;
    if (PyObject_GetBuffer(values, &view, PyBUF_RECORDS_RO) < 0) {
        return NULL;
    }
    if (view.ndim != 1) {
        PyErr_Format(PyExc_ValueError, "hash_strings(): values must be 1-D, got %d dimensions", view.ndim);
        goto done;
    }
    int kind = parse_cell_format(view.format, &is_ucs4);
    if (kind <= 0) {
        PyBuffer_Release(&view);
        return kind == 0 ? hash_sequence(values, seed, fm, threads) : NULL; /* object arrays hold str/bytes objects */
    }
    fixed_width_cells cells = {view.buf, view.strides != NULL ? view.strides[0] : view.itemsize, view.itemsize,
                               is_ucs4};
    int64_t n = (int64_t)view.shape[0];
    out = ep_dl_alloc_int64(1, &n, n);
    if (out == NULL) {
        goto done;
    }
    strings_job job = {.cells = &cells, .seed = seed, .fm = fm, .out = out->dl_tensor.data};
    loop_result loop = run_job(&job, hash_cells_range, n, threads, 0);
    if (loop.status != LOOP_OK) {
        raise_loop_error(loop, NULL, &cells);
        goto done;
    }
    result = ep_dl_capsule(out);
    out = NULL;
done:
    if (out != NULL) {
        out->deleter(out);
    }
    PyBuffer_Release(&view);
    return result;
}

PyObject *ep_hash_strings(PyObject *self, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"values", "num_buckets", "seed", "threads", NULL};
    PyObject *values, *num_buckets_arg, *seed_arg = NULL;
    int threads = 1;
    uint64_t num_buckets, seed;
    (void)self;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OO|Oi:hash_strings", keywords, &values, &num_buckets_arg,
                                     &seed_arg, &threads) ||
        ep_parse_num_buckets(num_buckets_arg, &num_buckets) < 0 || ep_parse_u64(seed_arg, "seed", &seed) < 0) {
        return NULL;
    }
    ep_fastmod64 fm = ep_fastmod64_init(num_buckets);
    if (PyUnicode_Check(values) || PyBytes_Check(values) || PyByteArray_Check(values)) {
        PyErr_Format(PyExc_TypeError, "hash_strings(): values must be a list of strings, not a single %.200s; "
                     "wrap it in a list", Py_TYPE(values)->tp_name);
        return NULL;
    }
    if (PyList_Check(values) || PyTuple_Check(values)) {
        return hash_sequence(values, seed, fm, threads);
    }
    if (PyObject_CheckBuffer(values)) {
        return hash_buffer(values, seed, fm, threads);
    }
    if (PySequence_Check(values)) {
        return hash_sequence(values, seed, fm, threads);
    }
    PyErr_Format(PyExc_TypeError, "hash_strings(): values must be a list, tuple or 1-D numpy array of str/bytes, "
                 "not %.200s", Py_TYPE(values)->tp_name);
    return NULL;
}
