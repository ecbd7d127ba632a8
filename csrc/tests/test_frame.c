/* Frame codec: round trips, every split of the input, each refusal with its
 * offset, and the allocation bound of the decoder. */
#include "check.h"
#include "fabric/crc32c.h"
#include "fabric/frame.h"

/* Encodes a frame into b. */
static void put(fab_buf *b, uint8_t kind, uint16_t flags, uint64_t sid, uint64_t seq,
                const void *payload, size_t len)
{
    fab_frame_header h = {0};
    h.kind = kind;
    h.flags = flags;
    h.stream_id = sid;
    h.seq = seq;
    CHECK_EQ(fab_frame_encode(fab_buf_sink, b, &h, payload, len), 0);
}

/* A stream holding one frame of every kind, payload sizes 0..; returns count. */
static int sample_stream(fab_buf *b)
{
    static uint8_t big[70000];
    for (size_t i = 0; i < sizeof(big); i++)
        big[i] = (uint8_t)(i * 7 + 3);
    int n = 0;
    for (int k = 1; k <= FAB_FRAME_KIND_MAX; k++, n++)
        put(b, (uint8_t)k, k == FAB_FRAME_STREAM_CHUNK ? FAB_FRAME_FLAG_DIAGNOSTIC : 0,
            (uint64_t)k << 40 | 77, (uint64_t)k * 1000003u, big, (size_t)(k - 1) * 37);
    put(b, FAB_FRAME_STREAM_CHUNK, 0, 5, 6, big, sizeof(big));
    return n + 1;
}

/* Decodes data fed in pieces of the sizes step() returns; checks every frame
 * against the sample and returns the number decoded. */
static int decode_split(const fab_buf *b, size_t (*step)(size_t i, unsigned *r), unsigned seed)
{
    fab_frame_decoder d;
    fab_frame_decoder_init(&d, 1u << 20);
    size_t pos = 0, i = 0;
    int n = 0;
    unsigned r = seed;
    while (pos < b->len) {
        size_t piece = step(i++, &r);
        if (piece > b->len - pos)
            piece = b->len - pos;
        size_t off = 0;
        while (off < piece) {
            size_t used;
            fab_frame f;
            int rc = fab_frame_decoder_next(&d, b->data + pos + off, piece - off, &used, &f);
            CHECK(rc >= 0);
            if (rc < 0)
                goto out;
            off += used;
            if (rc == FAB_FRAME_READY) {
                n++;
                if (n <= FAB_FRAME_KIND_MAX) {
                    CHECK_EQ(f.h.kind, n);
                    CHECK_EQ(f.h.stream_id, (uint64_t)n << 40 | 77);
                    CHECK_EQ(f.h.seq, (uint64_t)n * 1000003u);
                    CHECK_EQ(f.h.payload_len, (n - 1) * 37);
                    CHECK_EQ(f.h.flags, n == FAB_FRAME_STREAM_CHUNK ? 1 : 0);
                } else {
                    CHECK_EQ(f.h.payload_len, 70000);
                }
                CHECK_EQ(fab_crc32c(0, f.payload, f.h.payload_len), f.h.payload_crc);
                /* The frame's offset is where its header sits in the stream. */
                CHECK_MEM(b->data + f.offset, "SFRM", 4);
            }
        }
        pos += piece;
    }
    CHECK_EQ(fab_frame_decoder_finish(&d), 0);
out:
    fab_frame_decoder_destroy(&d);
    return n;
}

static size_t step_one(size_t i, unsigned *r) { (void)i; (void)r; return 1; }
static size_t step_all(size_t i, unsigned *r) { (void)i; (void)r; return SIZE_MAX; }
static size_t step_rand(size_t i, unsigned *r)
{
    (void)i;
    *r = *r * 1103515245u + 12345u;
    unsigned v = (*r >> 8) % 100;
    return v < 50 ? v + 1 : v < 90 ? v * 97 : 40000;
}

