/*
 * fabric._core: module definition and multi-phase initialization.
 *
 * GIL and sub-interpreters. The module relies on the GIL: module state (the
 * spare hasher, the key-order memo) is read and written only while it is
 * held, and it is released only around work that touches no Python object
 * (hashing a large buffer, ledger I/O under a per-object lock). Every type
 * and exception lives in the module state (PEP 489), so each interpreter
 * that imports the module gets its own copy; nothing of one interpreter is
 * reachable from another. Python 3.11, the oldest version supported, has
 * neither Py_mod_multiple_interpreters (3.12) nor Py_mod_gil (3.13); when
 * the oldest supported version gains them, the slots to declare are
 * Py_MOD_PER_INTERPRETER_GIL_SUPPORTED (nothing is shared between
 * interpreters) and Py_MOD_GIL_USED (the state above is not thread-safe
 * without the GIL).
 */
#include "glue.h"

#include "fabric/crc32c.h"

/* Each part of the glue: how it adds its types and functions to the module,
 * and how the collector reaches (traverse) and drops (clear) what it keeps
 * in the module state. Parts run in this order; a part's exec may use what
 * an earlier part made. NULL: the part keeps nothing of that kind. */
static const struct part {
    const char *name;
    int (*exec)(PyObject *module, fab_state *st);
    int (*traverse)(fab_state *st, visitproc visit, void *arg);
    void (*clear)(fab_state *st);
} parts[] = {
    {"errors", fab_py_errors_exec, fab_py_errors_traverse, fab_py_errors_clear},
    {"walk", fab_py_walk_exec, fab_py_walk_traverse, fab_py_walk_clear},
    {"key", fab_py_key_exec, fab_py_key_traverse, fab_py_key_clear},
    {"request", fab_py_request_exec, fab_py_request_traverse, fab_py_request_clear},
    {"unpack", fab_py_unpack_exec, fab_py_unpack_traverse, fab_py_unpack_clear},
    {"cassette", fab_py_cassette_exec, fab_py_cassette_traverse, fab_py_cassette_clear},
    {"reply", fab_py_reply_exec, fab_py_reply_traverse, fab_py_reply_clear},
    {"addressed", fab_py_addressed_exec, fab_py_addressed_traverse, fab_py_addressed_clear},
    {"frames", fab_py_frames_exec, fab_py_frames_traverse, fab_py_frames_clear},
    {"placement", fab_py_placement_exec, fab_py_placement_traverse, fab_py_placement_clear},
    {"reprs", fab_py_reprs_exec, NULL, NULL},
    {"holdings", fab_py_holdings_exec, fab_py_holdings_traverse, fab_py_holdings_clear},
    {"control", fab_py_control_exec, fab_py_control_traverse, fab_py_control_clear},
    {"sign", fab_py_sign_exec, NULL, NULL},
};

#define NPARTS (sizeof(parts) / sizeof(parts[0]))

static int module_exec(PyObject *module)
{
    fab_state *st = fab_get_state(module);
    for (size_t i = 0; i < NPARTS; i++)
        if (parts[i].exec(module, st) < 0)
            return -1;
    if (PyModule_AddIntConstant(module, "MAX_DEPTH", FAB_MAX_DEPTH) < 0)
        return -1;
    if (PyModule_AddIntConstant(module, "CRC32C_HARDWARE", fab_crc32c_hw_available()) < 0)
        return -1;
    return 0;
}

static int module_traverse(PyObject *module, visitproc visit, void *arg)
{
    fab_state *st = fab_get_state(module);
    for (size_t i = 0; i < NPARTS; i++) {
        if (parts[i].traverse == NULL)
            continue;
        int rc = parts[i].traverse(st, visit, arg);
        if (rc)
            return rc;
    }
    return 0;
}

static int module_clear(PyObject *module)
{
    fab_state *st = fab_get_state(module);
    /* In reverse: a part may hold what an earlier one made. */
    for (size_t i = NPARTS; i-- > 0;)
        if (parts[i].clear)
            parts[i].clear(st);
    return 0;
}

static void module_free(void *module)
{
    module_clear((PyObject *)module);
}

static PyModuleDef_Slot module_slots[] = {
    {Py_mod_exec, module_exec},
    {0, NULL},
};

PyModuleDef fab_module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "fabric._core",
    .m_doc = "The C core of stream-fabric: content keys, cassette and frames.",
    .m_size = sizeof(fab_state),
    .m_slots = module_slots,
    .m_traverse = module_traverse,
    .m_clear = module_clear,
    .m_free = module_free,
};

PyMODINIT_FUNC PyInit__core(void)
{
    return PyModuleDef_Init(&fab_module_def);
}
