/*
 * Shared declarations of the CPython glue (the fabric._core extension).
 *
 * The glue converts types and maps errors; logic lives in csrc/. Every type
 * and exception lives in the module state (PEP 489 multi-phase init), never
 * in a C global. Each part of the glue (walk.c, key.c, request.c, ...)
 * exports exec, traverse and clear functions, listed in module.c's table.
 */
#ifndef FABRIC_GLUE_H
#define FABRIC_GLUE_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "fabric/common.h"
#include "fabric/enc.h"
#include "fabric/error.h"
#include "fabric/hash.h"

/*
 * The exceptions of the package: (name, fabric parent or NONE, builtin base,
 * doc). Each subclasses its fabric parent and the builtin a user would catch.
 * Order matters: a parent comes before its children.
 */
#define FAB_PY_EXCEPTIONS(XX)                                                  \
    XX(FabricError, NONE, PyExc_Exception,                                     \
       "Base class of every error raised by fabric.")                          \
    XX(DecodeError, FabricError, PyExc_ValueError,                             \
       "Bytes that are not valid msgpack, or that break a decode limit.")      \
    XX(FrameError, FabricError, PyExc_ValueError,                              \
       "A malformed or refused frame; .offset is its stream offset.")         \
    XX(LedgerError, FabricError, PyExc_OSError,                                \
       "A cassette ledger could not be read or written (.path, .errno).")      \
    XX(LedgerLockedError, LedgerError, PyExc_OSError,                          \
       "Another process holds the ledger for writing; .pid names it.")         \
    XX(LedgerFormatError, FabricError, PyExc_ValueError,                       \
       "The file is not a cassette ledger (.path, .offset).")                  \
    XX(LedgerVersionError, LedgerFormatError, PyExc_ValueError,                \
       "The ledger's format version is newer than this code (.version).")      \
    XX(LedgerCorruptionError, LedgerFormatError, PyExc_ValueError,             \
       "A bad record followed by valid ones; .offset is the bad record's.")    \
    XX(CapabilityDenied, FabricError, PyExc_PermissionError,                   \
       "The caller's grants lack a capability the request or op requires; "   \
       ".capability names it.")   \
    XX(NoHolderError, FabricError, PyExc_LookupError,                          \
       "No peer held the reply and no home could compute it; .attempts lists " \
       "(node, what it answered) for every peer asked.")                      \
    XX(ContentNotHeld, FabricError, PyExc_LookupError,                         \
       "This node does not hold the reply for the requested content key.")    \
    XX(RemoteError, FabricError, PyExc_RuntimeError,                           \
       "The op failed on another node or site; .node and .remote_type say "    \
       "where and what.")                                                      \
    XX(OpNotFound, FabricError, PyExc_LookupError,                             \
       "No op with the request's name and version is registered here.")       \
    XX(FabricUnavailable, FabricError, PyExc_ConnectionError,                  \
       "A relay's link is not connected; the request was not sent.")          \
    XX(DeadlineExceeded, FabricError, PyExc_TimeoutError,                      \
       "The request's deadline or a per-peer timeout passed.")

enum fab_py_exc {
#define FAB__EXC_ENUM(name, parent, base, doc) FAB_PYEXC_##name,
    FAB_PY_EXCEPTIONS(FAB__EXC_ENUM)
#undef FAB__EXC_ENUM
    FAB_PYEXC_COUNT
};