static void test_round_trip_any_split(void)
{
    fab_buf b;
    fab_buf_init(&b);
    int n = sample_stream(&b);
    CHECK_EQ(decode_split(&b, step_all, 0), n);
    CHECK_EQ(decode_split(&b, step_one, 0), n);
    for (unsigned seed = 1; seed < 40; seed++)
        CHECK_EQ(decode_split(&b, step_rand, seed), n);
    fab_buf_destroy(&b);
}

static void test_golden_header(void)
{
    /* docs/spec/frames.md, vector 1: PING, stream 1, seq 2, empty payload. */
    uint8_t out[FAB_FRAME_HEADER_LEN];
    fab_frame_header h = {0};
    h.kind = FAB_FRAME_PING;
    h.stream_id = 1;
    h.seq = 2;
    CHECK_EQ(fab_frame_header_write(out, &h, NULL, 0), 0);
    uint8_t want[64];
    size_t n = check_unhex("5346524d010a000000000000000000010000000000000002"
                           "0000000000000000", want);
    CHECK_EQ(n, 32);
    CHECK_MEM(out, want, 32);
    CHECK_EQ(fab_load_be32(out + 32), fab_crc32c(0, out, 32));
}

static void test_encoder_refusals(void)
{
    uint8_t out[FAB_FRAME_HEADER_LEN];
    fab_frame_header h = {0};
    h.kind = 0;
    CHECK_EQ(fab_frame_header_write(out, &h, NULL, 0), FAB_EINVAL);
    h.kind = FAB_FRAME_KIND_MAX + 1;
    CHECK_EQ(fab_frame_header_write(out, &h, NULL, 0), FAB_EINVAL);
    h.kind = FAB_FRAME_PING;
    h.flags = 0x8000;
    CHECK_EQ(fab_frame_header_write(out, &h, NULL, 0), FAB_EINVAL);
    h.flags = 0;
    h.version = 2;
    CHECK_EQ(fab_frame_header_write(out, &h, NULL, 0), FAB_EINVAL);
}

/* A header from a CRC chained over the payload's parts is the header of the
 * contiguous payload, and the frame it starts decodes. */
static void test_header_from_parts_crc(void)
{
    uint8_t payload[3000];
    for (size_t i = 0; i < sizeof(payload); i++)
        payload[i] = (uint8_t)(i * 7 + 3);
    fab_frame_header h = {0};
    h.kind = FAB_FRAME_STREAM_CHUNK;
    h.flags = FAB_FRAME_FLAG_DIAGNOSTIC;
    h.stream_id = 9;
    h.seq = 4;
    uint8_t whole[FAB_FRAME_HEADER_LEN], parts[FAB_FRAME_HEADER_LEN];
    CHECK_EQ(fab_frame_header_write(whole, &h, payload, sizeof(payload)), 0);
    uint32_t crc = fab_crc32c(0, payload, 2);
    crc = fab_crc32c(crc, payload + 2, 1000);
    crc = fab_crc32c(crc, payload + 1002, sizeof(payload) - 1002);
    CHECK_EQ(fab_frame_header_write_crc(parts, &h, sizeof(payload), crc), 0);
    CHECK_MEM(parts, whole, FAB_FRAME_HEADER_LEN);

    uint8_t frame[FAB_FRAME_HEADER_LEN + sizeof(payload)];
    memcpy(frame, parts, FAB_FRAME_HEADER_LEN);
    memcpy(frame + FAB_FRAME_HEADER_LEN, payload, sizeof(payload));
    fab_frame_decoder d;
    fab_frame_decoder_init(&d, 0);
    size_t used = 0;
    fab_frame f;
    CHECK_EQ(fab_frame_decoder_next(&d, frame, sizeof(frame), &used, &f), FAB_FRAME_READY);
    CHECK_EQ(used, sizeof(frame));
    CHECK_EQ(f.h.seq, 4);
    CHECK_EQ(f.h.flags, FAB_FRAME_FLAG_DIAGNOSTIC);
    fab_frame_decoder_destroy(&d);

    /* a wrong CRC makes a frame the decoder refuses */
    CHECK_EQ(fab_frame_header_write_crc(parts, &h, sizeof(payload), crc ^ 1), 0);
    memcpy(frame, parts, FAB_FRAME_HEADER_LEN);
    fab_frame_decoder_init(&d, 0);
    CHECK_EQ(fab_frame_decoder_next(&d, frame, sizeof(frame), &used, &f), FAB_ECORRUPT);
    CHECK_EQ(d.err.violation, FAB_FV_PAYLOAD_CHECKSUM);
    fab_frame_decoder_destroy(&d);

    /* the same refusals as the header writer */
    h.kind = 0;
    CHECK_EQ(fab_frame_header_write_crc(parts, &h, 0, 0), FAB_EINVAL);
    h.kind = FAB_FRAME_PING;
    h.flags = 0x8000;
    CHECK_EQ(fab_frame_header_write_crc(parts, &h, 0, 0), FAB_EINVAL);
}

