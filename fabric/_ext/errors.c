/*
 * The package's exceptions and the mapping from core error codes.
 */
#include "glue.h"

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

PyObject *fab_py_raise_code(fab_state *st, int code, const char *context)
{
    PyObject *type;
    switch (code) {
    case FAB_ENOMEM:
        return PyErr_NoMemory();
    case FAB_ETYPE:
        type = PyExc_TypeError;
        break;
    case FAB_EIO:
    case FAB_ELOCKED:
        type = PyExc_OSError;
        break;
    case FAB_ECRYPTO:
    case FAB_ESTATE:
        type = st->exc[FAB_PYEXC_FabricError];
        break;
    default:
        type = PyExc_ValueError;
        break;
    }
    if (context)
        PyErr_Format(type, "%s: %s", context, fab_strerror(code));
    else
        PyErr_SetString(type, fab_strerror(code));
    return NULL;
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