typedef struct fab_state {
    PyObject *exc[FAB_PYEXC_COUNT];

    /* walk.c */
    fab_sha256 *spare_hasher; /* reused by one keying at a time, under the GIL */
    struct fab_keymemo *key_memo; /* recent map key orders, under the GIL */
    PyObject *vt_by_type;  /* fabric.values' registry: type -> entry, None or refusal */
    PyObject *vt_by_name;  /* name -> entry */
    PyObject *vt_hook;     /* called with a type the registry does not know yet */
    PyObject *opaque_type; /* fabric.Opaque */
    PyObject *commit_key;  /* bytes: the commitment key of Secret(commit=True), or NULL */

    /* key.c */
    PyTypeObject *ContentKey_Type;
    PyTypeObject *Secret_Type;

    /* request.c */
    PyTypeObject *EvalRequest_Type;
    PyObject *str_eval;
    PyObject *str_local_first;
    PyObject *str_sharing[3]; /* interned sharing class names, by SHARING_* index */
    PyObject *empty_tuple;
    PyObject *empty_dict; /* the kwargs of every request without keyword arguments */
    PyObject *kw_names[14]; /* interned EvalRequest keyword names */

    /* unpack.c */
    PyTypeObject *Ext_Type;
    PyTypeObject *Timestamp_Type;
    PyObject *redacted; /* fabric.REDACTED */
    PyObject *key_cache[64]; /* recent short ASCII map keys (str), kept across decodes */
    uint64_t key_cache_tag[64]; /* each key_cache entry's tag (unpack.c; 0: none) */

    /* cassette.c */
    PyTypeObject *EvalCassette_Type;
    PyTypeObject *CassetteIter_Type;
    PyTypeObject *CassetteStream_Type;
    PyTypeObject *CassetteWriter_Type;
    PyTypeObject *LedgerView_Type;
    /* reply.c */
    PyTypeObject *EvalReply_Type;   /* the C base */
    PyObject *reply_class;          /* the class replies are made of (fabric.EvalReply) */
    PyObject *str_computed;         /* interned "computed" */
    PyTypeObject *EventStream_Type; /* _EventStream: EvalStream's C base */
    PyTypeObject *Replay_Type;      /* _Replay: recorded frames -> events */
    /* addressed.c */
    PyTypeObject *CAFCore_Type;     /* ContentAddressedFabric's C base */
    PyTypeObject *Counters_Type;    /* _Counters: every fabric's stats */
    PyObject *str_local;            /* interned "local" */

    /* frames.c */
    PyTypeObject *StreamFrameLimits_Type;
    PyTypeObject *Frame_Type;
    PyTypeObject *FrameEncoder_Type;
    PyTypeObject *FrameDecoder_Type;
    PyObject *default_limits; /* StreamFrameLimits() */

    /* placement.c */
    PyTypeObject *PlacementResourceLimits_Type;
    PyTypeObject *PlacementCapability_Type;
    PyTypeObject *ServerPlacementRequest_Type;
    PyObject *placement_text;    /* "[redacted placement data]" */
    PyObject *placement_payload; /* "[redacted placement payload]" */

    /* holdings.c */
    PyTypeObject *Holdings_Type;    /* _Holdings: the holding index's fact store */

    /* control.c */
    PyTypeObject *StreamControl_Type;
} fab_state;

extern PyModuleDef fab_module_def;

/* The module state reached from a module object, or from one of our types
 * (subclasses included). */
static inline fab_state *fab_get_state(PyObject *module)
{
    return (fab_state *)PyModule_GetState(module);
}

static inline fab_state *fab_state_from_type(PyTypeObject *tp)
{
    /* One of our types knows its module: no walk along the MRO. */
    if (tp->tp_flags & Py_TPFLAGS_HEAPTYPE) {
        PyObject *own = ((PyHeapTypeObject *)tp)->ht_module;
        if (own != NULL && PyModule_GetDef(own) == &fab_module_def)
            return fab_get_state(own);
    }
    PyObject *m = PyType_GetModuleByDef(tp, &fab_module_def);
    return m ? fab_get_state(m) : NULL;
}

/*
 * Errors: the one mapping from core FAB_E* codes to Python exceptions
 * (errors.c). Every part of the glue raises a core failure through
 * fab_py_raise (or fab_py_raise_code when it knows nothing more than the
 * code); cassette.c's raise_ledger and addressed.c are to move over
 * to it as their owners rewrite them. What a failure was about, beyond its
 * code: every field is optional (zero / NULL), except exc.
 */
typedef struct fab_py_err_info {
    const char *msg;      /* the core's own message, else fab_strerror(code) */
    const char *context;  /* what was being done, put in front (no path/offset) */
    PyObject *path;       /* str, borrowed: the file; sets .path (and .filename, .errno
                           * for the OSError classes) and selects the Ledger* classes */
    int has_offset;       /* sets .offset (None when 0 but path or violation is set) */
    uint64_t offset;
    int sys_errno;        /* errno of a failed system call (OSError classes) */
    long pid;             /* FAB_ELOCKED: the process holding the lock (.pid) */
    long version;         /* FAB_EVERSION: the version found (.version) */
    const char *violation;/* a frame rule broken: sets .violation and .frame_offset */
    int has_frame_offset;
    uint64_t frame_offset;
    int exc;              /* a FAB_PYEXC_* to raise instead of the code's class, or -1 */
} fab_py_err_info;

