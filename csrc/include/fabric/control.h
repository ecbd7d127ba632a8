/*
 * The control codec: the payload of a CONTROL frame (docs/spec/frames.md §6).
 *
 * A control is a map {"op": <name>, <fields>...}: eight operations, each with
 * exactly its own fields, each needing one capability (and, for any use over
 * the network, "stream.remote.network"). The payload comes from an untrusted
 * peer: fab_control_decode() reads it with the hardened msgpack reader
 * (mpdec.c) under the caller's limits, then checks the shape; it never
 * allocates and never copies. The values of "item" and "metadata" stay
 * msgpack bytes (spans of the payload) for the caller to decode.
 * These are the only copy of the rules: the Python StreamControl
 * (fabric/_ext/control.c) and the fuzz target call them.
 */
#ifndef FABRIC_CONTROL_H
#define FABRIC_CONTROL_H

#include <stddef.h>
#include <stdint.h>

#include "fabric/enc.h"
#include "fabric/error.h"
#include "fabric/mpdec.h"

typedef enum fab_control_op {
    FAB_CTL_OPEN,
    FAB_CTL_NEXT,
    FAB_CTL_PUSH,
    FAB_CTL_CLOSE,
    FAB_CTL_CANCEL,
    FAB_CTL_STATS,
    FAB_CTL_METADATA,
    FAB_CTL_FAULT,
    FAB_CTL_NOPS
} fab_control_op;

/* The fields, as bits of fab_control.present (and of each op's sets). */
enum {
    FAB_CTL_F_METADATA = 1u << 0, /* a map */
    FAB_CTL_F_LIMIT = 1u << 1,    /* an int >= 1 */
    FAB_CTL_F_ITEM = 1u << 2,     /* any value */
    FAB_CTL_F_REASON = 1u << 3,   /* a str */
    FAB_CTL_F_KIND = 1u << 4,     /* one of the fault kinds */
    FAB_CTL_F_COUNT = 1u << 5,    /* an int >= 1 */
};
#define FAB_CTL_NFIELDS 6
#define FAB_CTL_NFAULTS 9

/* Needed in addition to an operation's own capability for any remote use. */
#define FAB_CTL_REMOTE_CAPABILITY "stream.remote.network"

/*
 * One control. item/metadata/reason point into the decoded payload (or, for
 * fab_control_encode, at the caller's bytes: item and metadata canonical
 * msgpack, reason UTF-8).
 */
typedef struct fab_control {
    fab_control_op op;
    unsigned present;      /* FAB_CTL_F_* of the fields given */
    uint64_t limit;        /* next */
    uint64_t count;        /* fault */
    int fault;             /* fault: index in fab_control_fault_name() */
    const uint8_t *reason; /* cancel, optional */
    size_t reason_len;
    const uint8_t *item;   /* push: one msgpack value */
    size_t item_len;
    const uint8_t *metadata; /* open, optional: one msgpack map */
    size_t metadata_len;
    int tagged;            /* the payload is in the value encoding (0xc1 0x01 + tagged body) */
} fab_control;

/* Why a payload was refused. */
typedef struct fab_control_error {
    int msgpack;      /* 1: the bytes are not valid msgpack within the limits
                       * (the reader's refusal); 0: valid msgpack, not a control */
    size_t offset;    /* in the payload: where the refused item starts */
    char field[24];   /* the field refused ("" when none), printable ASCII */
    char msg[192];    /* what was wrong, e.g. "control 'next' is missing its field 'limit'" */
} fab_control_error;

/* The operation's wire name ("open"...), or NULL out of range. */
const char *fab_control_op_name(int op);

/* The operation named by len bytes, or -1. */
int fab_control_op_lookup(const void *name, size_t len);

/* The capability an operation needs ("stream.open"...), or NULL. */
const char *fab_control_capability(int op);

/* A fault kind's name ("drop"...) for 0 <= i < FAB_CTL_NFAULTS, else NULL. */
const char *fab_control_fault_name(int i);

/* The field's name for a FAB_CTL_F_* bit, or NULL. */
const char *fab_control_field_name(unsigned bit);

/* The required and allowed (required + optional) fields of an operation. */
unsigned fab_control_required(int op);
unsigned fab_control_allowed(int op);

