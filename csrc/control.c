/*
 * The control codec (docs/spec/frames.md §6; fabric/control.h).
 *
 * Decoding runs in two passes over the payload: the reader first validates
 * the whole value under the limits (so a payload that is not msgpack is
 * refused as such, wherever the shape is also wrong), then one pass reads
 * the map's keys and the first item of each value, skipping the rest of a
 * value without looking into it. The refusals are checked in a fixed order
 * (a key that is not a str; no "op"; an unknown operation; a missing
 * field; then, in payload order, an unknown field or a value of the wrong
 * type), so a payload with several faults always gets the same refusal.
 */
#include "fabric/control.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static const char *const op_names[FAB_CTL_NOPS] = {
    "open", "next", "push", "close", "cancel", "stats", "metadata", "fault",
};

static const char *const op_caps[FAB_CTL_NOPS] = {
    "stream.open", "stream.read", "stream.push", "stream.cancel",
    "stream.cancel", "stream.stats", "stream.stats", "stream.stats",
};

/* Required and optional fields per operation. */
static const unsigned op_required[FAB_CTL_NOPS] = {
    0, FAB_CTL_F_LIMIT, FAB_CTL_F_ITEM, 0, 0, 0, 0, FAB_CTL_F_KIND | FAB_CTL_F_COUNT,
};
static const unsigned op_optional[FAB_CTL_NOPS] = {
    FAB_CTL_F_METADATA, 0, 0, 0, FAB_CTL_F_REASON, 0, 0, 0,
};

/* Field names by bit position, and the canonical order of the keys (msgpack
 * canonical order sorts keys by their encoded bytes: shorter first; "op",
 * of two bytes, precedes them all). */
static const char *const field_names[FAB_CTL_NFIELDS] = {
    "metadata", "limit", "item", "reason", "kind", "count",
};
static const unsigned canonical_order[FAB_CTL_NFIELDS] = {
    FAB_CTL_F_ITEM, FAB_CTL_F_KIND, FAB_CTL_F_COUNT, FAB_CTL_F_LIMIT, FAB_CTL_F_REASON,
    FAB_CTL_F_METADATA,
};

static const char *const fault_names[FAB_CTL_NFAULTS] = {
    "drop", "reorder", "duplicate", "delay", "cancel", "timeout", "disconnect", "reconnect",
    "unsupported-profile",
};

const char *fab_control_op_name(int op)
{
    return op >= 0 && op < FAB_CTL_NOPS ? op_names[op] : NULL;
}

static int lookup(const char *const *names, int n, const void *name, size_t len)
{
    for (int i = 0; i < n; i++)
        if (strlen(names[i]) == len && memcmp(names[i], name, len) == 0)
            return i;
    return -1;
}

int fab_control_op_lookup(const void *name, size_t len)
{
    return lookup(op_names, FAB_CTL_NOPS, name, len);
}

const char *fab_control_capability(int op)
{
    return op >= 0 && op < FAB_CTL_NOPS ? op_caps[op] : NULL;
}

const char *fab_control_fault_name(int i)
{
    return i >= 0 && i < FAB_CTL_NFAULTS ? fault_names[i] : NULL;
}

static int bit_index(unsigned bit)
{
    for (int i = 0; i < FAB_CTL_NFIELDS; i++)
        if (bit == 1u << i)
            return i;
    return -1;
}

const char *fab_control_field_name(unsigned bit)
{
    int i = bit_index(bit);
    return i < 0 ? NULL : field_names[i];
}

unsigned fab_control_required(int op)
{
    return op >= 0 && op < FAB_CTL_NOPS ? op_required[op] : 0;
}

unsigned fab_control_allowed(int op)
{
    return op >= 0 && op < FAB_CTL_NOPS ? op_required[op] | op_optional[op] : 0;
}

/* ---- refusals ------------------------------------------------------------ */