/*
 * Raises the exception for a core failure. The class follows the code:
 * FAB_ENOMEM MemoryError, FAB_ETYPE TypeError, FAB_ELOCKED LedgerLockedError;
 * with a path FAB_EIO/ESTATE/EOVERFLOW LedgerError, FAB_EFORMAT/ETRUNCATED
 * LedgerFormatError, FAB_EVERSION LedgerVersionError, FAB_ECORRUPT
 * LedgerCorruptionError; without one FAB_EFORMAT/ETRUNCATED/ECORRUPT
 * DecodeError, FAB_EIO OSError, FAB_ECRYPTO/ESTATE/EOVERFLOW FabricError;
 * anything else ValueError. info may be NULL. Returns NULL.
 */
PyObject *fab_py_raise(fab_state *st, int code, const fab_py_err_info *info);

/* fab_py_raise with only a context (may be NULL) in front of the message. */
PyObject *fab_py_raise_code(fab_state *st, int code, const char *context);

/*
 * Pickling: the one strategy. A picklable type's __reduce__ returns a
 * callable reached through the type itself, never a function of a Python
 * module: the type, when its constructor takes the state positionally
 * (ContentKey), else its _unpickle class method, given one state object
 * (a dict of fields, or bytes). fab_py_reduce builds the latter:
 * (type(self)._unpickle, (state,)). It steals state; NULL on error.
 */
PyObject *fab_py_reduce(PyObject *self, PyObject *state);

/* Adds a new type made from spec to the module and returns a borrowed
 * reference (the state keeps its own), or NULL with an exception set. */
PyTypeObject *fab_py_add_type(PyObject *module, PyType_Spec *spec, PyObject *base);

/*
 * Arguments (args.c): the one parser of METH_FASTCALL | METH_KEYWORDS calls.
 * names lists every parameter in order; the first posonly can be given
 * only by position, the first maxpos by position, the first required must
 * be given; the rest (from maxpos on) are keyword-only. fname names the
 * function in errors.
 */
typedef struct fab_py_params {
    const char *fname;
    const char *const *names;
    int n;
    int posonly;
    int maxpos;
    int required;
} fab_py_params;

/* Parses a vectorcall's (args, nargsf, kwnames) into out[0..n): out holds
 * each parameter's default on entry (NULL for a required one) and gets the
 * borrowed arguments given. 0, or -1 with TypeError (too many positional
 * arguments, an unknown or repeated keyword, a missing required one). */
int fab_py_parse(const fab_py_params *p, PyObject *const *args, Py_ssize_t nargsf,
                 PyObject *kwnames, PyObject **out);

/* Part exec functions, called in order by module.c; each returns 0 or -1. */
int fab_py_errors_exec(PyObject *module, fab_state *st);
int fab_py_walk_exec(PyObject *module, fab_state *st);
int fab_py_key_exec(PyObject *module, fab_state *st);
int fab_py_request_exec(PyObject *module, fab_state *st);
int fab_py_unpack_exec(PyObject *module, fab_state *st);
int fab_py_cassette_exec(PyObject *module, fab_state *st);
int fab_py_reply_exec(PyObject *module, fab_state *st);
int fab_py_addressed_exec(PyObject *module, fab_state *st);
int fab_py_frames_exec(PyObject *module, fab_state *st);
int fab_py_placement_exec(PyObject *module, fab_state *st);
int fab_py_reprs_exec(PyObject *module, fab_state *st);
int fab_py_holdings_exec(PyObject *module, fab_state *st);
int fab_py_sign_exec(PyObject *module, fab_state *st); /* sign.c: Ed25519, no state */
int fab_py_control_exec(PyObject *module, fab_state *st);