/* peek checks a header in place, names stream offsets, never allocates. */
static void test_peek(void)
{
    uint8_t payload[100] = {1, 2, 3};
    fab_frame_header h = {0};
    h.kind = FAB_FRAME_STREAM_CHUNK;
    uint8_t frame[2 * (FAB_FRAME_HEADER_LEN + sizeof(payload))];
    size_t one = FAB_FRAME_HEADER_LEN + sizeof(payload);
    for (int i = 0; i < 2; i++) {
        h.seq = (uint64_t)i + 1;
        CHECK_EQ(fab_frame_header_write(frame + i * one, &h, payload, sizeof(payload)), 0);
        memcpy(frame + i * one + FAB_FRAME_HEADER_LEN, payload, sizeof(payload));
    }
    fab_frame_decoder d;
    fab_frame_decoder_init(&d, 0);
    size_t total = 99, used;
    fab_frame f;
    CHECK_EQ(fab_frame_decoder_peek(&d, frame, 3, &total), 0);
    CHECK_EQ(total, 0);
    CHECK_EQ(fab_frame_decoder_peek(&d, frame, FAB_FRAME_HEADER_LEN, &total), 0);
    CHECK_EQ(total, one);
    CHECK_EQ(fab_frame_decoder_next(&d, frame, total, &used, &f), FAB_FRAME_READY);
    CHECK(f.payload_in_input);
    CHECK_EQ(d.pay_cap, 0);
    /* the second frame, its magic corrupted: refused with its stream offset */
    frame[one + 1] ^= 0xff;
    CHECK_EQ(fab_frame_decoder_peek(&d, frame + one, 2, &total), FAB_EFORMAT);
    CHECK_EQ(d.err.violation, FAB_FV_MAGIC);
    CHECK_EQ(d.err.offset, one + 1);
    CHECK_EQ(fab_frame_decoder_peek(&d, frame + one, one, &total), FAB_EFORMAT); /* failed for good */
    fab_frame_decoder_destroy(&d);
    frame[one + 1] ^= 0xff;

    /* a declared length over the limit: refused on the header, nothing allocated */
    fab_frame_decoder_init(&d, 50);
    CHECK_EQ(fab_frame_decoder_peek(&d, frame, FAB_FRAME_HEADER_LEN, &total), FAB_ELIMIT);
    CHECK_EQ(d.err.violation, FAB_FV_TOO_LARGE);
    CHECK_EQ(d.err.offset, 24);
    CHECK_EQ(d.pay_cap, 0);
    fab_frame_decoder_destroy(&d);

    /* a corrupt header checksum */
    fab_frame_decoder_init(&d, 0);
    frame[20] ^= 1;
    CHECK_EQ(fab_frame_decoder_peek(&d, frame, one, &total), FAB_ECORRUPT);
    CHECK_EQ(d.err.violation, FAB_FV_HEADER_CHECKSUM);
    fab_frame_decoder_destroy(&d);
    frame[20] ^= 1;

    /* not at a frame boundary */
    fab_frame_decoder_init(&d, 0);
    CHECK_EQ(fab_frame_decoder_next(&d, frame, 40, &used, &f), FAB_FRAME_CONTINUE);
    CHECK_EQ(fab_frame_decoder_peek(&d, frame + 40, one - 40, &total), FAB_ESTATE);
    fab_frame_decoder_destroy(&d);
}

