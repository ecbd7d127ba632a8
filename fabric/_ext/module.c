/*
 * fabric._core: module definition and multi-phase initialization.
 */
#include "glue.h"

#include "fabric/crc32c.h"

typedef int (*part_exec)(PyObject *module, fab_state *st);

static const part_exec parts[] = {
    fab_py_errors_exec,
    fab_py_keys_exec,
    fab_py_unpack_exec,
    fab_py_cassette_exec,
    fab_py_reply_exec,
    fab_py_addressed_exec,
    fab_py_frames_exec,
};

static int module_exec(PyObject *module)
{
    fab_state *st = fab_get_state(module);
    for (size_t i = 0; i < sizeof(parts) / sizeof(parts[0]); i++)
        if (parts[i](module, st) < 0)
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
    for (int i = 0; i < FAB_PYEXC_COUNT; i++)
        Py_VISIT(st->exc[i]);
    if (fab_py_keys_traverse(st, visit, arg))
        return -1;
    if (fab_py_cassette_traverse(st, visit, arg))
        return -1;
    if (fab_py_reply_traverse(st, visit, arg))
        return -1;
    if (fab_py_addressed_traverse(st, visit, arg))
        return -1;
    if (fab_py_frames_traverse(st, visit, arg))
        return -1;
    return fab_py_unpack_traverse(st, visit, arg);
}

static int module_clear(PyObject *module)
{
    fab_state *st = fab_get_state(module);
    for (int i = 0; i < FAB_PYEXC_COUNT; i++)
        Py_CLEAR(st->exc[i]);
    fab_py_keys_clear(st);
    fab_py_unpack_clear(st);
    fab_py_cassette_clear(st);
    fab_py_reply_clear(st);
    fab_py_addressed_clear(st);
    fab_py_frames_clear(st);
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