/* At most max bytes of p as printable ASCII, '?' for anything else. */
static void printable(char *dst, size_t size, const uint8_t *p, size_t len)
{
    size_t n = 0;
    for (size_t i = 0; i < len && n + 1 < size; i++)
        dst[n++] = p[i] >= 0x20 && p[i] < 0x7f && p[i] != '\'' && p[i] != '\\' ? (char)p[i]
                                                                              : '?';
    if (size)
        dst[n] = '\0';
}

/* A short description of a value's first item, for messages. */
static void describe(char *dst, size_t size, const fab_mp_item *it, int tagged)
{
    char s[40];
    if (tagged) {
        snprintf(dst, size, "a tagged value");
        return;
    }
    switch (it->type) {
    case FAB_MP_NIL: snprintf(dst, size, "nil"); break;
    case FAB_MP_BOOL: snprintf(dst, size, "%s", it->v.b ? "true" : "false"); break;
    case FAB_MP_INT: snprintf(dst, size, "%lld", (long long)it->v.i); break;
    case FAB_MP_UINT: snprintf(dst, size, "%llu", (unsigned long long)it->v.u); break;
    case FAB_MP_FLOAT: snprintf(dst, size, "a float (%g)", it->v.f); break;
    case FAB_MP_STR:
        printable(s, sizeof(s), it->v.s.p, it->v.s.len);
        snprintf(dst, size, "'%s'%s", s, it->v.s.len >= sizeof(s) ? "..." : "");
        break;
    case FAB_MP_BIN: snprintf(dst, size, "bytes"); break;
    case FAB_MP_EXT: snprintf(dst, size, "an ext of type %d", it->v.s.ext_type); break;
    case FAB_MP_ARRAY: snprintf(dst, size, "an array"); break;
    case FAB_MP_MAP: snprintf(dst, size, "a map"); break;
    }
}

static int refuse(fab_control_error *err, int code, size_t offset, const char *field,
                  const char *fmt, ...)
{
    err->msgpack = 0;
    err->offset = offset;
    snprintf(err->field, sizeof(err->field), "%s", field ? field : "");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
    va_end(ap);
    return code;
}

/* The start of every decoder: err (or the caller's scratch when err is NULL)
 * and *out cleared; returns the error record to fill. */
static fab_control_error *begin(fab_control_error *err, fab_control_error *scratch, void *out,
                                size_t out_size)
{
    if (err == NULL)
        err = scratch;
    memset(err, 0, sizeof(*err));
    memset(out, 0, out_size);
    return err;
}

/* Reads the rest of the value whose first item was read at depth0. */
static int skip_rest(fab_mp_reader *r, uint32_t depth0)
{
    fab_mp_item skip;
    while (r->depth > depth0) {
        int rc = fab_mp_next(r, &skip);
        if (rc)
            return rc;
    }
    return 0;
}

/* ---- decoding ---------------------------------------------------------------- */

/* What the pass saw of one pair. */
typedef struct seen {
    uint32_t index;   /* position among the pairs */
    size_t key_off;
    fab_mp_item first; /* the value's first item (after any tag) */
    int tagged;        /* the value carries a tag */
    size_t start, end; /* the value's bytes, tag included */
} seen;

/* Reads the rest of a value whose first item is *it (read at depth0). */
static int finish_value(fab_mp_reader *r, fab_mp_item *it, uint32_t depth0, int *tagged)
{
    *tagged = 0;
    while (r->after_tag) {
        *tagged = 1;
        int rc = fab_mp_next(r, it);
        if (rc)
            return rc;
    }
    return skip_rest(r, depth0);
}

static int positive(const seen *v, uint64_t *out)
{
    if (v->tagged || v->first.type != FAB_MP_UINT || v->first.v.u < 1)
        return v->tagged || (v->first.type != FAB_MP_UINT && v->first.type != FAB_MP_INT)
                   ? FAB_ETYPE : FAB_ERANGE;
    *out = v->first.v.u;
    return 0;
}