/* Feeds data one byte at a time into a fresh decoder and returns the error. */
static int refuse(const uint8_t *data, size_t len, uint32_t max, fab_frame_error *err)
{
    fab_frame_decoder d;
    fab_frame_decoder_init(&d, max);
    int rc = 0;
    for (size_t i = 0; i < len && rc >= 0; i++) {
        size_t used;
        fab_frame f;
        rc = fab_frame_decoder_next(&d, data + i, 1, &used, &f);
    }
    if (rc >= 0)
        rc = fab_frame_decoder_finish(&d);
    *err = d.err;
    /* Failed decoders stay failed. */
    size_t used;
    fab_frame f;
    if (rc < 0)
        CHECK_EQ(fab_frame_decoder_next(&d, data, len, &used, &f), rc);
    fab_frame_decoder_destroy(&d);
    /* The same input in one piece gives the same verdict. */
    fab_frame_decoder_init(&d, max);
    int rc2 = 0;
    size_t pos = 0;
    while (rc2 >= 0 && pos < len) {
        rc2 = fab_frame_decoder_next(&d, data + pos, len - pos, &used, &f);
        pos += used;
    }
    if (rc2 >= 0)
        rc2 = fab_frame_decoder_finish(&d);
    CHECK_EQ(rc2, rc);
    CHECK_EQ(d.err.offset, err->offset);
    CHECK_EQ(d.err.violation, err->violation);
    fab_frame_decoder_destroy(&d);
    return rc;
}

static void reseal(uint8_t *frame)
{
    fab_store_be32(frame + 32, fab_crc32c(0, frame, 32));
}

