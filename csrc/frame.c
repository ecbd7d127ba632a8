/*
 * Frame codec: header writer, whole-frame encoder and the incremental decoder.
 * The format is in docs/spec/frames.md; the contracts are in fabric/frame.h.
 */
#include "fabric/frame.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fabric/common.h"
#include "fabric/crc32c.h"

enum { ST_HEADER = 0, ST_PAYLOAD = 1, ST_FAILED = 2 };

/* A decoder keeps its payload buffer between frames unless it grew past this;
 * a larger one is released before the next frame so an idle connection does
 * not pin the memory of its largest frame. */
#define KEEP_BUFFER_MAX (256u * 1024u)

static const uint8_t magic[4] = {'S', 'F', 'R', 'M'};
static const uint8_t empty_payload[1] = {0};

const char *fab_frame_kind_name(int kind)
{
    switch (kind) {
#define FAB__KIND_NAME(name, value, text) case value: return text;
    FAB_FRAME_KINDS(FAB__KIND_NAME)
#undef FAB__KIND_NAME
    default: return NULL;
    }
}

const char *fab_frame_violation_name(int violation)
{
    static const char *const names[] = {
#define FAB__VIOL_NAME(name, code, text) text,
        FAB_FRAME_VIOLATIONS(FAB__VIOL_NAME)
#undef FAB__VIOL_NAME
    };
    if (violation < 0 || violation >= FAB_FV_COUNT)
        return "unknown";
    return names[violation];
}

static int violation_code(int violation)
{
    static const int codes[] = {
#define FAB__VIOL_CODE(name, code, text) code,
        FAB_FRAME_VIOLATIONS(FAB__VIOL_CODE)
#undef FAB__VIOL_CODE
    };
    FAB_ASSERT(violation > 0 && violation < FAB_FV_COUNT);
    return codes[violation];
}

int fab_frame_error_format(const fab_frame_error *e, char *buf, size_t n)
{
    unsigned long long off = e->offset, start = e->frame_offset;
    unsigned long long found = e->found, expected = e->expected;
    switch (e->violation) {
    case FAB_FV_MAGIC:
        return snprintf(buf, n,
                        "bad magic at offset %llu: byte 0x%02llx where \"SFRM\" has 0x%02llx "
                        "(frame starts at offset %llu)", off, found, expected, start);
    case FAB_FV_VERSION:
        return snprintf(buf, n,
                        "frame version %llu at offset %llu is not supported "
                        "(this peer speaks version %llu)", found, off, expected);
    case FAB_FV_HEADER_CHECKSUM:
    case FAB_FV_PAYLOAD_CHECKSUM:
        return snprintf(buf, n,
                        "%s checksum mismatch at offset %llu: stored 0x%08llx, "
                        "computed 0x%08llx (frame starts at offset %llu)",
                        e->violation == FAB_FV_HEADER_CHECKSUM ? "header" : "payload", off,
                        found, expected, start);
    case FAB_FV_KIND:
        return snprintf(buf, n, "unknown frame kind %llu at offset %llu (known kinds: 1..%d)",
                        found, off, FAB_FRAME_KIND_MAX);
    case FAB_FV_FLAGS:
        return snprintf(buf, n, "reserved flag bits 0x%04llx set at offset %llu",
                        found, off);
    case FAB_FV_TOO_LARGE:
        return snprintf(buf, n,
                        "payload length %llu at offset %llu exceeds the limit of %llu bytes",
                        found, off, expected);
    case FAB_FV_TRUNCATED:
        return snprintf(buf, n,
                        "stream ends at offset %llu inside a frame that starts at offset "
                        "%llu (%llu of %llu bytes present)", off, start, found, expected);
    default:
        return snprintf(buf, n, "%s at offset %llu", fab_strerror(e->code), off);
    }
}

/* ---- encoder ------------------------------------------------------------------- */

int fab_frame_header_write_crc(uint8_t out[FAB_FRAME_HEADER_LEN], const fab_frame_header *h,
                               size_t len, uint32_t crc)
{
    if (fab_frame_kind_name(h->kind) == NULL || (h->flags & ~FAB_FRAME_FLAGS_KNOWN) != 0 ||
        (h->version != 0 && h->version != FAB_FRAME_VERSION))
        return FAB_EINVAL;
    if (len > FAB_FRAME_FORMAT_MAX_PAYLOAD)
        return FAB_ELIMIT;
    memcpy(out, magic, 4);
    out[4] = FAB_FRAME_VERSION;
    out[5] = h->kind;
    fab_store_be16(out + 6, h->flags);
    fab_store_be64(out + 8, h->stream_id);
    fab_store_be64(out + 16, h->seq);
    fab_store_be32(out + 24, (uint32_t)len);
    fab_store_be32(out + 28, crc);
    fab_store_be32(out + 32, fab_crc32c(0, out, 32));
    return FAB_OK;
}