int fab_control_decode(const void *payload, size_t len, const fab_mp_limits *limits,
                       fab_control *out, fab_control_error *err)
{
    fab_control_error scratch;
    err = begin(err, &scratch, out, sizeof(*out));
    const uint8_t *p = payload;
    size_t base = 0;
    int rc = fab_value_prefix(p, len, &base, err->msg, sizeof(err->msg), &err->offset);
    if (rc != FAB_OK) {
        err->msgpack = 1;
        return rc;
    }
    out->tagged = base > 0;
    if (len == base) {
        err->msgpack = 1;
        err->offset = base;
        snprintf(err->msg, sizeof(err->msg), "%s",
                 base ? "no value after the value encoding's prefix c1 01"
                      : "empty input (no value)");
        return FAB_ETRUNCATED;
    }
    size_t off = 0;
    rc = out->tagged ? fab_mp_validate_tagged(p + base, len - base, limits, err->msg,
                                              sizeof(err->msg), &off)
                     : fab_mp_validate(p + base, len - base, limits, err->msg, sizeof(err->msg),
                                       &off);
    if (rc) {
        err->msgpack = 1;
        err->offset = base + off;
        return rc;
    }

    fab_mp_reader r;
    fab_mp_item it;
    if ((rc = fab_mp_reader_init(&r, p + base, len - base, limits)) != 0)
        return rc;
    if (out->tagged)
        fab_mp_reader_tags(&r);
    if ((rc = fab_mp_next(&r, &it)) != 0)
        return rc;
    char what[64];
    if (r.after_tag || it.type != FAB_MP_MAP) {
        describe(what, sizeof(what), &it, r.after_tag);
        return refuse(err, FAB_ETYPE, base + it.offset, NULL,
                      "control payload must be a map, got %s", what);
    }
    uint32_t pairs = it.v.count;
    seen op = {0}, fields[FAB_CTL_NFIELDS];
    unsigned have = 0;
    int have_op = 0;
    int unknown = 0;
    seen unknown_at = {0};
    char unknown_name[24] = "";
    for (uint32_t i = 0; i < pairs; i++) {
        if ((rc = fab_mp_next(&r, &it)) != 0)
            return rc;
        if (r.after_tag || it.type != FAB_MP_STR) {
            describe(what, sizeof(what), &it, r.after_tag);
            return refuse(err, FAB_ETYPE, base + it.offset, NULL,
                          "control field name %s is not a str", what);
        }
        const uint8_t *name = it.v.s.p;
        size_t name_len = it.v.s.len, key_off = it.offset;
        seen v = {.index = i, .key_off = key_off};
        uint32_t depth0 = r.depth;
        if ((rc = fab_mp_next(&r, &v.first)) != 0)
            return rc;
        v.start = v.first.offset;
        if ((rc = finish_value(&r, &v.first, depth0, &v.tagged)) != 0)
            return rc;
        v.end = r.pos;
        int f = lookup(field_names, FAB_CTL_NFIELDS, name, name_len);
        int is_op = name_len == 2 && memcmp(name, "op", 2) == 0;
        if (is_op || (f >= 0 && (have & (1u << f)))) {
            if (is_op ? have_op : 1) {
                char n[24];
                printable(n, sizeof(n), name, name_len);
                return refuse(err, FAB_EFORMAT, base + key_off, n,
                              "control field '%s' appears twice", n);
            }
        }
        if (is_op) {
            op = v;
            have_op = 1;
        } else if (f >= 0) {
            fields[f] = v;
            have |= 1u << f;
        } else if (!unknown) {
            unknown = 1;
            unknown_at = v;
            printable(unknown_name, sizeof(unknown_name), name, name_len);
        }
    }
    /* Map keys are all str by now. The op. */
    if (!have_op)
        return refuse(err, FAB_EFORMAT, 0, "op", "control payload has no 'op' field");
    int o = -1;
    if (!op.tagged && op.first.type == FAB_MP_STR)
        o = fab_control_op_lookup(op.first.v.s.p, op.first.v.s.len);
    if (o < 0) {
        describe(what, sizeof(what), &op.first, op.tagged);
        return refuse(err, FAB_EFORMAT, base + op.start, "op",
                      "unknown control operation %s (known: open, next, push, close, cancel, "
                      "stats, metadata, fault)", what);
    }
    out->op = (fab_control_op)o;
    const char *opn = op_names[o];
    for (int f = 0; f < FAB_CTL_NFIELDS; f++) {
        unsigned bit = 1u << f;
        if ((op_required[o] & bit) && !(have & bit))
            return refuse(err, FAB_EFORMAT, 0, field_names[f],
                          "control '%s' is missing its field '%s'", opn, field_names[f]);
    }
    /* In payload order: an unknown field, or a value of the wrong type. */
    for (uint32_t i = 0; i < pairs; i++) {
        if (unknown && unknown_at.index == i)
            return refuse(err, FAB_EFORMAT, base + unknown_at.key_off, unknown_name,
                          "control '%s' has an unknown field '%s'", opn, unknown_name);
        int f = -1;
        for (int k = 0; k < FAB_CTL_NFIELDS; k++)
            if ((have & (1u << k)) && fields[k].index == i)
                f = k;
        if (f < 0)
            continue; /* the op */
        unsigned bit = 1u << f;
        const seen *v = &fields[f];
        const char *fn = field_names[f];
        if (!(fab_control_allowed(o) & bit))
            return refuse(err, FAB_EFORMAT, base + v->key_off, fn,
                          "control '%s' has an unknown field '%s'", opn, fn);
        describe(what, sizeof(what), &v->first, v->tagged);
        switch (bit) {
        case FAB_CTL_F_METADATA:
            if (v->tagged || v->first.type != FAB_MP_MAP)
                return refuse(err, FAB_ETYPE, base + v->start, fn,
                              "control '%s' field '%s' must be a map, got %s", opn, fn, what);
            out->metadata = p + base + v->start;
            out->metadata_len = v->end - v->start;
            break;
        case FAB_CTL_F_ITEM:
            out->item = p + base + v->start;
            out->item_len = v->end - v->start;
            break;
        case FAB_CTL_F_REASON:
            if (v->tagged || v->first.type != FAB_MP_STR)
                return refuse(err, FAB_ETYPE, base + v->start, fn,
                              "control '%s' field '%s' must be a str, got %s", opn, fn, what);
            out->reason = v->first.v.s.p;
            out->reason_len = v->first.v.s.len;
            break;
        case FAB_CTL_F_KIND:
            out->fault = -1;
            if (!v->tagged && v->first.type == FAB_MP_STR)
                out->fault = lookup(fault_names, FAB_CTL_NFAULTS, v->first.v.s.p,
                                    v->first.v.s.len);
            if (out->fault < 0)
                return refuse(err, v->tagged || v->first.type != FAB_MP_STR ? FAB_ETYPE
                                                                            : FAB_ERANGE,
                              base + v->start, fn,
                              "control '%s' field '%s' must be one of drop, reorder, "
                              "duplicate, delay, cancel, timeout, disconnect, reconnect, "
                              "unsupported-profile, got %s", opn, fn, what);
            break;
        case FAB_CTL_F_LIMIT:
        case FAB_CTL_F_COUNT:
            if ((rc = positive(v, bit == FAB_CTL_F_LIMIT ? &out->limit : &out->count)) != 0)
                return refuse(err, rc, base + v->start, fn,
                              "control '%s' field '%s' must be a positive int, got %s", opn,
                              fn, what);
            break;
        }
    }
    out->present = have;
    return 0;
}

