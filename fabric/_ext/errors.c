/*
 * The package's exceptions and the mapping from core error codes.
 */
#include "glue.h"

#include <errno.h>

int fab_py_errors_exec(PyObject *module, fab_state *st)
{
#define FAB__EXC_MAKE(name, parent, base, doc)                                  \
    {                                                                           \
        PyObject *bases;                                                        \
        int idx_parent = FAB__EXC_PARENT_##parent;                              \
        if (idx_parent < 0)                                                     \
            bases = PyTuple_Pack(1, base);                                      \
        else                                                                    \
            bases = PyTuple_Pack(2, st->exc[idx_parent], base);                 \
        if (bases == NULL)                                                      \
            return -1;                                                          \
        st->exc[FAB_PYEXC_##name] =                                             \
            PyErr_NewExceptionWithDoc("fabric." #name, doc, bases, NULL);       \
        Py_DECREF(bases);                                                       \
        if (st->exc[FAB_PYEXC_##name] == NULL)                                  \
            return -1;                                                          \
        if (PyModule_AddObjectRef(module, #name, st->exc[FAB_PYEXC_##name]) < 0) \
            return -1;                                                          \
    }
#define FAB__EXC_PARENT_NONE (-1)
#define FAB__EXC_PARENT_OF(name, parent, base, doc) enum { FAB__EXC_PARENT_##name = FAB_PYEXC_##name };
    FAB_PY_EXCEPTIONS(FAB__EXC_PARENT_OF)
    FAB_PY_EXCEPTIONS(FAB__EXC_MAKE)
#undef FAB__EXC_MAKE
#undef FAB__EXC_PARENT_OF
    return 0;
}

int fab_py_errors_traverse(fab_state *st, visitproc visit, void *arg)
{
    for (int i = 0; i < FAB_PYEXC_COUNT; i++)
        Py_VISIT(st->exc[i]);
    return 0;
}

void fab_py_errors_clear(fab_state *st)
{
    for (int i = 0; i < FAB_PYEXC_COUNT; i++)
        Py_CLEAR(st->exc[i]);
}

/* The exception class a code maps to when the caller names none: failures
 * about a file are the ledger's; failures of untrusted bytes are decoding
 * errors. NULL: MemoryError. */
static PyObject *class_of(fab_state *st, int code, int about_file)
{
    switch (code) {
    case FAB_ENOMEM:
        return NULL;
    case FAB_ETYPE:
        return PyExc_TypeError;
    case FAB_ELOCKED:
        return st->exc[FAB_PYEXC_LedgerLockedError];
    case FAB_EIO:
        return about_file ? st->exc[FAB_PYEXC_LedgerError] : PyExc_OSError;
    case FAB_ESTATE:
    case FAB_EOVERFLOW:
        return about_file ? st->exc[FAB_PYEXC_LedgerError] : st->exc[FAB_PYEXC_FabricError];
    case FAB_ECRYPTO:
        return st->exc[FAB_PYEXC_FabricError];
    case FAB_EVERSION:
        return about_file ? st->exc[FAB_PYEXC_LedgerVersionError] : PyExc_ValueError;
    case FAB_ECORRUPT:
        return about_file ? st->exc[FAB_PYEXC_LedgerCorruptionError]
                          : st->exc[FAB_PYEXC_DecodeError];
    case FAB_EFORMAT:
    case FAB_ETRUNCATED:
        return about_file ? st->exc[FAB_PYEXC_LedgerFormatError] : st->exc[FAB_PYEXC_DecodeError];
    default:
        return PyExc_ValueError;
    }
}

static int set_attr(PyObject *exc, const char *name, PyObject *value)
{
    if (value == NULL)
        return -1;
    int rc = PyObject_SetAttrString(exc, name, value);
    Py_DECREF(value);
    return rc;
}

PyObject *fab_py_raise(fab_state *st, int code, const fab_py_err_info *info)
{
    static const fab_py_err_info none = {.exc = -1};
    if (info == NULL)
        info = &none;
    if (code == FAB_ENOMEM)
        return PyErr_NoMemory(); /* whatever class the caller named */
    PyObject *type = info->exc >= 0 ? st->exc[info->exc] : class_of(st, code, info->path != NULL);
    if (type == NULL)
        return PyErr_NoMemory();
    const char *msg = info->msg && info->msg[0] ? info->msg : fab_strerror(code);
    PyObject *text;
    if (info->path && info->has_offset && code != FAB_ECORRUPT)
        text = PyUnicode_FromFormat("%U: %s (at offset %llu)", info->path, msg,
                                    (unsigned long long)info->offset);
    else if (info->path)
        text = PyUnicode_FromFormat("%U: %s", info->path, msg);
    else if (info->has_offset && info->violation == NULL)
        text = PyUnicode_FromFormat("at offset %llu: %s", (unsigned long long)info->offset, msg);
    else if (info->context)
        text = PyUnicode_FromFormat("%s: %s", info->context, msg);
    else
        text = PyUnicode_FromString(msg);
    if (text == NULL)
        return NULL;
    PyObject *exc;
    if (PyType_IsSubtype((PyTypeObject *)type, (PyTypeObject *)PyExc_OSError) &&
        (info->path || info->sys_errno)) {
        /* OSError(errno, strerror, filename) sets .errno and .filename. */
        int e = info->sys_errno ? info->sys_errno : code == FAB_ESTATE ? EBADF : EIO;
        exc = PyObject_CallFunction(type, "iOO", e, text, info->path ? info->path : Py_None);
    } else {
        exc = PyObject_CallOneArg(type, text);
    }
    Py_DECREF(text);
    if (exc == NULL)
        return NULL;
    int about_file = info->path != NULL;
    if ((about_file && set_attr(exc, "path", Py_NewRef(info->path)) < 0) ||
        ((about_file || info->has_offset || info->violation) &&
         set_attr(exc, "offset", info->has_offset ? PyLong_FromUnsignedLongLong(info->offset)
                                                  : Py_NewRef(Py_None)) < 0) ||
        (info->violation &&
         (set_attr(exc, "frame_offset", info->has_frame_offset
                                            ? PyLong_FromUnsignedLongLong(info->frame_offset)
                                            : Py_NewRef(Py_None)) < 0 ||
          set_attr(exc, "violation", PyUnicode_FromString(info->violation)) < 0)) ||
        (code == FAB_ELOCKED && set_attr(exc, "pid", PyLong_FromLong(info->pid)) < 0) ||
        (code == FAB_EVERSION && set_attr(exc, "version", PyLong_FromLong(info->version)) < 0)) {
        Py_DECREF(exc);
        return NULL;
    }
    PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
    Py_DECREF(exc);
    return NULL;
}

PyObject *fab_py_raise_code(fab_state *st, int code, const char *context)
{
    fab_py_err_info info = {.context = context, .exc = -1};
    if (code == FAB_EIO || code == FAB_ELOCKED)
        info.sys_errno = EIO; /* an OSError with .errno, as before the mapper */
    return fab_py_raise(st, code, &info);
}

PyTypeObject *fab_py_add_type(PyObject *module, PyType_Spec *spec, PyObject *base)
{
    PyObject *tp = PyType_FromModuleAndSpec(module, spec, base);
    if (tp == NULL)
        return NULL;
    if (PyModule_AddType(module, (PyTypeObject *)tp) < 0) {
        Py_DECREF(tp);
        return NULL;
    }
    return (PyTypeObject *)tp; /* the caller's state takes this reference */
}

PyObject *fab_py_reduce(PyObject *self, PyObject *state)
{
    if (state == NULL)
        return NULL;
    PyObject *fn = PyObject_GetAttrString((PyObject *)Py_TYPE(self), "_unpickle");
    if (fn == NULL) {
        Py_DECREF(state);
        return NULL;
    }
    return Py_BuildValue("(N(N))", fn, state);
}
