/*
 * The frame codec of the fabric core (docs/spec/frames.md).
 *
 * A frame is a fixed 36-byte header followed by a msgpack payload:
 *
 *   0  magic "SFRM"   4   16  seq             u64 BE
 *   4  version (1)    1   24  payload length  u32 BE
 *   5  kind           1   28  payload CRC32C  u32 BE
 *   6  flags          2   32  header CRC32C   u32 BE (over bytes 0..31)
 *   8  stream id      8
 *
 * The encoder writes through a sink callback. The decoder is a state machine
 * fed arbitrary slices of a byte stream; it returns one frame at a time and is
 * correct for any split of its input. It checks every header field before it
 * allocates anything, refuses a declared payload length above its limit before
 * allocating, and never holds more than the bytes it was fed plus
 * FAB_FRAME_GROW_MAX. Every refusal names the violation and the stream offset
 * of the offending field.
 */
#ifndef FABRIC_FRAME_H
#define FABRIC_FRAME_H

#include <stddef.h>
#include <stdint.h>

#include "fabric/common.h"
#include "fabric/enc.h"

#define FAB_FRAME_MAGIC "SFRM"
#define FAB_FRAME_VERSION 1
#define FAB_FRAME_HEADER_LEN 36

/* Default and format limits of the payload length. */
#define FAB_FRAME_DEFAULT_MAX_PAYLOAD (1u << 20)
#define FAB_FRAME_FORMAT_MAX_PAYLOAD 0xffffffffu

/* The most the decoder allocates ahead of the bytes it has been fed. */
#define FAB_FRAME_GROW_MAX (64u * 1024u)

/* Frame kinds: (name, value, wire name). Add a kind by adding a line. */
#define FAB_FRAME_KINDS(XX)                       \
    XX(HELLO,        1,  "HELLO")                 \
    XX(STREAM_START, 2,  "STREAM_START")          \
    XX(STREAM_CHUNK, 3,  "STREAM_CHUNK")          \
    XX(STREAM_END,   4,  "STREAM_END")            \
    XX(ERROR,        5,  "ERROR")                 \
    XX(CONTROL,      6,  "CONTROL")               \
    XX(CREDIT,       7,  "CREDIT")                \
    XX(PLACEMENT,    8,  "PLACEMENT")             \
    XX(GOSSIP,       9,  "GOSSIP")                \
    XX(PING,         10, "PING")                  \
    XX(PONG,         11, "PONG")

enum fab_frame_kind {
#define FAB__KIND_ENUM(name, value, text) FAB_FRAME_##name = (value),
    FAB_FRAME_KINDS(FAB__KIND_ENUM)
#undef FAB__KIND_ENUM
    FAB_FRAME_KIND_MAX = 11
};

/* Flag bits. Bits not listed are reserved: a frame with one set is refused. */
#define FAB_FRAME_FLAG_DIAGNOSTIC 0x0001u /* a STREAM_CHUNK carrying a diagnostic */
#define FAB_FRAME_FLAGS_KNOWN 0x0001u

/* What was wrong with a refused frame: (name, core code, short name). */
#define FAB_FRAME_VIOLATIONS(XX)                                  \
    XX(NONE,             0,              "none")                  \
    XX(MAGIC,            FAB_EFORMAT,    "bad-magic")             \
    XX(VERSION,          FAB_EVERSION,   "unsupported-version")   \
    XX(HEADER_CHECKSUM,  FAB_ECORRUPT,   "header-checksum")       \
    XX(KIND,             FAB_EFORMAT,    "unknown-kind")          \
    XX(FLAGS,            FAB_EFORMAT,    "reserved-flags")        \
    XX(TOO_LARGE,        FAB_ELIMIT,     "payload-too-large")     \
    XX(PAYLOAD_CHECKSUM, FAB_ECORRUPT,   "payload-checksum")      \
    XX(TRUNCATED,        FAB_ETRUNCATED, "truncated")

enum fab_frame_violation {
#define FAB__VIOL_ENUM(name, code, text) FAB_FV_##name,
    FAB_FRAME_VIOLATIONS(FAB__VIOL_ENUM)
#undef FAB__VIOL_ENUM
    FAB_FV_COUNT
};

/* The decoded fields of a header (the header checksum is not kept). */
typedef struct fab_frame_header {
    uint8_t version;
    uint8_t kind;
    uint16_t flags;
    uint64_t stream_id;
    uint64_t seq;
    uint32_t payload_len;
    uint32_t payload_crc;
} fab_frame_header;

/* A refusal: the violation, the core code, where, and two numbers for the
 * message (what was found, what was allowed or expected). */
typedef struct fab_frame_error {
    int code;            /* FAB_E*, 0 when there is no error */
    int violation;       /* enum fab_frame_violation */
    uint64_t offset;     /* stream offset of the offending field */
    uint64_t frame_offset; /* stream offset of the frame's first byte */
    uint64_t found;
    uint64_t expected;
} fab_frame_error;

/* The wire name of a kind ("STREAM_CHUNK"), or NULL for an unknown kind. */
const char *fab_frame_kind_name(int kind);

/* The short name of a violation ("bad-magic"); never NULL. */
const char *fab_frame_violation_name(int violation);

/*
 * Writes a one-line English description of err into buf (always
 * NUL-terminated when n > 0), naming the offset. Returns the length that the
 * full text has (as snprintf does).
 */
int fab_frame_error_format(const fab_frame_error *err, char *buf, size_t n);

/* ---- encoder ----------------------------------------------------------------- */