/* ---- capabilities ---------------------------------------------------------- */

static int granted(const char *cap, const char *const *grants, const size_t *lens, size_t n)
{
    size_t len = strlen(cap);
    for (size_t i = 0; i < n; i++)
        if (grants[i] && lens[i] == len && memcmp(grants[i], cap, len) == 0)
            return 1;
    return 0;
}

int fab_control_check(int op, const char *const *grants, const size_t *lens, size_t n,
                      int remote, const char **missing)
{
    const char *cap = fab_control_capability(op);
    if (cap == NULL)
        return FAB_EINVAL;
    if (!granted(cap, grants, lens, n)) {
        *missing = cap;
        return FAB_ENOTFOUND;
    }
    if (remote && !granted(FAB_CTL_REMOTE_CAPABILITY, grants, lens, n)) {
        *missing = FAB_CTL_REMOTE_CAPABILITY;
        return FAB_ENOTFOUND;
    }
    *missing = NULL;
    return 0;
}

/* ---- encoding ---------------------------------------------------------------- */

static int put_str(fab_buf *out, const void *s, size_t len)
{
    uint8_t h[8];
    if (len > UINT32_MAX)
        return FAB_EINVAL;
    int rc = fab_buf_append(out, h, fab_put_str_header(h, (uint32_t)len));
    return rc || len == 0 ? rc : fab_buf_append(out, s, len);
}