/*
 * Decodes a CONTROL payload into *out. limits as for fab_mp_reader_init
 * (NULL: the defaults). Returns 0; or a reader error (FAB_ETRUNCATED,
 * FAB_EFORMAT, FAB_EUTF8, FAB_ELIMIT, FAB_EDEPTH; FAB_EVERSION for a value
 * encoding of another version) with err->msgpack = 1; or, for valid msgpack
 * that is not a control, with err->msgpack = 0: FAB_ETYPE (not a map, a key
 * that is not a str, a field of the wrong type), FAB_ERANGE (limit or count
 * below 1, an unknown fault kind), FAB_EFORMAT (no "op", an unknown
 * operation, a missing, unknown or repeated field). err may be NULL.
 */
int fab_control_decode(const void *payload, size_t len, const fab_mp_limits *limits,
                       fab_control *out, fab_control_error *err);

/*
 * Checks that grants (n names of lens[i] bytes each, any order; NULL entries
 * are skipped) hold the operation's capability and, when remote, also
 * FAB_CTL_REMOTE_CAPABILITY. Returns 0, or FAB_ENOTFOUND with *missing set
 * to the first capability lacking (a static string), or FAB_EINVAL for an
 * unknown op.
 */
int fab_control_check(int op, const char *const *grants, const size_t *lens, size_t n,
                      int remote, const char **missing);

/*
 * Appends the canonical payload of c to out: the map with "op" and c's
 * fields in canonical key order. Returns 0, FAB_EINVAL when c breaks the
 * rules (what fab_control_decode would refuse; item and metadata are taken
 * as given), or FAB_ENOMEM.
 */
int fab_control_encode(const fab_control *c, fab_buf *out);

/* ---- the node protocol's request open (docs/spec/protocol.md section 2) ------------ */

/* The fields of an open's metadata and of its request map, in the order of
 * fab_control_open's spans. */
enum {
    FAB_OPEN_REQUEST, FAB_OPEN_KEY, FAB_OPEN_WANT, FAB_OPEN_SCOPE, FAB_OPEN_GRANTS,
    FAB_OPEN_TIMEOUT, FAB_OPEN_VIA, FAB_OPEN_NFIELDS
};
#define FAB_OPEN_REQUEST_NFIELDS 13
#define FAB_OPEN_MAX_VIA 16

/* One value's bytes inside a payload. */
typedef struct fab_open_span {
    const uint8_t *p;
    size_t len;
} fab_open_span;

typedef struct fab_control_open {
    fab_open_span meta[FAB_OPEN_NFIELDS];             /* each metadata field's value */
    fab_open_span request[FAB_OPEN_REQUEST_NFIELDS];  /* each request field's value, in the
                                                  * order of fab_open_request_field() */
    int want;   /* 0 "value", 1 "stream" */
    int scope;  /* 0 "held", 1 "compute" */
} fab_control_open;

/* The name of metadata field i (FAB_OPEN_*) / of request field i, or NULL. */
const char *fab_open_field(int i);
const char *fab_open_request_field(int i);

/*
 * Reads a CONTROL payload that carries a node request in one pass: a control
 * (fab_control_decode, under limits) "open" in plain msgpack whose metadata
 * has exactly the fields request, key, want, scope, grants, timeout and via,
 * each once, where want is "value" or "stream", scope "held" or "compute",
 * timeout nil or a number > 0 (not a bool), grants an array of str, via an
 * array of at most FAB_OPEN_MAX_VIA str, and request a map with exactly the
 * FAB_OPEN_REQUEST_NFIELDS request fields, each once, its "args" an array
 * and its "kwargs" a map. The key is not looked at (the caller compares it
 * with the key of the request's fields). Returns 0 and fills *out (spans of
 * payload), or a code with err filled as fab_control_decode: its own codes,
 * FAB_EVERSION for a payload in the value encoding, FAB_EFORMAT for another
 * operation or a missing, unknown or repeated field, FAB_ETYPE or FAB_ERANGE
 * for a value of the wrong type or out of range. The node's own checks
 * (fabric.node.protocol.check_open) accept every payload this accepts; a
 * payload refused here is read by them, which say why.
 */
int fab_control_open_read(const void *payload, size_t len, const fab_mp_limits *limits,
                          fab_control_open *out, fab_control_error *err);

#endif
