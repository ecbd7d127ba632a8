/*
 * The canonical msgpack writer of the fabric core.
 *
 * Writers push bytes through a sink callback (as msgpack-c's packer does), so
 * the same encoder can fill a buffer or stream straight into a digest. The
 * canonical rules (docs/spec/content-key.md) are enforced here where they are
 * local to one value: shortest integer forms, float64 always with a single
 * NaN, and the extension types for big integers, sets and secrets. Ordering of
 * map keys and set members is done with fab_canon_sort_spans.
 */
#ifndef FABRIC_ENC_H
#define FABRIC_ENC_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "fabric/common.h"
#include "fabric/hash.h"

/* Extension type tags of the canonical encoding. */
#define FAB_EXT_BIGINT 1 /* integer outside [-2^63, 2^64): big-endian two's complement */
#define FAB_EXT_SET    2 /* set: payload is an array of members sorted by encoding */
#define FAB_EXT_SECRET 3 /* a Secret's place: empty payload, the value never enters */
#define FAB_EXT_COMMITTED 4 /* Secret(commit=True): HMAC-SHA256 of its value's canonical
                             * bytes under the commitment key (32 bytes) */

/*
 * Tags and extensions of key scheme 2 and of the value encoding
 * (docs/spec/content-key.md, docs/spec/values.md). A *tag* is an ext item
 * with an empty payload (c7 00 <type>) that says how to read the one item
 * after it; it does not nest, so it adds no depth.
 */
#define FAB_EXT_COMPLEX   16 /* fixext16: real and imaginary parts, float64 big-endian */
#define FAB_TAG_TUPLE     17 /* value encoding: the next array is a tuple */
#define FAB_TAG_SET       18 /* value encoding: the next array holds a set's members */
#define FAB_TAG_FROZENSET 19 /* value encoding: the next array holds a frozenset's members */
#define FAB_TAG_BYTEARRAY 20 /* value encoding: the next bin is a bytearray */
#define FAB_TAG_NDARRAY   21 /* the next array is [dtype str, data bin, dim...] */
#define FAB_TAG_TYPED     22 /* the next array is [type name str, data] */

/* A value-encoded payload starts with these two bytes; 0xc1 is never the
 * first byte of msgpack, so a reader tells it from a v1 canonical payload. */
#define FAB_VALUE_MAGIC   0xc1
#define FAB_VALUE_VERSION 1

/* Deepest nesting of containers the encoder and decoders accept. */
#define FAB_MAX_DEPTH 256

/* A cassette record nests one level deeper: a reply record wraps a value of
 * FAB_MAX_DEPTH levels in one array ([value, diagnostics, trace]). */
#define FAB_MAX_RECORD_DEPTH (FAB_MAX_DEPTH + 1)

/* A sink receives encoded bytes in order; it returns 0 or a FAB_E* code. */
typedef int (*fab_sink_fn)(void *ctx, const void *data, size_t len);

/* ---- growable byte buffer ------------------------------------------------ */

typedef struct fab_buf {
    uint8_t *data;
    size_t len;
    size_t cap;
} fab_buf;

/* Initializes an empty buffer (no allocation). */
void fab_buf_init(fab_buf *b);

/* Releases the buffer's memory and leaves it empty. */
void fab_buf_destroy(fab_buf *b);

/* Ensures room for extra more bytes. 0, FAB_ENOMEM or FAB_EOVERFLOW. */
int fab_buf_reserve(fab_buf *b, size_t extra);

/* Appends len bytes. 0, FAB_ENOMEM or FAB_EOVERFLOW. */
int fab_buf_append(fab_buf *b, const void *data, size_t len);

/* A fab_sink_fn appending to the fab_buf given as ctx. */
int fab_buf_sink(void *ctx, const void *data, size_t len);

/* ---- in-memory forms ------------------------------------------------------ */

/*
 * Copies n bytes to a destination with room for them. The short copies that
 * dominate encoding (keys, short strings) are done inline with a few
 * possibly overlapping loads and stores instead of a call into the C
 * library.
 */