/* Part traverse/clear, for the module's GC support. */
int fab_py_errors_traverse(fab_state *st, visitproc visit, void *arg);
void fab_py_errors_clear(fab_state *st);
int fab_py_walk_traverse(fab_state *st, visitproc visit, void *arg);
void fab_py_walk_clear(fab_state *st);
int fab_py_key_traverse(fab_state *st, visitproc visit, void *arg);
void fab_py_key_clear(fab_state *st);
int fab_py_request_traverse(fab_state *st, visitproc visit, void *arg);
void fab_py_request_clear(fab_state *st);
int fab_py_unpack_traverse(fab_state *st, visitproc visit, void *arg);
void fab_py_unpack_clear(fab_state *st);
int fab_py_cassette_traverse(fab_state *st, visitproc visit, void *arg);
void fab_py_cassette_clear(fab_state *st);
int fab_py_reply_traverse(fab_state *st, visitproc visit, void *arg);
void fab_py_reply_clear(fab_state *st);
int fab_py_addressed_traverse(fab_state *st, visitproc visit, void *arg);
void fab_py_addressed_clear(fab_state *st);
/* addressed.c: fabric (a ContentAddressedFabricCore)._lookup_record(request,
 * limit, grants=g, values=values), for FrameDecoder.serve_hits. New
 * reference or NULL. */
PyObject *fab_py_caf_record(fab_state *st, PyObject *fabric, PyObject *request, PyObject *g,
                            uint64_t limit, int values);

/* reprs.c: text escaped for HTML (& < > " '), a new reference; and text
 * escaped inside <code> (with a title attribute when title is not NULL; the
 * title is written as given). NULL with an exception on error. */
PyObject *fab_py_html_escape(PyObject *text);
PyObject *fab_py_html_code(PyObject *text, const char *title);

/* key.c: a Secret's value (borrowed) and whether it is committed. */
PyObject *fab_py_secret_value(PyObject *secret, int *commit);

/* key.c: a new ContentKey holding the 32-byte digest. */
PyObject *fab_py_key_from_digest(fab_state *st, const uint8_t *digest);
/* key.c: the digest of a ContentKey (of exactly that type), read in place,
 * or NULL for any other object. */
const uint8_t *fab_py_key_digest(fab_state *st, PyObject *obj);

/* request.c: a borrowed view of an EvalRequest for other parts: its 32-byte
 * digest (valid while req lives), its sorted capability tuple (borrowed) and
 * its stream flag; any out pointer may be NULL. 0, or -1 with TypeError when
 * req is not an EvalRequest. */
int fab_py_request_info(fab_state *st, PyObject *req, const uint8_t **digest, PyObject **caps,
                        int *stream);

/* request.c: the request's ContentKey (made once, then shared); new reference. */
PyObject *fab_py_request_key(fab_state *st, PyObject *req);

/* request.c: the request's identity bytes (its identity_bytes()); new
 * reference, or NULL with TypeError when req is not an EvalRequest. */
PyObject *fab_py_request_identity(fab_state *st, PyObject *req);
/* request.c: 1 if the request (an EvalRequest, already checked) is of the
 * sharing class "uncacheable": never recorded, so never a hit. */
int fab_py_request_uncacheable(PyObject *req);
int fab_py_frames_traverse(fab_state *st, visitproc visit, void *arg);
void fab_py_frames_clear(fab_state *st);
int fab_py_placement_traverse(fab_state *st, visitproc visit, void *arg);
void fab_py_placement_clear(fab_state *st);
int fab_py_holdings_traverse(fab_state *st, visitproc visit, void *arg);
void fab_py_holdings_clear(fab_state *st);

/* cassette.c: records `record` under `key` in `cassette` (an EvalCassette
 * is written directly, any other object through its record() method) and
 * sets *nbytes to the length of its canonical encoding; request (NULL, None,
 * an EvalRequest or bytes) is stored beside it. 1 if the key was
 * new, 0 if already held, -1 with an exception set. */
int fab_py_cassette_record(fab_state *st, PyObject *cassette, PyObject *key, PyObject *record,
                           PyObject *request, size_t *nbytes);

/* cassette.c, for the fabric's memos of held replies: a stamp of where
 * key's committed reply is now in an EvalCassette (stamp[0] its record's
 * offset, stamp[1] the ledger's generation; a key deleted and recorded
 * again, or a move to a compacted file, changes it). 1 held (stamp set), 0
 * not held, -1 with an exception. Only for cassette of exactly the
 * EvalCassette type. */
