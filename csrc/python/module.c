/*
 * module.c -- uniql._C, the single Python binding of libuniql (the only translation unit that includes
 * Python.h or NumPy headers).
 *
 * It turns NumPy arrays into pointers + shapes (never silently copying or casting: a wrong dtype, a
 * non-contiguous or misaligned array is a TypeError/ValueError naming the argument), releases the GIL
 * around the core, and turns a uq_status into an exception of the matching class with uq_last_error()
 * as its message. Per-area wrappers live in bind_<area>.inc, textually included below, so that this is
 * still one translation unit.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#define NPY_NO_DEPRECATED_API NPY_1_7_API_VERSION
#define PY_ARRAY_UNIQUE_SYMBOL uniql_ARRAY_API
#include <numpy/arrayobject.h>

#include <string.h>

#include "uniql.h"

/* ------------------------------------------------------------------------------ exceptions ---- */

static PyObject *UqError;                   /* base: uniql.UniqlError(Exception) */
static PyObject *UqExc[UQ_ERR_INTERNAL + 1]; /* per status, indexed by uq_status */

static const struct {
    uq_status st;
    const char *name;
    const char *doc;
} uq_exc_spec[] = {
    {UQ_ERR_ARG, "InvalidArgumentError", "An argument has an invalid value."},
    {UQ_ERR_SHAPE, "ShapeError", "Array shapes are inconsistent."},
    {UQ_ERR_DTYPE, "DTypeError", "Unsupported or mismatched element type."},
    {UQ_ERR_NOMEM, "OutOfMemoryError", "An allocation failed."},
    {UQ_ERR_IO, "UniqlIOError", "A file could not be opened, read, written or renamed."},
    {UQ_ERR_FORMAT, "FormatError", "A file is malformed (bad header, truncated, overlapping data ...)."},
    {UQ_ERR_NUMERIC, "NumericError", "NaN/Inf input, a matrix that is not SPD, or no convergence."},
    {UQ_ERR_UNSUPPORTED, "UnsupportedError", "A valid request that uniql does not support."},
    {UQ_ERR_RANGE, "RangeError", "An index or value is out of range."},
    {UQ_ERR_STATE, "StateError", "An object is in the wrong state for this call."},
    {UQ_ERR_INTERNAL, "InternalError", "A bug in uniql."},
};

static PyObject *uq_exc_builtin_base(uq_status st) {
    switch (st) {
    case UQ_ERR_ARG: case UQ_ERR_SHAPE: case UQ_ERR_FORMAT: case UQ_ERR_RANGE: return PyExc_ValueError;
    case UQ_ERR_DTYPE: return PyExc_TypeError;
    case UQ_ERR_NOMEM: return PyExc_MemoryError;
    case UQ_ERR_IO: return PyExc_OSError;
    case UQ_ERR_NUMERIC: return PyExc_ArithmeticError;
    case UQ_ERR_UNSUPPORTED: return PyExc_NotImplementedError;
    default: return PyExc_RuntimeError;
    }
}

/* The exception class of a status (the uniql subclass; its built-in base before module init). */
static PyObject *uq_exc(uq_status st) {
    if (st > UQ_OK && st <= UQ_ERR_INTERNAL && UqExc[st]) return UqExc[st];
    return uq_exc_builtin_base(st);
}

/* Raises the exception for st with this thread's error message; returns NULL for `return uq_raise(st);`. */
static PyObject *uq_raise(uq_status st) {
    const char *msg = uq_last_error();
    PyObject *cls = (st > UQ_OK && st <= UQ_ERR_INTERNAL && UqExc[st]) ? UqExc[st] : UqError;
    PyErr_SetString(cls, (msg && msg[0]) ? msg : uq_status_name(st));
    return NULL;
}

/* ------------------------------------------------------------------------- array helpers ---- */

static const char *uq_npy_name(int typenum) {
    switch (typenum) {
    case NPY_FLOAT32: return "float32";
    case NPY_FLOAT64: return "float64";
    case NPY_FLOAT16: return "float16";
    case NPY_UINT8: return "uint8";
    case NPY_INT8: return "int8";
    case NPY_UINT16: return "uint16";
    case NPY_INT32: return "int32";
    case NPY_INT64: return "int64";
    default: return "?";
    }
}

/* Checks that obj is an ndarray of exactly `typenum`, C-contiguous, aligned, with `ndim` dimensions
 * (ndim < 0: any), writeable if `writeable`. Returns a borrowed PyArrayObject* or NULL with an exception
 * naming `name`. Never copies or casts. */