static inline void fab_copy(uint8_t *dst, const uint8_t *src, size_t n)
{
    if (n > 32) {
        memcpy(dst, src, n);
    } else if (n > 16) {
        memcpy(dst, src, 16);
        memcpy(dst + n - 16, src + n - 16, 16);
    } else if (n >= 8) {
        memcpy(dst, src, 8);
        memcpy(dst + n - 8, src + n - 8, 8);
    } else if (n >= 4) {
        memcpy(dst, src, 4);
        memcpy(dst + n - 4, src + n - 4, 4);
    } else if (n > 0) {
        dst[0] = src[0];
        dst[n / 2] = src[n / 2];
        dst[n - 1] = src[n - 1];
    }
}

/*
 * Each fab_put_* writes one canonical item (a scalar, or the header of a
 * str, bin, array, map or ext) at p, which must have room for FAB_PUT_MAX
 * bytes, and returns the number of bytes written. They are the single place
 * where the shortest forms are chosen: the sink writer below uses them, and
 * so can callers that write straight into their own buffer (the Python
 * walker does, to skip a call per item). Lengths above UINT32_MAX have no
 * msgpack form; callers check them first.
 */
#define FAB_PUT_MAX 9

static inline size_t fab_put_nil(uint8_t *p)
{
    p[0] = 0xc0;
    return 1;
}

static inline size_t fab_put_bool(uint8_t *p, int value)
{
    p[0] = value ? 0xc3 : 0xc2;
    return 1;
}

static inline size_t fab_put_uint64(uint8_t *p, uint64_t v)
{
    if (v < 0x80) {
        p[0] = (uint8_t)v;
        return 1;
    }
    if (v <= UINT8_MAX) {
        p[0] = 0xcc;
        p[1] = (uint8_t)v;
        return 2;
    }
    if (v <= UINT16_MAX) {
        p[0] = 0xcd;
        fab_store_be16(p + 1, (uint16_t)v);
        return 3;
    }
    if (v <= UINT32_MAX) {
        p[0] = 0xce;
        fab_store_be32(p + 1, (uint32_t)v);
        return 5;
    }
    p[0] = 0xcf;
    fab_store_be64(p + 1, v);
    return 9;
}

/* Non-negative values take the unsigned forms (msgpack's shortest rule). */
static inline size_t fab_put_int64(uint8_t *p, int64_t v)
{
    if (v >= 0)
        return fab_put_uint64(p, (uint64_t)v);
    if (v >= -32) {
        p[0] = (uint8_t)(0xe0 | (uint8_t)(v + 32));
        return 1;
    }
    if (v >= INT8_MIN) {
        p[0] = 0xd0;
        p[1] = (uint8_t)(int8_t)v;
        return 2;
    }
    if (v >= INT16_MIN) {
        p[0] = 0xd1;
        fab_store_be16(p + 1, (uint16_t)(int16_t)v);
        return 3;
    }
    if (v >= INT32_MIN) {
        p[0] = 0xd2;
        fab_store_be32(p + 1, (uint32_t)(int32_t)v);
        return 5;
    }
    p[0] = 0xd3;
    fab_store_be64(p + 1, (uint64_t)v);
    return 9;
}

/* float64 always; every NaN as 0x7ff8000000000000; -0.0 keeps its sign. */
static inline size_t fab_put_double(uint8_t *p, double value)
{
    uint64_t bits;
    if (isnan(value))
        bits = UINT64_C(0x7ff8000000000000);
    else
        memcpy(&bits, &value, 8);
    p[0] = 0xcb;
    fab_store_be64(p + 1, bits);
    return 9;
}

/* float64 with the value's own bits (the value encoding keeps NaN payloads). */
static inline size_t fab_put_double_raw(uint8_t *p, double value)
{
    uint64_t bits;
    memcpy(&bits, &value, 8);
    p[0] = 0xcb;
    fab_store_be64(p + 1, bits);
    return 9;
}

/* A header with a fix form (prefix | n for n < fixmax), then 8/16/32-bit
 * lengths under the given type bytes (0 when the format has no 8-bit form). */
static inline size_t fab__put_len(uint8_t *p, uint32_t n, uint8_t fix, uint32_t fixmax,
                                  uint8_t t8, uint8_t t16, uint8_t t32)
{
    if (n < fixmax) {
        p[0] = (uint8_t)(fix | n);
        return 1;
    }
    if (t8 && n <= UINT8_MAX) {
        p[0] = t8;
        p[1] = (uint8_t)n;
        return 2;
    }
    if (n <= UINT16_MAX) {
        p[0] = t16;
        fab_store_be16(p + 1, (uint16_t)n);
        return 3;
    }
    p[0] = t32;
    fab_store_be32(p + 1, n);
    return 5;
}

