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

#include <stddef.h>
#include <stdint.h>

#include "fabric/hash.h"

/* Extension type tags of the canonical encoding. */
#define FAB_EXT_BIGINT 1 /* integer outside [-2^63, 2^64): big-endian two's complement */
#define FAB_EXT_SET    2 /* set: payload is an array of members sorted by encoding */
#define FAB_EXT_SECRET 3 /* a Secret's place: empty payload, the value never enters */

/* Deepest nesting of containers the encoder and decoders accept. */
#define FAB_MAX_DEPTH 256

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

/* ---- digest sink ---------------------------------------------------------- */

#define FAB_HASH_STAGE 2048

/*
 * Stages small writes and feeds them to a SHA-256 hasher in blocks; writes of
 * at least FAB_HASH_STAGE bytes go straight to the hasher without a copy.
 * The hasher is borrowed, not owned.
 */
typedef struct fab_hash_sink {
    fab_sha256 *hasher;
    size_t used;
    uint8_t stage[FAB_HASH_STAGE];
} fab_hash_sink;

void fab_hash_sink_init(fab_hash_sink *s, fab_sha256 *hasher);

/* A fab_sink_fn feeding the fab_hash_sink given as ctx. */
int fab_hash_sink_write(void *ctx, const void *data, size_t len);

/* Feeds any staged bytes to the hasher. 0 or FAB_ECRYPTO. */
int fab_hash_sink_flush(fab_hash_sink *s);

/* Flushes and writes the digest; the hasher is reset for reuse. */
int fab_hash_sink_final(fab_hash_sink *s, uint8_t out[FAB_SHA256_LEN]);

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
} fab_span;

/*
 * Sorts spans by their bytes (memcmp order, a proper prefix first). Returns 0,
 * or FAB_EDUPKEY when two spans hold identical bytes (two distinct keys that
 * encode alike, such as two NaN objects), FAB_ENOMEM.
 */
int fab_canon_sort_spans(fab_span *spans, size_t n);

#endif