static PyArrayObject *uq_array(PyObject *obj, const char *name, int typenum, int ndim, int writeable) {
    if (!PyArray_Check(obj)) {
        PyErr_Format(uq_exc(UQ_ERR_DTYPE), "%s must be a numpy.ndarray of %s, got %s", name, uq_npy_name(typenum),
                     Py_TYPE(obj)->tp_name);
        return NULL;
    }
    PyArrayObject *a = (PyArrayObject *)obj;
    if (PyArray_TYPE(a) != typenum) {
        PyErr_Format(uq_exc(UQ_ERR_DTYPE), "%s must have dtype %s, got %s", name, uq_npy_name(typenum),
                     PyArray_DESCR(a)->typeobj->tp_name);
        return NULL;
    }
    if (ndim >= 0 && PyArray_NDIM(a) != ndim) {
        PyErr_Format(uq_exc(UQ_ERR_SHAPE), "%s must be %d-dimensional, got %d dimensions", name, ndim, PyArray_NDIM(a));
        return NULL;
    }
    if (!PyArray_IS_C_CONTIGUOUS(a)) {
        PyErr_Format(uq_exc(UQ_ERR_ARG), "%s must be C-contiguous (use numpy.ascontiguousarray)", name);
        return NULL;
    }
    if (!PyArray_ISALIGNED(a)) {
        PyErr_Format(uq_exc(UQ_ERR_ARG), "%s must be aligned", name);
        return NULL;
    }
    if (writeable && !PyArray_ISWRITEABLE(a)) {
        PyErr_Format(uq_exc(UQ_ERR_ARG), "%s must be writeable", name);
        return NULL;
    }
    return a;
}

static int64_t uq_dim(PyArrayObject *a, int i) { return (int64_t)PyArray_DIM(a, i); }

/* Raises ValueError "<what>: expected shape ..., got ..." when a's dims differ from dims[0..ndim). */
static int uq_expect_shape(PyArrayObject *a, const char *name, int ndim, const int64_t *dims) {
    int ok = PyArray_NDIM(a) == ndim;
    for (int i = 0; ok && i < ndim; i++) ok = uq_dim(a, i) == dims[i];
    if (ok) return 0;
    char want[128] = "(", got[128] = "(";
    for (int i = 0; i < ndim; i++) {
        size_t l = strlen(want);
        snprintf(want + l, sizeof want - l, i ? ", %lld" : "%lld", (long long)dims[i]);
    }
    for (int i = 0; i < PyArray_NDIM(a); i++) {
        size_t l = strlen(got);
        snprintf(got + l, sizeof got - l, i ? ", %lld" : "%lld", (long long)uq_dim(a, i));
    }
    PyErr_Format(uq_exc(UQ_ERR_SHAPE), "%s must have shape %s), got %s)", name, want, got);
    return -1;
}

/* ------------------------------------------------------------------------------- core ---- */

static PyObject *py_version(PyObject *self, PyObject *args) {
    (void)self; (void)args;
    return PyUnicode_FromString(uq_version());
}

/* _convert(src, dst): half-precision conversions between matching-length arrays.
 * float16->float32, uint16(bf16)->float32 with bf16=True, float32->float16, float32->uint16(bf16). */
static PyObject *py_convert(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"src", "dst", "bf16", NULL};
    PyObject *osrc, *odst;
    int bf16 = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO|p", kwlist, &osrc, &odst, &bf16)) return NULL;
    if (!PyArray_Check(osrc) || !PyArray_Check(odst)) {
        PyErr_SetString(PyExc_TypeError, "src and dst must be numpy arrays");
        return NULL;
    }
    int ts = PyArray_TYPE((PyArrayObject *)osrc);
    int half = bf16 ? NPY_UINT16 : NPY_FLOAT16;
    int to32 = ts != NPY_FLOAT32;
    PyArrayObject *s = uq_array(osrc, "src", to32 ? half : NPY_FLOAT32, -1, 0);
    if (!s) return NULL;
    PyArrayObject *d = uq_array(odst, "dst", to32 ? NPY_FLOAT32 : half, -1, 1);
    if (!d) return NULL;
    if (PyArray_SIZE(s) != PyArray_SIZE(d)) {
        PyErr_SetString(PyExc_ValueError, "src and dst must have the same number of elements");
        return NULL;
    }
    int64_t n = (int64_t)PyArray_SIZE(s);
    uq_status st;
    Py_BEGIN_ALLOW_THREADS
    if (to32)
        st = bf16 ? uq_convert_bf16_to_f32(PyArray_DATA(s), n, PyArray_DATA(d))
                  : uq_convert_f16_to_f32(PyArray_DATA(s), n, PyArray_DATA(d));
    else
        st = bf16 ? uq_convert_f32_to_bf16(PyArray_DATA(s), n, PyArray_DATA(d))
                  : uq_convert_f32_to_f16(PyArray_DATA(s), n, PyArray_DATA(d));
    Py_END_ALLOW_THREADS
    if (st != UQ_OK) return uq_raise(st);
    Py_RETURN_NONE;
}