int fab_py_cassette_stamp(fab_state *st, PyObject *cassette, PyObject *key, uint64_t stamp[2]);

/* cassette.c: cassette.get(key) of an EvalCassette (exactly that type), with
 * the stamp (as fab_py_cassette_stamp's) of the record it read, from the
 * same lookup; stamp is {0, 0} when not held (Py_None returned). New
 * reference or NULL. */
PyObject *fab_py_cassette_get_stamped(fab_state *st, PyObject *cassette, PyObject *key,
                                      uint64_t stamp[2]);

/* reply.c: the reply (of the reply class) that a cassette record [value,
 * diagnostics, trace] holds, for key with the given source (all borrowed);
 * FabricError if record is not such a record. New reference or NULL. */
PyObject *fab_py_reply_from_record(fab_state *st, PyObject *record, PyObject *key,
                                   PyObject *source);

/* reply.c: a new reply (of the reply class) from its parts, all borrowed;
 * diags must be a tuple. New reference or NULL. */
PyObject *fab_py_reply_make(fab_state *st, PyObject *value, PyObject *diags, PyObject *trace,
                            PyObject *key, PyObject *source);

/* reply.c: the borrowed value, diagnostics and trace of an EvalReply; 0, or
 * -1 with TypeError when reply is not one. */
int fab_py_reply_parts(fab_state *st, PyObject *reply, PyObject **value, PyObject **diags,
                       PyObject **trace);

/* reply.c: an EvalReply's record, [value, list(diagnostics), trace] (a new
 * list), or NULL with TypeError when reply is not one. */
PyObject *fab_py_reply_record(fab_state *st, PyObject *reply);

/* reply.c: the value of an EvalReply (new reference), or NULL with
 * TypeError when reply is not one. */
PyObject *fab_py_reply_value(fab_state *st, PyObject *reply);

/* walk.c: canonical encoding of an arbitrary value into an encoder, for
 * other parts (root names the value in error paths). 0 or -1. */
int fab_py_encode_value(fab_state *st, fab_enc *enc, PyObject *value, const char *root);

/* walk.c: the value encoding of a cassette record (docs/spec/values.md),
 * prefix included, into an encoder: refused at once (ValueError) when a
 * reader with the cassette's limits could not read it back; a record may
 * nest FAB_MAX_RECORD_DEPTH deep. 0 or -1. */
int fab_py_encode_record(fab_state *st, fab_enc *enc, PyObject *value, const char *root);

/* walk.c: the value encoding of a stream item (docs/spec/values.md),
 * prefix included, as fabric.encode_value writes it (nesting at most
 * FAB_MAX_DEPTH), straight into an encoder. 0 or -1. */
int fab_py_encode_item(fab_state *st, fab_enc *enc, PyObject *value, const char *root);

/* walk.c: the same encoding, handed to use(ctx, data, len) in one piece
 * (a small value's bytes where the walker made them, with no copy); the
 * bytes are valid during the call only. use returns 0, or -1 with an
 * exception set. 0 or -1. */
int fab_py_with_record(fab_state *st, PyObject *value, const char *root,
                       int (*use)(void *ctx, const uint8_t *data, size_t len), void *ctx);

/* unpack.c: decodes a cassette record or a frame's value payload: the value
 * encoding when data starts with its prefix, else msgpack as fab_py_decode
 * (v1 records). */
struct fab_mp_limits;
PyObject *fab_py_decode_record(fab_state *st, const uint8_t *data, size_t len,
                               const struct fab_mp_limits *limits, size_t base_offset);

/* walk.c: one piece of a digest's input: a Python value to encode
 * canonically (value non-NULL; root names it in error messages), or bytes
 * already in canonical form (value NULL). */
typedef struct fab_py_piece {
    PyObject *value;
    const char *root;
    const uint8_t *bytes;
    size_t len;
} fab_py_piece;

/* walk.c: writes to out the SHA-256 of the pieces' canonical bytes, in
 * order. An error names the piece's root (or whole) and the path inside
 * the value. 0, or -1 with an exception set. */
int fab_py_digest_pieces(fab_state *st, const char *whole, const fab_py_piece *pieces, size_t n,
                         uint8_t out[FAB_SHA256_LEN]);