static void test_refusals_with_offsets(void)
{
    fab_buf b;
    fab_buf_init(&b);
    put(&b, FAB_FRAME_PING, 0, 1, 1, "ab", 2);
    size_t first = b.len; /* the damaged frame is the second one */
    put(&b, FAB_FRAME_STREAM_CHUNK, 0, 9, 3, "hello", 5);
    uint8_t *f = b.data + first;
    fab_frame_error e;
    char msg[256];

    f[2] = 'X';
    CHECK_EQ(refuse(b.data, b.len, 0, &e), FAB_EFORMAT);
    CHECK_EQ(e.violation, FAB_FV_MAGIC);
    CHECK_EQ(e.offset, first + 2);
    fab_frame_error_format(&e, msg, sizeof(msg));
    CHECK(strstr(msg, "offset 40") != NULL);
    f[2] = 'R';

    f[4] = 2;
    CHECK_EQ(refuse(b.data, b.len, 0, &e), FAB_EVERSION);
    CHECK_EQ(e.violation, FAB_FV_VERSION);
    CHECK_EQ(e.offset, first + 4);
    CHECK_EQ(e.found, 2);
    f[4] = 1;

    f[10] ^= 1; /* stream id changed, checksum not */
    CHECK_EQ(refuse(b.data, b.len, 0, &e), FAB_ECORRUPT);
    CHECK_EQ(e.violation, FAB_FV_HEADER_CHECKSUM);
    CHECK_EQ(e.offset, first + 32);
    fab_frame_error_format(&e, msg, sizeof(msg));
    CHECK(strncmp(msg, "header checksum mismatch at offset 70:", 38) == 0);
    f[10] ^= 1;

    f[5] = 200;
    reseal(f);
    CHECK_EQ(refuse(b.data, b.len, 0, &e), FAB_EFORMAT);
    CHECK_EQ(e.violation, FAB_FV_KIND);
    CHECK_EQ(e.offset, first + 5);
    f[5] = FAB_FRAME_STREAM_CHUNK;

    f[6] = 0x40;
    reseal(f);
    CHECK_EQ(refuse(b.data, b.len, 0, &e), FAB_EFORMAT);
    CHECK_EQ(e.violation, FAB_FV_FLAGS);
    CHECK_EQ(e.offset, first + 6);
    f[6] = 0;
    reseal(f);

    CHECK_EQ(refuse(b.data, b.len, 4, &e), FAB_ELIMIT);
    CHECK_EQ(e.violation, FAB_FV_TOO_LARGE);
    CHECK_EQ(e.offset, first + 24);
    CHECK_EQ(e.found, 5);
    CHECK_EQ(e.expected, 4);
    CHECK_EQ(refuse(b.data, b.len, 5, &e), 0); /* exactly at the limit */

    f[FAB_FRAME_HEADER_LEN + 1] ^= 0x20;
    CHECK_EQ(refuse(b.data, b.len, 0, &e), FAB_ECORRUPT);
    CHECK_EQ(e.violation, FAB_FV_PAYLOAD_CHECKSUM);
    CHECK_EQ(e.offset, first + 28);
    fab_frame_error_format(&e, msg, sizeof(msg));
    CHECK(strncmp(msg, "payload checksum mismatch at offset 66:", 39) == 0);
    f[FAB_FRAME_HEADER_LEN + 1] ^= 0x20;

    for (size_t cut = first + 1; cut < b.len; cut++) {
        CHECK_EQ(refuse(b.data, cut, 0, &e), FAB_ETRUNCATED);
        CHECK_EQ(e.violation, FAB_FV_TRUNCATED);
        CHECK_EQ(e.offset, cut);
        CHECK_EQ(e.frame_offset, first);
    }
    /* A zero-filled stream never validates. */
    uint8_t zeros[64] = {0};
    CHECK_EQ(refuse(zeros, sizeof(zeros), 0, &e), FAB_EFORMAT);
    CHECK_EQ(e.offset, 0);
    fab_buf_destroy(&b);
}

static void test_length_bomb_allocates_nothing(void)
{
    /* A header declaring 1 GiB, allowed by a 1 GiB limit, then a trickle. */
    uint8_t hdr[FAB_FRAME_HEADER_LEN];
    fab_frame_header h = {0};
    h.kind = FAB_FRAME_STREAM_CHUNK;
    CHECK_EQ(fab_frame_header_write(hdr, &h, NULL, 0), 0);
    fab_store_be32(hdr + 24, 1u << 30);
    reseal(hdr);
    fab_frame_decoder d;
    fab_frame_decoder_init(&d, 1u << 30);
    size_t used;
    fab_frame f;
    CHECK_EQ(fab_frame_decoder_next(&d, hdr, sizeof(hdr), &used, &f), FAB_FRAME_CONTINUE);
    CHECK_EQ(d.pay_cap, 0);
    uint8_t chunk[1000] = {0};
    size_t fed = 0;
    for (int i = 0; i < 300; i++) {
        CHECK_EQ(fab_frame_decoder_next(&d, chunk, sizeof(chunk), &used, &f), FAB_FRAME_CONTINUE);
        fed += used;
        CHECK(d.pay_cap <= fed + FAB_FRAME_GROW_MAX);
    }
    CHECK_EQ(fab_frame_decoder_finish(&d), FAB_ETRUNCATED);
    fab_frame_decoder_destroy(&d);

    /* Above the limit: refused on the header, before any allocation. */
    fab_frame_decoder_init(&d, 1u << 20);
    CHECK_EQ(fab_frame_decoder_next(&d, hdr, sizeof(hdr), &used, &f), FAB_ELIMIT);
    CHECK_EQ(d.pay_cap, 0);
    CHECK(d.pay == NULL);
    fab_frame_decoder_destroy(&d);
}