/* _check_finite(a, name): raises NumericError naming `name` when a (float32/float64) holds NaN/Inf. */
static PyObject *py_check_finite(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *o;
    const char *name;
    if (!PyArg_ParseTuple(args, "Os", &o, &name)) return NULL;
    if (!PyArray_Check(o)) {
        PyErr_Format(PyExc_TypeError, "%s must be a numpy array", name);
        return NULL;
    }
    int t = PyArray_TYPE((PyArrayObject *)o);
    PyArrayObject *a = uq_array(o, name, t == NPY_FLOAT64 ? NPY_FLOAT64 : NPY_FLOAT32, -1, 0);
    if (!a) return NULL;
    uq_status st;
    int64_t n = (int64_t)PyArray_SIZE(a);
    Py_BEGIN_ALLOW_THREADS
    st = t == NPY_FLOAT64 ? uq_check_finite_f64(PyArray_DATA(a), n, name) : uq_check_finite_f32(PyArray_DATA(a), n, name);
    Py_END_ALLOW_THREADS
    if (st != UQ_OK) return uq_raise(st);
    Py_RETURN_NONE;
}

#define UQ_CORE_METHODS                                                                                  \
    {"version", py_version, METH_NOARGS, "version() -> str: libuniql version."},                          \
    {"convert", (PyCFunction)(void (*)(void))py_convert, METH_VARARGS | METH_KEYWORDS,                     \
     "convert(src, dst, bf16=False): float16/bfloat16(uint16) <-> float32, round to nearest even."},     \
    {"check_finite", py_check_finite, METH_VARARGS, "check_finite(a, name): NumericError on NaN/Inf."},

/* ------------------------------------------------------------------------- area bindings ---- */

#include "bind_stats.inc"
#include "bind_quant.inc"
#include "bind_io.inc"
#include "bind_runtime.inc"
#include "bind_compress.inc"
#include "bind_ssm.inc"
#include "bind_batch.inc"
#include "bind_elastic.inc"

static PyMethodDef uq_methods[] = {
    UQ_CORE_METHODS
    UQ_STATS_METHODS
    UQ_QUANT_METHODS
    UQ_IO_METHODS
    UQ_RUNTIME_METHODS
    UQ_COMPRESS_METHODS
    UQ_SSM_METHODS
    UQ_BATCH_METHODS
    UQ_ELASTIC_METHODS
    {NULL, NULL, 0, NULL}
};

/* ------------------------------------------------------------------------------ module ---- */

static int uq_exec(PyObject *m) {
    if (PyArray_ImportNumPyAPI() < 0) return -1;
    if (!UqError) {
        UqError = PyErr_NewExceptionWithDoc("uniql.UniqlError", "Base class of every uniql error.", PyExc_Exception, NULL);
        if (!UqError) return -1;
        for (size_t i = 0; i < sizeof uq_exc_spec / sizeof uq_exc_spec[0]; i++) {
            char full[96];
            snprintf(full, sizeof full, "uniql.%s", uq_exc_spec[i].name);
            PyObject *bases = PyTuple_Pack(2, UqError, uq_exc_builtin_base(uq_exc_spec[i].st));
            if (!bases) return -1;
            PyObject *cls = PyErr_NewExceptionWithDoc(full, uq_exc_spec[i].doc, bases, NULL);
            Py_DECREF(bases);
            if (!cls) return -1;
            UqExc[uq_exc_spec[i].st] = cls;
        }
    }
    if (PyModule_AddObjectRef(m, "UniqlError", UqError) < 0) return -1;
    for (size_t i = 0; i < sizeof uq_exc_spec / sizeof uq_exc_spec[0]; i++)
        if (PyModule_AddObjectRef(m, uq_exc_spec[i].name, UqExc[uq_exc_spec[i].st]) < 0) return -1;
    if (uq_stats_exec(m) < 0 || uq_quant_exec(m) < 0 || uq_io_exec(m) < 0 || uq_runtime_exec(m) < 0 ||
        uq_compress_exec(m) < 0 || uq_ssm_exec(m) < 0 ||
        uq_batch_exec(m) < 0) return -1;
    return 0;
}

static PyModuleDef_Slot uq_slots[] = {
    {Py_mod_exec, uq_exec},
    {0, NULL},
};

static struct PyModuleDef uq_module = {
    PyModuleDef_HEAD_INIT, "uniql._C", "uniql._C: binding of libuniql (C11 core of uniql).", 0, uq_methods,
    uq_slots, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__C(void) { return PyModuleDef_Init(&uq_module); }