int fab_frame_header_write(uint8_t out[FAB_FRAME_HEADER_LEN], const fab_frame_header *h,
                           const void *payload, size_t len)
{
    if (len > FAB_FRAME_FORMAT_MAX_PAYLOAD)
        return FAB_ELIMIT;
    return fab_frame_header_write_crc(out, h, len, fab_crc32c(0, payload, len));
}

int fab_frame_encode(fab_sink_fn sink, void *ctx, const fab_frame_header *h,
                     const void *payload, size_t len)
{
    uint8_t hdr[FAB_FRAME_HEADER_LEN];
    int rc = fab_frame_header_write(hdr, h, payload, len);
    if (rc != FAB_OK)
        return rc;
    rc = sink(ctx, hdr, sizeof(hdr));
    if (rc == FAB_OK && len > 0)
        rc = sink(ctx, payload, len);
    return rc;
}

/* ---- decoder ------------------------------------------------------------------- */

void fab_frame_decoder_init(fab_frame_decoder *d, uint32_t max_payload)
{
    memset(d, 0, sizeof(*d));
    d->max_payload = max_payload ? max_payload : FAB_FRAME_DEFAULT_MAX_PAYLOAD;
    d->state = ST_HEADER;
}

void fab_frame_decoder_destroy(fab_frame_decoder *d)
{
    free(d->pay);
    d->pay = NULL;
    d->pay_cap = d->pay_have = 0;
}

static int fail(fab_frame_decoder *d, int violation, uint64_t field, uint64_t found,
                uint64_t expected)
{
    d->err.violation = violation;
    d->err.code = violation_code(violation);
    d->err.frame_offset = d->frame_start;
    d->err.offset = d->frame_start + field;
    d->err.found = found;
    d->err.expected = expected;
    d->state = ST_FAILED;
    return d->err.code;
}

/*
 * Checks the header bytes h[prev..have) that have just arrived, so a bad magic
 * or version is refused on its own byte and the rest only once the header is
 * complete (the checksum first: a corrupt kind or length is corruption).
 */
static int check_header(fab_frame_decoder *d, const uint8_t *h, size_t prev, size_t have)
{
    for (size_t i = prev; i < have && i < 4; i++)
        if (h[i] != magic[i])
            return fail(d, FAB_FV_MAGIC, i, h[i], magic[i]);
    if (prev <= 4 && have > 4 && h[4] != FAB_FRAME_VERSION)
        return fail(d, FAB_FV_VERSION, 4, h[4], FAB_FRAME_VERSION);
    if (have < FAB_FRAME_HEADER_LEN || prev == FAB_FRAME_HEADER_LEN)
        return FAB_OK;
    uint32_t stored = fab_load_be32(h + 32), computed = fab_crc32c(0, h, 32);
    if (stored != computed)
        return fail(d, FAB_FV_HEADER_CHECKSUM, 32, stored, computed);
    if (fab_frame_kind_name(h[5]) == NULL)
        return fail(d, FAB_FV_KIND, 5, h[5], 0);
    uint16_t flags = fab_load_be16(h + 6);
    if (flags & ~FAB_FRAME_FLAGS_KNOWN)
        return fail(d, FAB_FV_FLAGS, 6, flags & ~FAB_FRAME_FLAGS_KNOWN, 0);
    uint32_t len = fab_load_be32(h + 24);
    if (len > d->max_payload)
        return fail(d, FAB_FV_TOO_LARGE, 24, len, d->max_payload);
    d->cur.version = h[4];
    d->cur.kind = h[5];
    d->cur.flags = flags;
    d->cur.stream_id = fab_load_be64(h + 8);
    d->cur.seq = fab_load_be64(h + 16);
    d->cur.payload_len = len;
    d->cur.payload_crc = fab_load_be32(h + 28);
    return FAB_OK;
}

static int finish_frame(fab_frame_decoder *d, const uint8_t *payload, int in_input,
                        fab_frame *out)
{
    uint32_t computed = fab_crc32c(0, payload, d->cur.payload_len);
    if (computed != d->cur.payload_crc)
        return fail(d, FAB_FV_PAYLOAD_CHECKSUM, 28, d->cur.payload_crc, computed);
    out->h = d->cur;
    out->payload = d->cur.payload_len ? payload : empty_payload;
    out->offset = d->frame_start;
    out->payload_in_input = in_input;
    d->state = ST_HEADER;
    d->hdr_have = 0;
    d->pay_have = 0;
    d->frame_start = d->offset;
    return FAB_FRAME_READY;
}