static void test_payload_points_into_input_when_whole(void)
{
    fab_buf b;
    fab_buf_init(&b);
    put(&b, FAB_FRAME_STREAM_CHUNK, 0, 1, 0, "0123456789", 10);
    fab_frame_decoder d;
    fab_frame_decoder_init(&d, 0);
    size_t used;
    fab_frame f;
    CHECK_EQ(fab_frame_decoder_next(&d, b.data, b.len, &used, &f), FAB_FRAME_READY);
    CHECK_EQ(used, b.len);
    CHECK_EQ(f.payload_in_input, 1);
    CHECK(f.payload == b.data + FAB_FRAME_HEADER_LEN);
    CHECK_EQ(d.offset, b.len);
    fab_frame_decoder_destroy(&d);
    fab_buf_destroy(&b);
}

/* The usual reply's three headers, each field in turn made wrong. */
static void test_is_reply(void)
{
    fab_frame_header s = {1, FAB_FRAME_STREAM_START, 0, 7, 0, 0, 0};
    fab_frame_header c = {1, FAB_FRAME_STREAM_CHUNK, 0, 7, 1, 0, 0};
    fab_frame_header e = {1, FAB_FRAME_STREAM_END, 0, 7, 2, 0, 0};
    CHECK_EQ(fab_frame_is_reply(&s, &c, &e), 1);
    fab_frame_header *hs[3] = {&s, &c, &e};
    for (int i = 0; i < 3; i++) {
        fab_frame_header keep = *hs[i];
        hs[i]->kind = FAB_FRAME_STREAM_CHUNK + (i == 1); /* another kind */
        CHECK_EQ(fab_frame_is_reply(&s, &c, &e), 0);
        *hs[i] = keep;
        hs[i]->seq += 1;
        CHECK_EQ(fab_frame_is_reply(&s, &c, &e), 0);
        *hs[i] = keep;
        hs[i]->stream_id = 8; /* another stream than the other two */
        CHECK_EQ(fab_frame_is_reply(&s, &c, &e), 0);
        *hs[i] = keep;
        CHECK_EQ(fab_frame_is_reply(&s, &c, &e), 1);
    }
    c.flags = FAB_FRAME_FLAG_DIAGNOSTIC; /* a diagnostic is not the reply's value */
    CHECK_EQ(fab_frame_is_reply(&s, &c, &e), 0);
    c.flags = 0;
    s.stream_id = c.stream_id = e.stream_id = 0; /* stream 0 is the connection's */
    CHECK_EQ(fab_frame_is_reply(&s, &c, &e), 0);
    s.stream_id = c.stream_id = e.stream_id = UINT64_MAX;
    CHECK_EQ(fab_frame_is_reply(&s, &c, &e), 1);
}

static void test_names(void)
{
    CHECK(strcmp(fab_frame_kind_name(FAB_FRAME_GOSSIP), "GOSSIP") == 0);
    CHECK(fab_frame_kind_name(0) == NULL);
    CHECK(strcmp(fab_frame_violation_name(FAB_FV_TOO_LARGE), "payload-too-large") == 0);
    CHECK(strcmp(fab_frame_violation_name(99), "unknown") == 0);
}

int main(void)
{
    static const check_case cases[] = {
        {"round_trip_any_split", test_round_trip_any_split},
        {"golden_header", test_golden_header},
        {"encoder_refusals", test_encoder_refusals},
        {"header_from_parts_crc", test_header_from_parts_crc},
        {"peek", test_peek},
        {"refusals_with_offsets", test_refusals_with_offsets},
        {"length_bomb_allocates_nothing", test_length_bomb_allocates_nothing},
        {"payload_points_into_input_when_whole", test_payload_points_into_input_when_whole},
        {"names", test_names},
        {"is_reply", test_is_reply},
        {NULL, NULL},
    };
    return check_run("frame", cases);
}