/* walk.c: the same pieces' canonical bytes, in order, into enc: the bytes
 * whose SHA-256 fab_py_digest_pieces gives. 0, or -1 with an exception set. */
int fab_py_encode_pieces(fab_state *st, fab_enc *enc, const char *whole,
                         const fab_py_piece *pieces, size_t n);
/* walk.c: the same pieces' canonical bytes as a new bytes object, or None
 * (a new reference) when the walk met a fabric.Secret or a subclass of
 * tuple, list, dict, set or frozenset. NULL with an exception on error. */
PyObject *fab_py_pieces_bytes_plain(fab_state *st, const char *whole, const fab_py_piece *pieces,
                                    size_t n);

/* unpack.c: decodes one msgpack value from untrusted bytes under limits
 * (NULL = defaults). Errors raise fabric.DecodeError with .offset, counted
 * from base_offset (the position of data in the caller's stream). */
struct fab_mp_limits;
PyObject *fab_py_decode(fab_state *st, const uint8_t *data, size_t len,
                        const struct fab_mp_limits *limits, size_t base_offset);

/* Raises DecodeError("at offset N: what") with .offset = N. Returns NULL. */
PyObject *fab_py_decode_error(fab_state *st, size_t offset, const char *what);

/* Fills limits from any object with some of the attributes max_depth,
 * max_str, max_bin, max_ext, max_array, max_map, max_items (None or NULL:
 * the defaults). 0 or -1 with ValueError. */
int fab_py_limits_from_object(PyObject *obj, struct fab_mp_limits *lim);

/* frames.c: raises FrameError for a frame decoder's refusal, with .offset,
 * .frame_offset and .violation set. Returns NULL. */
struct fab_frame_error;
PyObject *fab_py_raise_frame_error(fab_state *st, const struct fab_frame_error *err);

/* frames.c: one limit of a StreamFrameLimits object, by its position in
 * StreamFrameLimits' field order (0 = max_frame_payload_bytes ... 7 = max_items). */
uint64_t fab_py_limit(PyObject *limits, int which);

/* unpack.c: fab_py_decode_record for a value-encoded body without its two
 * leading bytes (tags read as prefixes): one value, nothing after it. */
PyObject *fab_py_decode_tagged(fab_state *st, const uint8_t *data, size_t len,
                               const struct fab_mp_limits *limits, size_t base_offset);

/* frames.c: a borrowed view of a Frame for other parts. */
typedef struct fab_py_frame_info {
    const uint8_t *payload; /* valid while the Frame lives */
    size_t len;
    long long offset;       /* stream offset of the frame, -1 when built locally */
    uint64_t stream_id;
    uint32_t payload_crc;   /* the CRC-32C of the payload, when crc_known (a decoded
                             * frame: the header's, checked against the payload) */
    uint8_t kind;
    uint8_t crc_known;
} fab_py_frame_info;

/* frames.c: fills *out when obj is a Frame and returns 0; else -1 (no
 * exception set). */
int fab_py_frame_view(fab_state *st, PyObject *obj, fab_py_frame_info *out);

/* frames.c: a new local Frame of kind with payload (a bytes object, kept);
 * seq (an int, or NULL for 0) is checked as Frame() checks it. */
PyObject *fab_py_frame_new(fab_state *st, uint8_t kind, uint64_t stream_id, PyObject *seq,
                           PyObject *payload);

/* frames.c: decode limits from limits (None, a StreamFrameLimits or what
 * Frame.decode_payload accepts), as decode_payload takes them. 0 or -1. */
int fab_py_payload_limits(fab_state *st, PyObject *limits, struct fab_mp_limits *lim);

/* control.c: the entry of index (a dict) filed under crc, the CRC-32C of
 * payload, when it is a tuple whose first item is bytes equal to payload
 * (borrowed); NULL with no exception when there is none, with one on an
 * error (what _known_open looks up). */
PyObject *fab_py_open_entry(PyObject *index, uint32_t crc, const uint8_t *payload, size_t len);

/* control.c */
int fab_py_control_traverse(fab_state *st, visitproc visit, void *arg);
void fab_py_control_clear(fab_state *st);

#endif
