#include "fabric/mpdec.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "fabric/common.h"

void fab_mp_limits_default(fab_mp_limits *lim)
{
    lim->max_depth = FAB_MAX_DEPTH;
    lim->max_str = 64u << 20;
    lim->max_bin = 64u << 20;
    lim->max_ext = 64u << 20;
    lim->max_array = 16u << 20;
    lim->max_map = 16u << 20;
    lim->max_items = UINT64_C(64) << 20;
}

int fab_mp_reader_init(fab_mp_reader *r, const void *data, size_t len,
                       const fab_mp_limits *limits)
{
    r->data = data;
    r->len = len;
    r->pos = 0;
    r->items = 0;
    r->depth = 0;
    r->tags = 0;
    r->after_tag = 0;
    r->err_offset = 0;
    r->err[0] = '\0';
    if (limits)
        r->lim = *limits;
    else
        fab_mp_limits_default(&r->lim);
    if (r->lim.max_depth == 0 || r->lim.max_str == 0 || r->lim.max_bin == 0 ||
        r->lim.max_ext == 0 || r->lim.max_array == 0 || r->lim.max_map == 0 ||
        r->lim.max_items == 0)
        return FAB_EINVAL;
    if (r->lim.max_depth > FAB_MAX_RECORD_DEPTH)
        r->lim.max_depth = FAB_MAX_RECORD_DEPTH;
    return FAB_OK;
}

int fab_utf8_valid(const uint8_t *p, size_t len)
{
    size_t i = 0;
    while (i < len) {
        /* Fast path over ASCII, eight bytes at a time. */
        if (i + 8 <= len) {
            uint64_t w;
            memcpy(&w, p + i, 8);
            if (!(w & UINT64_C(0x8080808080808080))) {
                i += 8;
                continue;
            }
        }
        uint8_t c = p[i];
        if (c < 0x80) {
            i++;
        } else if (c >= 0xc2 && c <= 0xdf) {
            if (i + 1 >= len || (p[i + 1] & 0xc0) != 0x80)
                return 0;
            i += 2;
        } else if (c >= 0xe0 && c <= 0xef) {
            if (i + 2 >= len || (p[i + 1] & 0xc0) != 0x80 || (p[i + 2] & 0xc0) != 0x80)
                return 0;
            if (c == 0xe0 && p[i + 1] < 0xa0)
                return 0; /* overlong */
            if (c == 0xed && p[i + 1] >= 0xa0)
                return 0; /* surrogate */
            i += 3;
        } else if (c >= 0xf0 && c <= 0xf4) {
            if (i + 3 >= len || (p[i + 1] & 0xc0) != 0x80 || (p[i + 2] & 0xc0) != 0x80 ||
                (p[i + 3] & 0xc0) != 0x80)
                return 0;
            if (c == 0xf0 && p[i + 1] < 0x90)
                return 0; /* overlong */
            if (c == 0xf4 && p[i + 1] >= 0x90)
                return 0; /* above U+10FFFF */
            i += 4;
        } else {
            return 0;
        }
    }
    return 1;
}

static int fail(fab_mp_reader *r, int code, size_t offset, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int fail(fab_mp_reader *r, int code, size_t offset, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->err, sizeof(r->err), fmt, ap);
    va_end(ap);
    r->err_offset = offset;
    r->pos = r->len + 1; /* sticky: every later call fails */
    return code;
}

int fab_mp_complete(const fab_mp_reader *r)
{
    return r->depth == 0 && r->items > 0 && !r->after_tag;
}

/* Reads an n-byte big-endian length or count after the type byte. */
static int need(fab_mp_reader *r, size_t start, size_t n)
{
    if (r->len - r->pos < n)
        return fail(r, FAB_ETRUNCATED, start,
                    "input ends inside an item (needs %zu more bytes, %zu left)", n,
                    r->len - r->pos);
    return FAB_OK;
}

static uint64_t take_be(fab_mp_reader *r, size_t n)
{
    const uint8_t *p = r->data + r->pos;
    uint64_t v = 0;
    for (size_t i = 0; i < n; i++)
        v = (v << 8) | p[i];
    r->pos += n;
    return v;
}

static int body(fab_mp_reader *r, fab_mp_item *out, size_t start, uint64_t len,
                uint32_t limit, const char *what)
{
    if (len > limit)
        return fail(r, FAB_ELIMIT, start, "%s length %llu exceeds the limit of %u", what,
                    (unsigned long long)len, limit);
    if (len > r->len - r->pos)
        return fail(r, FAB_ETRUNCATED, start,
                    "%s declares %llu bytes but only %zu remain", what,
                    (unsigned long long)len, r->len - r->pos);
    out->v.s.p = r->data + r->pos;
    out->v.s.len = (uint32_t)len;
    r->pos += (size_t)len;
    return FAB_OK;
}