int fab_control_encode(const fab_control *c, fab_buf *out)
{
    if ((unsigned)c->op >= FAB_CTL_NOPS)
        return FAB_EINVAL;
    int o = (int)c->op;
    unsigned have = c->present;
    if ((have & op_required[o]) != op_required[o] || (have & ~fab_control_allowed(o)))
        return FAB_EINVAL;
    if (((have & FAB_CTL_F_LIMIT) && c->limit < 1) ||
        ((have & FAB_CTL_F_COUNT) && c->count < 1) ||
        ((have & FAB_CTL_F_KIND) && fab_control_fault_name(c->fault) == NULL) ||
        ((have & FAB_CTL_F_ITEM) && (c->item == NULL || c->item_len == 0)) ||
        ((have & FAB_CTL_F_METADATA) && (c->metadata == NULL || c->metadata_len == 0)) ||
        ((have & FAB_CTL_F_REASON) &&
         (c->reason_len && (c->reason == NULL || !fab_utf8_valid(c->reason, c->reason_len)))))
        return FAB_EINVAL;
    size_t start = out->len;
    uint8_t h[16];
    unsigned n = 1;
    for (int f = 0; f < FAB_CTL_NFIELDS; f++)
        n += (have >> f) & 1u;
    int rc = fab_buf_append(out, h, fab_put_map_header(h, n));
    if (!rc)
        rc = put_str(out, "op", 2);
    if (!rc)
        rc = put_str(out, op_names[o], strlen(op_names[o]));
    for (int k = 0; k < FAB_CTL_NFIELDS && !rc; k++) {
        unsigned bit = canonical_order[k];
        if (!(have & bit))
            continue;
        const char *fn = field_names[bit_index(bit)];
        if ((rc = put_str(out, fn, strlen(fn))) != 0)
            break;
        switch (bit) {
        case FAB_CTL_F_ITEM: rc = fab_buf_append(out, c->item, c->item_len); break;
        case FAB_CTL_F_METADATA: rc = fab_buf_append(out, c->metadata, c->metadata_len); break;
        case FAB_CTL_F_REASON: rc = put_str(out, c->reason, c->reason_len); break;
        case FAB_CTL_F_KIND:
            rc = put_str(out, fault_names[c->fault], strlen(fault_names[c->fault]));
            break;
        case FAB_CTL_F_LIMIT: rc = fab_buf_append(out, h, fab_put_uint64(h, c->limit)); break;
        case FAB_CTL_F_COUNT: rc = fab_buf_append(out, h, fab_put_uint64(h, c->count)); break;
        }
    }
    if (rc)
        out->len = start;
    return rc;
}

/* ---- the node protocol's request open ---------------------------------------------- */

/* A name and its length (no strlen per lookup: this runs per request). */
typedef struct name_len {
    const char *s;
    size_t n;
} name_len;
#define NL(x) {x, sizeof(x) - 1}