/*
 * Fills out[] with the header of a frame carrying payload/len (the payload CRC
 * and header CRC are computed here; h->payload_len and h->payload_crc are
 * ignored and h->version must be 0 or FAB_FRAME_VERSION). Returns 0,
 * FAB_EINVAL for an unknown kind or reserved flags, FAB_ELIMIT when len does
 * not fit the format.
 */
int fab_frame_header_write(uint8_t out[FAB_FRAME_HEADER_LEN], const fab_frame_header *h,
                           const void *payload, size_t len);

/*
 * Fills out[] with the header of a frame carrying len payload bytes whose
 * CRC-32C the caller computed (crc = fab_crc32c(0, payload, len), chained
 * over its parts when the payload is not contiguous): for a sender that
 * writes the header and the payload's parts as they lie (scatter-gather),
 * without assembling them. Same checks and codes as fab_frame_header_write.
 */
int fab_frame_header_write_crc(uint8_t out[FAB_FRAME_HEADER_LEN], const fab_frame_header *h,
                               size_t len, uint32_t crc);

/*
 * Writes a whole frame (header then payload) to sink. Returns 0, the codes of
 * fab_frame_header_write, or the sink's error code.
 */
int fab_frame_encode(fab_sink_fn sink, void *ctx, const fab_frame_header *h,
                     const void *payload, size_t len);

/* The encoded size of a frame with len payload bytes. */
static inline size_t fab_frame_size(size_t len)
{
    return FAB_FRAME_HEADER_LEN + len;
}

/* ---- decoder ----------------------------------------------------------------- */

/* A decoded frame. payload is borrowed: see fab_frame_decoder_next. */
typedef struct fab_frame {
    fab_frame_header h;
    const uint8_t *payload;
    uint64_t offset;     /* stream offset of the frame's first byte */
    int payload_in_input; /* 1: payload points into the caller's data */
} fab_frame;

typedef struct fab_frame_decoder {
    uint32_t max_payload;
    int state;            /* internal */
    uint64_t offset;      /* stream offset of the next byte to consume */
    uint64_t frame_start; /* stream offset of the frame being assembled */
    size_t hdr_have;
    uint8_t hdr[FAB_FRAME_HEADER_LEN];
    fab_frame_header cur;
    uint8_t *pay;
    size_t pay_have;
    size_t pay_cap;
    fab_frame_error err;
} fab_frame_decoder;

/* Return values of fab_frame_decoder_next besides negative codes. */
#define FAB_FRAME_CONTINUE 0 /* every byte consumed, no frame complete yet */
#define FAB_FRAME_READY 1    /* *out holds a frame */

/*
 * Initializes a decoder refusing payloads longer than max_payload bytes
 * (0 means FAB_FRAME_DEFAULT_MAX_PAYLOAD). No allocation.
 */
void fab_frame_decoder_init(fab_frame_decoder *d, uint32_t max_payload);

/* Releases the decoder's buffer. */
void fab_frame_decoder_destroy(fab_frame_decoder *d);

/*
 * Consumes bytes of data/len until one frame is complete. Sets *consumed to
 * the number of bytes taken. Returns FAB_FRAME_READY with *out filled (the
 * remaining len - *consumed bytes have not been looked at), FAB_FRAME_CONTINUE
 * when all of data was consumed without completing a frame, or a negative
 * code: the decoder is then failed for good, d->err says why and where, and
 * every later call returns the same code.
 *
 * out->payload points into data when the whole frame was inside this call's
 * data (out->payload_in_input = 1; valid as long as data is), else into the
 * decoder's buffer (valid until the next call on the decoder).
 */
int fab_frame_decoder_next(fab_frame_decoder *d, const uint8_t *data, size_t len,
                           size_t *consumed, fab_frame *out);

/*
 * Checks the header at the start of data/len (the first min(len, 36) bytes)
 * as fab_frame_decoder_next would, without consuming anything, for a caller
 * that keeps its input until a frame is whole and then passes exactly that
 * frame (so its payload is never copied into the decoder). The decoder must
 * be at a frame boundary (no partial frame held: FAB_ESTATE otherwise).
 * Returns 0 with *total = the frame's encoded size once the header is
 * complete and valid, or *total = 0 when fewer than 36 bytes are at hand and
 * those are valid so far; or a negative code: the decoder is failed, as by
 * fab_frame_decoder_next, with d->err naming the field's stream offset.
 */
int fab_frame_decoder_peek(fab_frame_decoder *d, const uint8_t *data, size_t len,
                           size_t *total);

/*
 * Declares the end of the stream. Returns 0 when the decoder stopped at a frame
 * boundary, FAB_ETRUNCATED (violation "truncated", offset = end of stream)
 * when a frame was cut short, or the decoder's earlier error.
 */
int fab_frame_decoder_finish(fab_frame_decoder *d);

/*
 * 1 when s, c and e are the usual single-chunk reply of one stream: a
 * STREAM_START with seq 0, a STREAM_CHUNK with seq 1 and no flags (not a
 * diagnostic), a STREAM_END with seq 2, all three on one stream id other
 * than 0; else 0. What the frames carry is the caller's to check.
 */
int fab_frame_is_reply(const fab_frame_header *s, const fab_frame_header *c,
                       const fab_frame_header *e);

/* 1 when the decoder holds part of a frame, else 0. */
static inline int fab_frame_decoder_partial(const fab_frame_decoder *d)
{
    return d->hdr_have > 0;
}

#endif
