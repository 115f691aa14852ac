/* Parsing of the integer arguments shared by the hashing functions. */
#include "example_module.h"

int ep_parse_num_buckets(PyObject *obj, uint64_t *out)
{
    int overflow = 0;
    int status = -1;
    PyObject *index = PyNumber_Index(obj); /* TypeError for float, None, str, ... */
    if (index == NULL) {
        return -1;
    }
    long long value = PyLong_AsLongLongAndOverflow(index, &overflow);
    if (value == -1 && PyErr_Occurred()) {
        goto done;
    }
    if (overflow != 0 || value < 1) {
        PyErr_Format(PyExc_ValueError, "num_buckets must be an integer in [1, 2**63 - 1], got %R", index);
        goto done;
    }
    *out = (uint64_t)value;
    status = 0;
done:
    Py_DECREF(index);
    return status;
}

int ep_parse_u64(PyObject *obj, const char *what, uint64_t *out)
{
    *out = 0;
    if (obj == NULL) {
        return 0;
    }
    PyObject *index = PyNumber_Index(obj);
    if (index == NULL) {
        return -1;
    }
    unsigned long long value = PyLong_AsUnsignedLongLong(index);
    if (value == (unsigned long long)-1 && PyErr_Occurred()) {
        /* Negative values raise OverflowError too: both mean "out of range" to the caller. */
        if (PyErr_ExceptionMatches(PyExc_OverflowError)) {
            PyErr_Clear();
            PyErr_Format(PyExc_ValueError, "%s must be an integer in [0, 2**64 - 1], got %R", what, index);
        }
        Py_DECREF(index);
        return -1;
    }
    Py_DECREF(index);
    *out = (uint64_t)value;
    return 0;
}