static const name_len open_fields[FAB_OPEN_NFIELDS] = {
    NL("request"), NL("key"), NL("want"), NL("scope"), NL("grants"), NL("timeout"), NL("via"),
};
static const name_len request_fields[FAB_OPEN_REQUEST_NFIELDS] = {
    NL("op"), NL("args"), NL("kwargs"), NL("version"), NL("caps"), NL("mode"),
    NL("answer_limit"), NL("stream_buffer"), NL("stream"), NL("trace"), NL("sharing"),
    NL("consistency"), NL("deadline"),
};
static const name_len open_top[2] = {NL("op"), NL("metadata")};
enum { REQ_ARGS = 1, REQ_KWARGS = 2, TOP_OP = 0, TOP_METADATA = 1 };

const char *fab_open_field(int i)
{
    return i >= 0 && i < FAB_OPEN_NFIELDS ? open_fields[i].s : NULL;
}

const char *fab_open_request_field(int i)
{
    return i >= 0 && i < FAB_OPEN_REQUEST_NFIELDS ? request_fields[i].s : NULL;
}

/* The index of the str item *it among names, or -1. */
static int match(const name_len *names, int n, const fab_mp_item *it)
{
    if (it->type != FAB_MP_STR)
        return -1;
    for (int i = 0; i < n; i++)
        if (names[i].n == it->v.s.len && memcmp(names[i].s, it->v.s.p, names[i].n) == 0)
            return i;
    return -1;
}

/* Ends the value whose first item *first was read at depth0: the rest
 * skipped, its bytes into *span. */
static int end_value(fab_mp_reader *r, const fab_mp_item *first, uint32_t depth0,
                     fab_open_span *span)
{
    int rc = skip_rest(r, depth0);
    span->p = r->data + first->offset;
    span->len = r->pos - first->offset;
    return rc;
}

/* Reads the value after the key of field f: its first item into *first,
 * the rest skipped, its bytes into *span. */
static int read_value(fab_mp_reader *r, fab_mp_item *first, fab_open_span *span)
{
    uint32_t depth0 = r->depth;
    int rc = fab_mp_next(r, first);
    return rc ? rc : end_value(r, first, depth0, span);
}

/* The field the key *it names among names, marked in *have; -1 for a key
 * that is not one of them or that *have already holds. */
static int claim(const name_len *names, int n, const fab_mp_item *it, unsigned *have)
{
    int f = match(names, n, it);
    if (f < 0 || (*have & (1u << f)))
        return -1;
    *have |= 1u << f;
    return f;
}

/* Reads the elements of an array whose header *it was just read: *ok is
 * whether it is an array of at most max str (anything else is left to the
 * caller to skip). */
static int str_array(fab_mp_reader *r, const fab_mp_item *it, uint32_t max, int *ok)
{
    *ok = it->type == FAB_MP_ARRAY && it->v.count <= max;
    if (it->type != FAB_MP_ARRAY)
        return 0;
    for (uint32_t i = 0; i < it->v.count; i++) {
        fab_mp_item x;
        fab_open_span span;
        int rc = read_value(r, &x, &span);
        if (rc)
            return rc;
        if (x.type != FAB_MP_STR)
            *ok = 0;
    }
    return 0;
}

/* Reads a map's key into *it: all of it (a key may be a container). */
static int read_key(fab_mp_reader *r, fab_mp_item *it)
{
    uint32_t depth0 = r->depth;
    int rc = fab_mp_next(r, it);
    return rc ? rc : skip_rest(r, depth0);
}

static int reader_refusal(const fab_mp_reader *r, int rc, fab_control_error *err)
{
    err->msgpack = 1;
    err->offset = r->err_offset;
    snprintf(err->msg, sizeof(err->msg), "%s", r->err[0] ? r->err : "malformed msgpack");
    return rc;
}

