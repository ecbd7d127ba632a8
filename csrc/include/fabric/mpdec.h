/*
 * A hardened msgpack reader for untrusted bytes.
 *
 * A pull parser over a complete buffer: fab_mp_next() returns one item at a
 * time (scalars, or the header of an array, map or ext). It never allocates,
 * checks every declared length and count against both the configured limits
 * and the bytes that remain (so a length bomb is refused before anyone could
 * allocate for it), validates UTF-8, tracks nesting depth and the total
 * number of items. msgpack-c's own unpacker allocates space for a declared
 * count up front and has no per-kind limits, which is why the core has this
 * reader; msgpack-c's packer is still what writes (enc.c).
 */
#ifndef FABRIC_MPDEC_H
#define FABRIC_MPDEC_H

#include <stddef.h>
#include <stdint.h>

#include "fabric/enc.h"
#include "fabric/error.h"

typedef struct fab_mp_limits {
    uint32_t max_depth; /* containers nested inside each other (<= FAB_MAX_DEPTH) */
    uint32_t max_str;   /* bytes in one str */
    uint32_t max_bin;   /* bytes in one bin */
    uint32_t max_ext;   /* bytes in one ext payload */
    uint32_t max_array; /* elements in one array */
    uint32_t max_map;   /* pairs in one map */
    uint64_t max_items; /* items in the whole value, containers included */
} fab_mp_limits;

/* The defaults: depth FAB_MAX_DEPTH, 64 MiB per str/bin/ext, 16M elements
 * per container, 64M items. */
void fab_mp_limits_default(fab_mp_limits *lim);

typedef enum fab_mp_type {
    FAB_MP_NIL,
    FAB_MP_BOOL,
    FAB_MP_INT,   /* negative values: v.i */
    FAB_MP_UINT,  /* non-negative values: v.u */
    FAB_MP_FLOAT, /* float32 or float64, widened: v.f */
    FAB_MP_STR,   /* v.s.p / v.s.len, valid UTF-8 */
    FAB_MP_BIN,   /* v.s.p / v.s.len */
    FAB_MP_EXT,   /* v.s.p / v.s.len / v.s.ext_type */
    FAB_MP_ARRAY, /* v.count elements follow */
    FAB_MP_MAP,   /* v.count key/value pairs follow */
} fab_mp_type;

typedef struct fab_mp_item {
    fab_mp_type type;
    size_t offset; /* where the item starts in the buffer */
    union {
        int b;
        int64_t i;
        uint64_t u;
        double f;
        uint32_t count;
        struct {
            const uint8_t *p;
            uint32_t len;
            int8_t ext_type;
        } s;
    } v;
} fab_mp_item;

typedef struct fab_mp_reader {
    const uint8_t *data;
    size_t len;
    size_t pos;
    fab_mp_limits lim;
    uint64_t items;
    uint32_t depth;                      /* open containers */
    uint64_t remaining[FAB_MAX_RECORD_DEPTH];   /* children still due per open container */
    int tags;        /* the value encoding's tags (FAB_TAG_*, an empty ext) are read
                      * as prefixes: not children of the enclosing container */
    int after_tag;   /* the last item read was such a tag: an item must follow */
    size_t err_offset;                   /* set with err */
    char err[128];                       /* what went wrong, for messages */
} fab_mp_reader;

/*
 * Starts reading len bytes (borrowed; they must outlive the reader). limits
 * may be NULL for the defaults; max_depth above FAB_MAX_RECORD_DEPTH is
 * lowered to it. Returns 0 or FAB_EINVAL for a zero limit.
 */
int fab_mp_reader_init(fab_mp_reader *r, const void *data, size_t len,
                       const fab_mp_limits *limits);

/*
 * Reads the next item into *out. Returns 0, or on malformed input:
 * FAB_ETRUNCATED (the buffer ends inside an item), FAB_EFORMAT (reserved byte
 * 0xc1), FAB_EUTF8, FAB_ELIMIT (a limit), FAB_EDEPTH; r->err and
 * r->err_offset then say what and where. Errors are sticky.
 */
int fab_mp_next(fab_mp_reader *r, fab_mp_item *out);

/* Reads tags as prefixes from now on (docs/spec/values.md): an ext item of
 * type FAB_TAG_TUPLE..FAB_TAG_TYPED with an empty payload qualifies the item
 * after it and is not counted as a child of the enclosing array or map (it
 * still counts as an item). */
void fab_mp_reader_tags(fab_mp_reader *r);

/* 1 when every container opened so far is complete (a whole value was read). */
int fab_mp_complete(const fab_mp_reader *r);

/*
 * Checks that data holds exactly one well-formed value within the limits and
 * nothing after it. Returns 0 or an error code as fab_mp_next (trailing
 * bytes: FAB_EFORMAT); err/err_offset are filled when non-NULL.
 */
int fab_mp_validate(const void *data, size_t len, const fab_mp_limits *limits,
                    char *err, size_t err_size, size_t *err_offset);

/* fab_mp_validate for the body of a value-encoded payload (tags read as
 * prefixes; a tag must be followed by the item it qualifies). */
int fab_mp_validate_tagged(const void *data, size_t len, const fab_mp_limits *limits,
                           char *err, size_t err_size, size_t *err_offset);

/*
 * The value encoding's prefix (docs/spec/values.md §1): sets *body to where
 * the body item starts, 2 after c1 01, or 0 when data does not start with c1
 * (plain msgpack, read as it always was), and returns 0. A c1 without the
 * version byte 01 after it returns FAB_EVERSION: err (err_size bytes, when
 * non-NULL) says whether the version byte is missing or which version it
 * names, and *err_offset is 1, where the version byte is or would be.
 */
int fab_value_prefix(const void *data, size_t len, size_t *body, char *err, size_t err_size,
                     size_t *err_offset);

/* 1 when p/len is well-formed UTF-8 (no overlong forms, no surrogates,
 * nothing above U+10FFFF), else 0. */
int fab_utf8_valid(const uint8_t *p, size_t len);

#endif