static int container(fab_mp_reader *r, fab_mp_item *out, size_t start, uint64_t count,
                     int is_map)
{
    uint32_t limit = is_map ? r->lim.max_map : r->lim.max_array;
    const char *what = is_map ? "map" : "array";
    if (count > limit)
        return fail(r, FAB_ELIMIT, start, "%s of %llu entries exceeds the limit of %u", what,
                    (unsigned long long)count, limit);
    /* Each child takes at least one byte: a count beyond what remains is a
     * bomb or a truncation, refused before anyone allocates for it. */
    uint64_t children = is_map ? 2 * count : count;
    if (children > r->len - r->pos)
        return fail(r, FAB_ETRUNCATED, start,
                    "%s declares %llu entries but only %zu bytes remain", what,
                    (unsigned long long)count, r->len - r->pos);
    out->type = is_map ? FAB_MP_MAP : FAB_MP_ARRAY;
    out->v.count = (uint32_t)count;
    if (children) {
        if (r->depth >= r->lim.max_depth)
            return fail(r, FAB_EDEPTH, start, "nesting deeper than the limit of %u",
                        r->lim.max_depth);
        r->remaining[r->depth++] = children;
    }
    return FAB_OK;
}

static int read_item(fab_mp_reader *r, fab_mp_item *out)
{
    size_t start = r->pos;
    out->offset = start;
    int rc;
    if (r->pos >= r->len)
        return fail(r, FAB_ETRUNCATED, start, "input ends where an item was expected");
    uint8_t c = r->data[r->pos++];

    if (c <= 0x7f) {
        out->type = FAB_MP_UINT;
        out->v.u = c;
        return FAB_OK;
    }
    if (c >= 0xe0) {
        out->type = FAB_MP_INT;
        out->v.i = (int8_t)c;
        return FAB_OK;
    }
    if ((c & 0xe0) == 0xa0) {
        out->type = FAB_MP_STR;
        if ((rc = body(r, out, start, c & 0x1f, r->lim.max_str, "str")) != FAB_OK)
            return rc;
        goto check_utf8;
    }
    if ((c & 0xf0) == 0x90)
        return container(r, out, start, c & 0x0f, 0);
    if ((c & 0xf0) == 0x80)
        return container(r, out, start, c & 0x0f, 1);

    switch (c) {
    case 0xc0:
        out->type = FAB_MP_NIL;
        return FAB_OK;
    case 0xc2:
    case 0xc3:
        out->type = FAB_MP_BOOL;
        out->v.b = c == 0xc3;
        return FAB_OK;
    case 0xc4: case 0xc5: case 0xc6: {
        size_t n = (size_t)1 << (c - 0xc4);
        if ((rc = need(r, start, n)) != FAB_OK)
            return rc;
        out->type = FAB_MP_BIN;
        return body(r, out, start, take_be(r, n), r->lim.max_bin, "bin");
    }
    case 0xc7: case 0xc8: case 0xc9: {
        size_t n = (size_t)1 << (c - 0xc7);
        if ((rc = need(r, start, n + 1)) != FAB_OK)
            return rc;
        uint64_t len = take_be(r, n);
        out->type = FAB_MP_EXT;
        out->v.s.ext_type = (int8_t)r->data[r->pos++];
        return body(r, out, start, len, r->lim.max_ext, "ext");
    }
    case 0xca: {
        if ((rc = need(r, start, 4)) != FAB_OK)
            return rc;
        uint32_t bits = (uint32_t)take_be(r, 4);
        float f;
        memcpy(&f, &bits, 4);
        out->type = FAB_MP_FLOAT;
        out->v.f = f;
        return FAB_OK;
    }
    case 0xcb: {
        if ((rc = need(r, start, 8)) != FAB_OK)
            return rc;
        uint64_t bits = take_be(r, 8);
        memcpy(&out->v.f, &bits, 8);
        out->type = FAB_MP_FLOAT;
        return FAB_OK;
    }
    case 0xcc: case 0xcd: case 0xce: case 0xcf: {
        size_t n = (size_t)1 << (c - 0xcc);
        if ((rc = need(r, start, n)) != FAB_OK)
            return rc;
        out->type = FAB_MP_UINT;
        out->v.u = take_be(r, n);
        return FAB_OK;
    }
    case 0xd0: case 0xd1: case 0xd2: case 0xd3: {
        size_t n = (size_t)1 << (c - 0xd0);
        if ((rc = need(r, start, n)) != FAB_OK)
            return rc;
        uint64_t u = take_be(r, n);
        int64_t v;
        if (n == 1) v = (int8_t)u;
        else if (n == 2) v = (int16_t)u;
        else if (n == 4) v = (int32_t)u;
        else memcpy(&v, &u, 8);
        if (v >= 0) {
            out->type = FAB_MP_UINT;
            out->v.u = (uint64_t)v;
        } else {
            out->type = FAB_MP_INT;
            out->v.i = v;
        }
        return FAB_OK;
    }
    case 0xd4: case 0xd5: case 0xd6: case 0xd7: case 0xd8: {
        if ((rc = need(r, start, 1)) != FAB_OK)
            return rc;
        out->type = FAB_MP_EXT;
        out->v.s.ext_type = (int8_t)r->data[r->pos++];
        return body(r, out, start, (uint64_t)1 << (c - 0xd4), r->lim.max_ext, "ext");
    }
    case 0xd9: case 0xda: case 0xdb: {
        size_t n = (size_t)1 << (c - 0xd9);
        if ((rc = need(r, start, n)) != FAB_OK)
            return rc;
        out->type = FAB_MP_STR;
        if ((rc = body(r, out, start, take_be(r, n), r->lim.max_str, "str")) != FAB_OK)
            return rc;
        goto check_utf8;
    }
    case 0xdc: case 0xdd: {
        size_t n = c == 0xdc ? 2 : 4;
        if ((rc = need(r, start, n)) != FAB_OK)
            return rc;
        return container(r, out, start, take_be(r, n), 0);
    }
    case 0xde: case 0xdf: {
        size_t n = c == 0xde ? 2 : 4;
        if ((rc = need(r, start, n)) != FAB_OK)
            return rc;
        return container(r, out, start, take_be(r, n), 1);
    }
    default: /* 0xc1 */
        return fail(r, FAB_EFORMAT, start, "reserved type byte 0x%02x", c);
    }

check_utf8:
    if (!fab_utf8_valid(out->v.s.p, out->v.s.len))
        return fail(r, FAB_EUTF8, start, "str of %u bytes is not valid UTF-8", out->v.s.len);
    return FAB_OK;
}

