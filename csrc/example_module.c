/*
 * example_package's extension module, in C against the CPython C API only
 * (no pybind11, no torch C++ API): the recipe's GetStaticInteger and
 * Add42ToInteger, and feature hashing (hash_strings.c, hash_ids.c).
 *
 * The module's name comes from torch's -DTORCH_EXTENSION_NAME=<name>, so the
 * init function is PyInit_<name> whatever name the package loads it under.
 */
#include "example_module.h"

#define CONCAT_(a, b) a##b
#define CONCAT(a, b) CONCAT_(a, b)
#define STRINGIFY_(x) #x
#define STRINGIFY(x) STRINGIFY_(x)

static PyObject *get_static_integer(PyObject *self, PyObject *unused)
{
    (void)self;
    (void)unused;
    return PyLong_FromLong(42);
}

static PyObject *add_42_to_integer(PyObject *self, PyObject *arg)
{
    (void)self;
    if (!PyLong_Check(arg)) {
        PyErr_Format(PyExc_TypeError, "Add42ToInteger: expected an int, got %.200s", Py_TYPE(arg)->tp_name);
        return NULL;
    }
    PyObject *forty_two = PyLong_FromLong(42);
    if (forty_two == NULL) {
        return NULL;
    }
    PyObject *result = PyNumber_Add(arg, forty_two);
    Py_DECREF(forty_two);
    return result;
}

static PyObject *has_cuda(PyObject *self, PyObject *unused)
{
    (void)self;
    (void)unused;
#ifdef EP_WITH_CUDA
    Py_RETURN_TRUE;
#else
    Py_RETURN_FALSE;
#endif
}

static PyMethodDef module_methods[] = {
    {.ml_name = "GetStaticInteger", .ml_meth = get_static_integer, .ml_flags = METH_NOARGS,
     .ml_doc = "GetStaticInteger() -> int\n\nReturn 42."},
    {.ml_name = "Add42ToInteger", .ml_meth = add_42_to_integer, .ml_flags = METH_O,
     .ml_doc = "Add42ToInteger(x: int) -> int\n\nReturn x + 42 (any size of int)."},
    {.ml_name = "hash_strings", .ml_meth = (PyCFunction)(void (*)(void))ep_hash_strings,
     .ml_flags = METH_VARARGS | METH_KEYWORDS, .ml_doc = ep_hash_strings_doc},
    {.ml_name = "hash_ids", .ml_meth = (PyCFunction)(void (*)(void))ep_hash_ids,
     .ml_flags = METH_VARARGS | METH_KEYWORDS, .ml_doc = ep_hash_ids_doc},
    {.ml_name = "hash_ids_into", .ml_meth = (PyCFunction)(void (*)(void))ep_hash_ids_into,
     .ml_flags = METH_VARARGS | METH_KEYWORDS, .ml_doc = ep_hash_ids_into_doc},
    {.ml_name = "has_cuda", .ml_meth = has_cuda, .ml_flags = METH_NOARGS,
     .ml_doc = "has_cuda() -> bool\n\nTrue when the module was built with its CUDA kernel."},
    {NULL, NULL, 0, NULL},
};

/* What the module supports, stated to the interpreter (each slot exists from the Python that introduced it). */
static PyModuleDef_Slot module_slots[] = {
#if PY_VERSION_HEX >= 0x030C0000
    /* A per-interpreter GIL is fine: the module has no global state. Nothing static is written after
     * load (the method table and the docs are constants), it defines no type and caches no object, and
     * every result owns its memory, so each interpreter's copy of the module is independent. */
    {Py_mod_multiple_interpreters, Py_MOD_PER_INTERPRETER_GIL_SUPPORTED},
#endif
#if PY_VERSION_HEX >= 0x030D0000
    /* No GIL needed (a free-threaded Python keeps it off on import): the functions share no mutable
     * state, the loops read only immutable str/bytes objects kept alive by a private tuple (the
     * Py_GIL_DISABLED path of hash_strings.c) or memory held by a DLPack/buffer export. */
    {Py_mod_gil, Py_MOD_GIL_NOT_USED},
#endif
    {0, NULL},
};

static struct PyModuleDef module_definition = {
    PyModuleDef_HEAD_INIT,
    .m_name = STRINGIFY(TORCH_EXTENSION_NAME),
    .m_doc = "example_package's C extension: a CPython C API module built by cpp_extension_tools.",
    .m_size = 0,
    .m_methods = module_methods,
    .m_slots = module_slots,
};

PyMODINIT_FUNC CONCAT(PyInit_, TORCH_EXTENSION_NAME)(void)
{
    return PyModuleDef_Init(&module_definition);
}