int fab_frame_decoder_next(fab_frame_decoder *d, const uint8_t *data, size_t len,
                           size_t *consumed, fab_frame *out)
{
    size_t pos = 0;
    int rc;
    *consumed = 0;
    if (d->state == ST_FAILED)
        return d->err.code;
    if (d->state == ST_HEADER && d->pay_cap > KEEP_BUFFER_MAX) {
        free(d->pay);
        d->pay = NULL;
        d->pay_cap = 0;
    }

    /* Fast path: a whole header at hand, checked in place without a copy. */
    if (d->state == ST_HEADER && d->hdr_have == 0 && len >= FAB_FRAME_HEADER_LEN) {
        d->frame_start = d->offset;
        if ((rc = check_header(d, data, 0, FAB_FRAME_HEADER_LEN)) != FAB_OK)
            return rc;
        size_t total = fab_frame_size(d->cur.payload_len);
        if (len >= total) {
            d->offset += total;
            *consumed = total;
            return finish_frame(d, data + FAB_FRAME_HEADER_LEN, 1, out);
        }
        memcpy(d->hdr, data, FAB_FRAME_HEADER_LEN);
        d->hdr_have = FAB_FRAME_HEADER_LEN;
        d->state = ST_PAYLOAD;
        d->pay_have = 0;
        pos = FAB_FRAME_HEADER_LEN;
        d->offset += FAB_FRAME_HEADER_LEN;
    }

    if (d->state == ST_HEADER) {
        if (d->hdr_have == 0)
            d->frame_start = d->offset;
        size_t prev = d->hdr_have, take = FAB_FRAME_HEADER_LEN - prev;
        if (take > len - pos)
            take = len - pos;
        memcpy(d->hdr + prev, data + pos, take);
        d->hdr_have += take;
        pos += take;
        d->offset += take;
        if ((rc = check_header(d, d->hdr, prev, d->hdr_have)) != FAB_OK)
            return rc;
        if (d->hdr_have < FAB_FRAME_HEADER_LEN) {
            *consumed = pos;
            return FAB_FRAME_CONTINUE;
        }
        d->state = ST_PAYLOAD;
        d->pay_have = 0;
    }

    FAB_ASSERT(d->state == ST_PAYLOAD);
    size_t plen = d->cur.payload_len, take = plen - d->pay_have;
    if (take > len - pos)
        take = len - pos;
    if (take > 0) {
        size_t need = d->pay_have + take;
        if (need > d->pay_cap) {
            /* Grow ahead by at most FAB_FRAME_GROW_MAX and never past the
             * declared length: memory follows the bytes actually fed. */
            size_t cap = need + (need < FAB_FRAME_GROW_MAX ? need : FAB_FRAME_GROW_MAX);
            if (cap > plen)
                cap = plen;
            uint8_t *p = realloc(d->pay, cap);
            if (p == NULL) {
                d->err.code = FAB_ENOMEM;
                d->err.violation = FAB_FV_NONE;
                d->err.offset = d->offset;
                d->err.frame_offset = d->frame_start;
                d->state = ST_FAILED;
                return FAB_ENOMEM;
            }
            d->pay = p;
            d->pay_cap = cap;
        }
        memcpy(d->pay + d->pay_have, data + pos, take);
        d->pay_have += take;
        pos += take;
        d->offset += take;
    }
    *consumed = pos;
    if (d->pay_have < plen)
        return FAB_FRAME_CONTINUE;
    return finish_frame(d, d->pay, 0, out);
}

int fab_frame_decoder_peek(fab_frame_decoder *d, const uint8_t *data, size_t len,
                           size_t *total)
{
    *total = 0;
    if (d->state == ST_FAILED)
        return d->err.code;
    if (d->state != ST_HEADER || d->hdr_have != 0)
        return FAB_ESTATE;
    size_t have = len < FAB_FRAME_HEADER_LEN ? len : FAB_FRAME_HEADER_LEN;
    d->frame_start = d->offset;
    int rc = check_header(d, data, 0, have);
    if (rc != FAB_OK)
        return rc;
    if (have == FAB_FRAME_HEADER_LEN)
        *total = fab_frame_size(d->cur.payload_len);
    return FAB_OK;
}

int fab_frame_decoder_finish(fab_frame_decoder *d)
{
    if (d->state == ST_FAILED)
        return d->err.code;
    if (d->hdr_have == 0)
        return FAB_OK;
    uint64_t have = d->hdr_have + d->pay_have;
    uint64_t want = d->state == ST_PAYLOAD ? fab_frame_size(d->cur.payload_len)
                                           : FAB_FRAME_HEADER_LEN;
    uint64_t end = d->offset;
    fail(d, FAB_FV_TRUNCATED, 0, have, want);
    d->err.offset = end;
    return d->err.code;
}

int fab_frame_is_reply(const fab_frame_header *s, const fab_frame_header *c,
                       const fab_frame_header *e)
{
    return s->kind == FAB_FRAME_STREAM_START && s->seq == 0 && s->stream_id != 0 &&
           c->kind == FAB_FRAME_STREAM_CHUNK && c->seq == 1 && c->flags == 0 &&
           c->stream_id == s->stream_id && e->kind == FAB_FRAME_STREAM_END && e->seq == 2 &&
           e->stream_id == s->stream_id;
}
