/*
 * The one argument parser of the glue's METH_FASTCALL | METH_KEYWORDS
 * functions and methods (see fab_py_params in glue.h).
 *
 * A vectorcall hands over a C array of arguments and, for the keywords, a
 * tuple of their names: parsing them is a loop over that tuple, with no
 * tuple or dict built. Names are compared as ASCII bytes (every parameter
 * name of the glue is ASCII).
 */
#include "glue.h"

#include <string.h>

/* Whether the str s is exactly the ASCII name c (of length n). */
static int name_is(PyObject *s, const char *c, size_t n)
{
    if (PyUnicode_IS_COMPACT_ASCII(s))
        return (size_t)PyUnicode_GET_LENGTH(s) == n && memcmp(PyUnicode_DATA(s), c, n) == 0;
    return PyUnicode_CompareWithASCIIString(s, c) == 0;
}

int fab_py_parse(const fab_py_params *p, PyObject *const *args, Py_ssize_t nargsf,
                 PyObject *kwnames, PyObject **out)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (nargs > p->maxpos) {
        if (p->maxpos == 0)
            PyErr_Format(PyExc_TypeError, "%s() takes no positional arguments (%zd given)",
                         p->fname, nargs);
        else
            PyErr_Format(PyExc_TypeError, "%s() takes at most %d positional argument%s "
                         "(%zd given)", p->fname, p->maxpos, p->maxpos == 1 ? "" : "s", nargs);
        return -1;
    }
    for (Py_ssize_t i = 0; i < nargs; i++)
        out[i] = args[i];
    Py_ssize_t nkw = kwnames == NULL ? 0 : PyTuple_GET_SIZE(kwnames);
    for (Py_ssize_t k = 0; k < nkw; k++) {
        PyObject *name = PyTuple_GET_ITEM(kwnames, k);
        int j = p->posonly;
        while (j < p->n && !name_is(name, p->names[j], strlen(p->names[j])))
            j++;
        if (j == p->n) {
            PyErr_Format(PyExc_TypeError, "%s() got an unexpected keyword argument %R",
                         p->fname, name);
            return -1;
        }
        if (j < nargs) {
            PyErr_Format(PyExc_TypeError, "%s() got multiple values for argument '%s'",
                         p->fname, p->names[j]);
            return -1;
        }
        out[j] = args[nargs + k];
    }
    if (nargs < p->required) {
        for (int j = (int)nargs; j < p->required; j++) {
            if (out[j] == NULL) {
                PyErr_Format(PyExc_TypeError, "%s() missing required argument '%s'",
                             p->fname, p->names[j]);
                return -1;
            }
        }
    }
    return 0;
}