static inline size_t fab_put_str_header(uint8_t *p, uint32_t n)
{
    return fab__put_len(p, n, 0xa0, 32, 0xd9, 0xda, 0xdb);
}

static inline size_t fab_put_bin_header(uint8_t *p, uint32_t n)
{
    return fab__put_len(p, n, 0, 0, 0xc4, 0xc5, 0xc6);
}

static inline size_t fab_put_array_header(uint8_t *p, uint32_t n)
{
    return fab__put_len(p, n, 0x90, 16, 0, 0xdc, 0xdd);
}

static inline size_t fab_put_map_header(uint8_t *p, uint32_t n)
{
    return fab__put_len(p, n, 0x80, 16, 0, 0xde, 0xdf);
}

/* fixext for payloads of 1, 2, 4, 8 and 16 bytes, else ext8/16/32. */
static inline size_t fab_put_ext_header(uint8_t *p, int8_t type, uint32_t n)
{
    size_t k;
    switch (n) {
    case 1: p[0] = 0xd4; k = 1; break;
    case 2: p[0] = 0xd5; k = 1; break;
    case 4: p[0] = 0xd6; k = 1; break;
    case 8: p[0] = 0xd7; k = 1; break;
    case 16: p[0] = 0xd8; k = 1; break;
    default: k = fab__put_len(p, n, 0, 0, 0xc7, 0xc8, 0xc9); break;
    }
    p[k] = (uint8_t)type;
    return k + 1;
}

/* ---- the writer ------------------------------------------------------------ */

typedef struct fab_enc {
    fab_sink_fn sink;
    void *ctx;
} fab_enc;

void fab_enc_init(fab_enc *e, fab_sink_fn sink, void *ctx);

/* Each returns 0 or the sink's error code. */
int fab_enc_nil(fab_enc *e);
int fab_enc_bool(fab_enc *e, int value);
int fab_enc_int64(fab_enc *e, int64_t value);   /* shortest form */
int fab_enc_uint64(fab_enc *e, uint64_t value); /* shortest form */
int fab_enc_double(fab_enc *e, double value);   /* float64; every NaN as 0x7ff8000000000000 */
int fab_enc_str(fab_enc *e, const char *utf8, size_t len); /* caller guarantees UTF-8 */
int fab_enc_str_header(fab_enc *e, size_t len);
int fab_enc_bin(fab_enc *e, const void *data, size_t len);
int fab_enc_bin_header(fab_enc *e, size_t len);
int fab_enc_array_header(fab_enc *e, size_t count);
int fab_enc_map_header(fab_enc *e, size_t count);
int fab_enc_ext_header(fab_enc *e, int8_t type, size_t len);
int fab_enc_ext(fab_enc *e, int8_t type, const void *data, size_t len);
int fab_enc_raw(fab_enc *e, const void *data, size_t len); /* pre-encoded bytes */

/*
 * A big integer as ext FAB_EXT_BIGINT. be/len is the value's big-endian two's
 * complement form, minimal (no redundant leading 0x00 or 0xff byte). Values
 * that fit int64 or uint64 must use fab_enc_int64/uint64 instead: FAB_ERANGE.
 */
int fab_enc_bigint(fab_enc *e, const uint8_t *be, size_t len);

/* The marker that stands for a Secret's value. */
int fab_enc_secret(fab_enc *e);

/* ---- canonical ordering ------------------------------------------------------ */

/* One encoded item inside a scratch buffer. */
typedef struct fab_span {
    const uint8_t *p;
    size_t len;
    size_t index; /* caller's tag, e.g. the position of the entry */
    uint64_t key8; /* set by fab_canon_sort_spans: the first 8 bytes, big-endian */
} fab_span;

/*
 * Sorts spans by their bytes (memcmp order, a proper prefix first). Returns 0,
 * or FAB_EDUPKEY when two spans hold identical bytes (two distinct keys that
 * encode alike, such as two NaN objects), FAB_ENOMEM.
 */
int fab_canon_sort_spans(fab_span *spans, size_t n);

#endif
