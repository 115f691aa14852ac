/*
 * example_package's extension module, in C against the CPython C API only.
 *
 * The module's name comes from torch's -DTORCH_EXTENSION_NAME=<name>, so the
 * init function is PyInit_<name> whatever name the package loads it under.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

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

static PyMethodDef module_methods[] = {
    {.ml_name = "GetStaticInteger", .ml_meth = get_static_integer, .ml_flags = METH_NOARGS,
     .ml_doc = "GetStaticInteger() -> int\n\nReturn 42."},
    {.ml_name = "Add42ToInteger", .ml_meth = add_42_to_integer, .ml_flags = METH_O,
     .ml_doc = "Add42ToInteger(x: int) -> int\n\nReturn x + 42 (any size of int)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_definition = {
    PyModuleDef_HEAD_INIT,
    .m_name = STRINGIFY(TORCH_EXTENSION_NAME),
    .m_doc = "example_package's C extension: a CPython C API module built by cpp_extension_tools.",
    .m_size = 0,
    .m_methods = module_methods,
};

PyMODINIT_FUNC CONCAT(PyInit_, TORCH_EXTENSION_NAME)(void)
{
    return PyModuleDef_Init(&module_definition);
}
