/*
 * fabric._core: rich display in notebooks (_repr_html_).
 *
 * Jupyter shows an object through its _repr_html_ method when it has one.
 * This part holds what the types' displays share (escaping text for HTML)
 * and EvalCassette's display. EvalRequest's and Secret's are methods in
 * their own tables (request.c, key.c) that call the helpers here.
 *
 * EvalCassette's method is added to the type's dict by this part's exec,
 * which runs after the cassette part made the type and before the module
 * is handed to anyone, so no instance or lookup cache has seen the type
 * yet (PyType_Modified invalidates the caches all the same). That keeps
 * the display apart from cassette.c, whose table is about the ledger: the
 * method reads only what the cassette itself offers (path, closed,
 * stats()), through the object's own attributes, never a module's.
 *
 * Every display is bounded, whatever the size of what it shows: a cassette
 * shows its counters (stats(), constant time), never its keys; a request
 * its repr, whose arguments are already cut to a fixed length.
 */
#include "glue.h"

PyObject *fab_py_html_escape(PyObject *text)
{
    static const char *const from[] = {"&", "<", ">", "\"", "'"};
    static const char *const to[] = {"&amp;", "&lt;", "&gt;", "&quot;", "&#x27;"};
    if (!PyUnicode_Check(text)) {
        PyErr_Format(PyExc_TypeError, "expected str, not %.100s", Py_TYPE(text)->tp_name);
        return NULL;
    }
    PyObject *out = Py_NewRef(text);
    /* "&" first, so the entities written by the later steps stay as they are. */
    for (size_t i = 0; i < sizeof(from) / sizeof(from[0]) && out != NULL; i++) {
        PyObject *a = PyUnicode_FromString(from[i]);
        PyObject *b = a ? PyUnicode_FromString(to[i]) : NULL;
        PyObject *next = b ? PyUnicode_Replace(out, a, b, -1) : NULL;
        Py_XDECREF(a);
        Py_XDECREF(b);
        Py_SETREF(out, next);
    }
    return out;
}

PyObject *fab_py_html_code(PyObject *text, const char *title)
{
    PyObject *escaped = fab_py_html_escape(text);
    if (escaped == NULL)
        return NULL;
    PyObject *out = title ? PyUnicode_FromFormat("<code title=\"%s\">%U</code>", title, escaped)
                          : PyUnicode_FromFormat("<code>%U</code>", escaped);
    Py_DECREF(escaped);
    return out;
}

/* The counters EvalCassette's display shows, in this order (a missing one,
 * from another version of stats(), is left out). */
static const char *const cassette_rows[] = {
    "mode",         "durability",     "version",      "keys",       "records",
    "bytes",        "duplicates",     "torn_tails_cut", "torn_bytes", "salvage_skips",
    "writers",      "open_seconds",
};

static PyObject *cassette_repr_html(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    PyObject *path = NULL, *closed = NULL, *stats = NULL, *rows = NULL, *head = NULL;
    PyObject *out = NULL;
    if ((path = PyObject_GetAttrString(self, "path")) == NULL ||
        (closed = PyObject_GetAttrString(self, "closed")) == NULL)
        goto done;
    PyObject *path_text = PyObject_Str(path);
    if (path_text == NULL)
        goto done;
    head = fab_py_html_code(path_text, NULL);
    Py_DECREF(path_text);
    if (head == NULL)
        goto done;
    int is_closed = PyObject_IsTrue(closed);
    if (is_closed < 0)
        goto done;
    if (is_closed) {
        out = PyUnicode_FromFormat("<b>EvalCassette</b> %U <i>closed</i>", head);
        goto done;
    }
    if ((stats = PyObject_CallMethod(self, "stats", NULL)) == NULL)
        goto done;
    if (!PyDict_Check(stats)) {
        PyErr_Format(PyExc_TypeError, "EvalCassette.stats() gave %.100s, not a dict",
                     Py_TYPE(stats)->tp_name);
        goto done;
    }
    if ((rows = PyUnicode_FromString("")) == NULL)
        goto done;
    for (size_t i = 0; i < sizeof(cassette_rows) / sizeof(cassette_rows[0]); i++) {
        PyObject *v = PyDict_GetItemString(stats, cassette_rows[i]); /* borrowed */
        if (v == NULL)
            continue;
        PyObject *text = PyObject_Str(v);
        PyObject *esc = text ? fab_py_html_escape(text) : NULL;
        Py_XDECREF(text);
        PyObject *row = esc ? PyUnicode_FromFormat(
                                  "<tr><th style=\"text-align:left\">%s</th><td>%U</td></tr>",
                                  cassette_rows[i], esc)
                            : NULL;
        Py_XDECREF(esc);
        PyObject *joined = row ? PyUnicode_Concat(rows, row) : NULL;
        Py_XDECREF(row);
        Py_SETREF(rows, joined);
        if (rows == NULL)
            goto done;
    }
    out = PyUnicode_FromFormat("<b>EvalCassette</b> %U<table>%U</table>", head, rows);
done:
    Py_XDECREF(path);
    Py_XDECREF(closed);
    Py_XDECREF(stats);
    Py_XDECREF(rows);
    Py_XDECREF(head);
    return out;
}

static PyMethodDef cassette_repr_html_def = {
    "_repr_html_", cassette_repr_html, METH_NOARGS,
    "_repr_html_($self, /)\n--\n\n"
    "An HTML table of the cassette's path and counters (for notebooks); never its keys.",
};

int fab_py_reprs_exec(PyObject *module, fab_state *st)
{
    FAB_UNUSED(module);
    PyTypeObject *tp = st->EvalCassette_Type;
    PyObject *descr = PyDescr_NewMethod(tp, &cassette_repr_html_def);
    if (descr == NULL)
        return -1;
    int rc = PyDict_SetItemString(tp->tp_dict, cassette_repr_html_def.ml_name, descr);
    Py_DECREF(descr);
    PyType_Modified(tp);
    return rc;
}