int fab_control_open_read(const void *payload, size_t len, const fab_mp_limits *limits,
                          fab_control_open *out, fab_control_error *err)
{
    fab_control_error scratch;
    err = begin(err, &scratch, out, sizeof(*out));
    out->want = out->scope = -1;
    const uint8_t *p = payload;
    if (len > 0 && p[0] == FAB_VALUE_MAGIC)
        return refuse(err, FAB_EVERSION, 0, NULL, "a request open is plain msgpack");
    /* One pass over every item of the payload, with the reader's checks and
     * limits (as fab_mp_validate's), and the shape checked as it goes. */
    fab_mp_reader r;
    fab_mp_item it, first[FAB_OPEN_NFIELDS], rfirst[FAB_OPEN_REQUEST_NFIELDS];
    int rc = fab_mp_reader_init(&r, p, len, limits);
    if (rc)
        return rc;
#define NEXT(x)                                                                          \
    do {                                                                                 \
        if ((rc = fab_mp_next(&r, (x))) != 0)                                            \
            return reader_refusal(&r, rc, err);                                          \
    } while (0)
#define KEY(x)                                                                           \
    do {                                                                                 \
        if ((rc = read_key(&r, (x))) != 0)                                               \
            return reader_refusal(&r, rc, err);                                          \
    } while (0)
#define SHAPE(code, at, field, ...)                                                      \
    do {                                                                                 \
        if (!shape_rc)                                                                   \
            shape_rc = refuse(err, (code), (at), (field), __VA_ARGS__);                  \
    } while (0)
    int shape_rc = 0; /* the first shape refusal; reading goes on (a reader error wins) */
    if (len == 0)
        return refuse(err, FAB_ETRUNCATED, 0, NULL, "empty input (no value)");
    NEXT(&it);
    if (it.type != FAB_MP_MAP || it.v.count != 2)
        SHAPE(FAB_EFORMAT, it.offset, NULL, "a request open is a map {op, metadata}");
    unsigned have_top = 0;
    uint32_t top = it.type == FAB_MP_MAP ? it.v.count : 0;
    for (uint32_t i = 0; i < top; i++) {
        KEY(&it);
        int t = claim(open_top, 2, &it, &have_top);
        if (t < 0)
            SHAPE(FAB_EFORMAT, it.offset, NULL, "a request open is a map {op, metadata}");
        int is_op = t == TOP_OP, is_meta = t == TOP_METADATA;
        if (!is_meta) {
            fab_open_span span;
            if ((rc = read_value(&r, &it, &span)) != 0)
                return reader_refusal(&r, rc, err);
            if (is_op && !(it.type == FAB_MP_STR && it.v.s.len == 4 &&
                           memcmp(it.v.s.p, "open", 4) == 0))
                SHAPE(FAB_EFORMAT, it.offset, "op", "a request is a control 'open'");
            continue;
        }
        /* the metadata */
        uint32_t depth0 = r.depth;
        NEXT(&it);
        if (it.type != FAB_MP_MAP || it.v.count != FAB_OPEN_NFIELDS)
            SHAPE(FAB_EFORMAT, it.offset, "metadata",
                  "open metadata must be a map of exactly its 7 fields");
        unsigned have = 0;
        uint32_t pairs = it.type == FAB_MP_MAP ? it.v.count : 0;
        for (uint32_t k = 0; k < pairs; k++) {
            KEY(&it);
            int f = claim(open_fields, FAB_OPEN_NFIELDS, &it, &have);
            if (f < 0)
                SHAPE(FAB_EFORMAT, it.offset, "metadata",
                      "open metadata has a field that is unknown or repeated");
            if (f == FAB_OPEN_GRANTS || f == FAB_OPEN_VIA) {
                uint32_t d = r.depth;
                NEXT(&first[f]);
                int ok;
                if ((rc = str_array(&r, &first[f], f == FAB_OPEN_VIA ? FAB_OPEN_MAX_VIA
                                                                      : UINT32_MAX, &ok)) ||
                    (rc = end_value(&r, &first[f], d, &out->meta[f])) != 0)
                    return reader_refusal(&r, rc, err);
                if (!ok)
                    SHAPE(FAB_ETYPE, first[f].offset, open_fields[f].s,
                          f == FAB_OPEN_VIA ? "via must be an array of at most 16 str"
                                            : "grants must be an array of str");
            } else if (f == FAB_OPEN_REQUEST) {
                uint32_t d = r.depth;
                NEXT(&first[f]);
                if (first[f].type != FAB_MP_MAP || first[f].v.count != FAB_OPEN_REQUEST_NFIELDS)
                    SHAPE(FAB_EFORMAT, first[f].offset, "request",
                          "the request must be a map of exactly its 13 fields");
                unsigned rhave = 0;
                uint32_t rpairs = first[f].type == FAB_MP_MAP ? first[f].v.count : 0;
                for (uint32_t q = 0; q < rpairs; q++) {
                    KEY(&it);
                    int g = claim(request_fields, FAB_OPEN_REQUEST_NFIELDS, &it, &rhave);
                    fab_open_span scratch_span;
                    fab_mp_item scratch_item;
                    if (g < 0)
                        SHAPE(FAB_EFORMAT, it.offset, "request",
                              "the request has a field that is unknown or repeated");
                    if ((rc = read_value(&r, g < 0 ? &scratch_item : &rfirst[g],
                                         g < 0 ? &scratch_span : &out->request[g])) != 0)
                        return reader_refusal(&r, rc, err);
                }
                if ((rc = end_value(&r, &first[f], d, &out->meta[f])) != 0)
                    return reader_refusal(&r, rc, err);
                if (rpairs == FAB_OPEN_REQUEST_NFIELDS && !shape_rc &&
                    (rfirst[REQ_ARGS].type != FAB_MP_ARRAY || rfirst[REQ_KWARGS].type != FAB_MP_MAP))
                    SHAPE(FAB_ETYPE, first[f].offset, "request",
                          "request args must be an array and kwargs a map");
            } else {
                fab_open_span scratch_span;
                fab_mp_item scratch_item;
                if ((rc = read_value(&r, f < 0 ? &scratch_item : &first[f],
                                     f < 0 ? &scratch_span : &out->meta[f])) != 0)
                    return reader_refusal(&r, rc, err);
            }
        }
        if ((rc = skip_rest(&r, depth0)) != 0)
            return reader_refusal(&r, rc, err);
        if (have == (1u << FAB_OPEN_NFIELDS) - 1 && !shape_rc) {
            out->want = match((const name_len[]){NL("value"), NL("stream")}, 2,
                              &first[FAB_OPEN_WANT]);
            out->scope = match((const name_len[]){NL("held"), NL("compute")}, 2,
                               &first[FAB_OPEN_SCOPE]);
            const fab_mp_item *t = &first[FAB_OPEN_TIMEOUT];
            if (out->want < 0)
                SHAPE(FAB_ERANGE, first[FAB_OPEN_WANT].offset, "want",
                      "want must be \"value\" or \"stream\"");
            else if (out->scope < 0)
                SHAPE(FAB_ERANGE, first[FAB_OPEN_SCOPE].offset, "scope",
                      "scope must be \"held\" or \"compute\"");
            else if (!(t->type == FAB_MP_NIL || (t->type == FAB_MP_UINT && t->v.u > 0) ||
                       (t->type == FAB_MP_FLOAT && t->v.f > 0)))
                SHAPE(FAB_ERANGE, t->offset, "timeout", "timeout must be a positive number or nil");
        }
    }
    if ((rc = skip_rest(&r, 0)) != 0) /* what is left of a top value of another shape */
        return reader_refusal(&r, rc, err);
    if (r.pos != len) {
        err->msgpack = 1;
        err->offset = r.pos;
        snprintf(err->msg, sizeof(err->msg), "%zu trailing bytes after the value", len - r.pos);
        return FAB_EFORMAT;
    }
    if (!shape_rc && have_top != 3u)
        SHAPE(FAB_EFORMAT, 0, "metadata", "a request is a control 'open' with metadata");
    if (shape_rc) {
        out->want = out->scope = -1;
        return shape_rc;
    }
#undef NEXT
#undef KEY
#undef SHAPE
    return 0;
}