int fab_mp_next(fab_mp_reader *r, fab_mp_item *out)
{
    if (r->pos > r->len)
        return FAB_ESTATE;
    if (r->items >= r->lim.max_items)
        return fail(r, FAB_ELIMIT, r->pos, "more than %llu items (the limit)",
                    (unsigned long long)r->lim.max_items);
    /* The new item counts against the innermost open container; remember
     * which, so a container opened by this item nests below it. */
    uint32_t parent = r->depth;
    int rc = read_item(r, out);
    if (rc != FAB_OK)
        return rc;
    r->items++;
    if (r->tags && out->type == FAB_MP_EXT && out->v.s.len == 0 &&
        out->v.s.ext_type >= FAB_TAG_TUPLE && out->v.s.ext_type <= FAB_TAG_TYPED) {
        r->after_tag = 1; /* a prefix: the item it qualifies is the child */
        return FAB_OK;
    }
    r->after_tag = 0;
    if (parent > 0) {
        r->remaining[parent - 1]--;
        /* Close every container whose last child this was (only when the
         * item did not itself open a new one). */
        if (r->depth == parent)
            while (r->depth > 0 && r->remaining[r->depth - 1] == 0)
                r->depth--;
    }
    return FAB_OK;
}

void fab_mp_reader_tags(fab_mp_reader *r)
{
    r->tags = 1;
}

static int validate(const void *data, size_t len, const fab_mp_limits *limits, int tags,
                    char *err, size_t err_size, size_t *err_offset)
{
    fab_mp_reader r;
    fab_mp_item item;
    int rc = fab_mp_reader_init(&r, data, len, limits);
    if (rc != FAB_OK)
        return rc;
    r.tags = tags;
    do {
        rc = fab_mp_next(&r, &item);
    } while (rc == FAB_OK && (r.depth > 0 || r.after_tag));
    if (rc == FAB_OK && r.pos != r.len)
        rc = fail(&r, FAB_EFORMAT, r.pos, "%zu trailing bytes after the value", r.len - r.pos);
    if (rc != FAB_OK) {
        if (err && err_size) {
            snprintf(err, err_size, "%s", r.err);
        }
        if (err_offset)
            *err_offset = r.err_offset;
    }
    return rc;
}

int fab_mp_validate(const void *data, size_t len, const fab_mp_limits *limits,
                    char *err, size_t err_size, size_t *err_offset)
{
    return validate(data, len, limits, 0, err, err_size, err_offset);
}

int fab_value_prefix(const void *data, size_t len, size_t *body, char *err, size_t err_size,
                     size_t *err_offset)
{
    const uint8_t *p = data;
    *body = 0;
    if (len == 0 || p[0] != FAB_VALUE_MAGIC)
        return FAB_OK;
    if (len >= 2 && p[1] == FAB_VALUE_VERSION) {
        *body = 2;
        return FAB_OK;
    }
    if (err && err_size) {
        if (len < 2)
            snprintf(err, err_size, "missing version byte: the input ends after the value "
                                    "encoding's prefix c1");
        else
            snprintf(err, err_size, "unknown value encoding version %u (this reader knows %d)",
                     (unsigned)p[1], FAB_VALUE_VERSION);
    }
    if (err_offset)
        *err_offset = 1;
    return FAB_EVERSION;
}

int fab_mp_validate_tagged(const void *data, size_t len, const fab_mp_limits *limits,
                           char *err, size_t err_size, size_t *err_offset)
{
    return validate(data, len, limits, 1, err, err_size, err_offset);
}
