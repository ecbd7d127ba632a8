/* The staged output window: every split of the input through a flushing
 * window gives the bytes (or digest) of one write, growing windows keep
 * their bytes across moves, and a failing target's code comes back. */
#include "check.h"
#include "fabric/hash.h"
#include "fabric/stage.h"

static uint8_t data[10000];

static void fill(void)
{
    for (size_t i = 0; i < sizeof(data); i++)
        data[i] = (uint8_t)(i * 31 + 7);
}

/* Feeds data through s in writes of step bytes. */
static void feed(fab_stage *s, size_t step)
{
    for (size_t off = 0; off < sizeof(data); off += step) {
        size_t n = sizeof(data) - off < step ? sizeof(data) - off : step;
        CHECK_EQ(fab_stage_write(s, data + off, n), FAB_OK);
    }
}

static const size_t steps[] = {1, 3, 64, 100, 2047, 2048, 2049, 5000, 10000};
#define NSTEPS (sizeof(steps) / sizeof(steps[0]))

static void test_hasher_splits(void)
{
    fill();
    fab_sha256 *h = NULL;
    CHECK_EQ(fab_sha256_new(&h), FAB_OK);
    uint8_t want[32], got[32];
    CHECK_EQ(fab_sha256_digest(data, sizeof(data), want), FAB_OK);
    /* Windows smaller than, equal to and larger than the direct threshold. */
    const size_t caps[] = {16, 100, FAB_STAGE_DIRECT, 8192};
    for (size_t c = 0; c < sizeof(caps) / sizeof(caps[0]); c++) {
        for (size_t k = 0; k < NSTEPS; k++) {
            uint8_t mem[8192];
            fab_stage s;
            fab_stage_init(&s, mem, caps[c], h, NULL, NULL);
            CHECK(!s.grow);
            feed(&s, steps[k]);
            CHECK_EQ(fab_stage_flush(&s), FAB_OK);
            CHECK_EQ(s.len, 0);
            CHECK_EQ(fab_sha256_final(h, got), FAB_OK);
            CHECK_MEM(got, want, 32);
            fab_stage_destroy(&s);
        }
    }
    fab_sha256_free(h);
}

static void test_sink_splits_and_puts(void)
{
    fill();
    for (size_t k = 0; k < NSTEPS; k++) {
        fab_buf out;
        fab_buf_init(&out);
        uint8_t mem[256];
        fab_stage s;
        fab_stage_init(&s, mem, sizeof(mem), NULL, fab_buf_sink, &out);
        feed(&s, steps[k]);
        /* Items put in place after room is made, as the walker does. */
        for (int i = 0; i < 100; i++) {
            CHECK_EQ(fab_stage_room(&s, FAB_PUT_MAX), FAB_OK);
            s.len += fab_put_int64(s.data + s.len, (int64_t)i * 1000003);
        }
        CHECK_EQ(fab_stage_flush(&s), FAB_OK);
        fab_buf want;
        fab_buf_init(&want);
        fab_enc e;
        fab_enc_init(&e, fab_buf_sink, &want);
        CHECK_EQ(fab_buf_append(&want, data, sizeof(data)), FAB_OK);
        for (int i = 0; i < 100; i++)
            CHECK_EQ(fab_enc_int64(&e, (int64_t)i * 1000003), FAB_OK);
        CHECK_EQ(out.len, want.len);
        if (out.len == want.len)
            CHECK_MEM(out.data, want.data, out.len);
        /* The window moved to the heap only for a write larger than it
         * but too short to go to the target directly. */
        int moved = 0;
        for (size_t off = 0; off < sizeof(data); off += steps[k]) {
            size_t n = sizeof(data) - off < steps[k] ? sizeof(data) - off : steps[k];
            moved |= n > sizeof(mem) && n < FAB_STAGE_DIRECT;
        }
        CHECK_EQ(s.heap, moved);
        fab_stage_destroy(&s);
        fab_buf_destroy(&out);
        fab_buf_destroy(&want);
    }
}

static void test_grow_keeps_bytes(void)
{
    fill();
    for (size_t k = 0; k < NSTEPS; k++) {
        uint8_t mem[64];
        fab_stage s;
        fab_stage_init(&s, mem, sizeof(mem), NULL, NULL, NULL);
        CHECK(s.grow);
        feed(&s, steps[k]);
        CHECK_EQ(fab_stage_flush(&s), FAB_OK); /* no target: bytes stay */
        CHECK_EQ(s.len, sizeof(data));
        CHECK(s.heap);
        CHECK(s.data != mem);
        CHECK_MEM(s.data, data, sizeof(data));
        fab_stage_destroy(&s); /* ASan reports a leak if the heap copy is kept */
        CHECK(s.data == NULL && s.len == 0 && s.cap == 0);
    }
    /* No memory of the caller's at all. */
    fab_stage s;
    fab_stage_init(&s, NULL, 0, NULL, NULL, NULL);
    CHECK_EQ(fab_stage_write(&s, "abc", 3), FAB_OK);
    CHECK_EQ(fab_stage_write(&s, NULL, 0), FAB_OK);
    CHECK_EQ(s.len, 3);
    CHECK_MEM(s.data, "abc", 3);
    fab_stage_destroy(&s);
}

/* A write larger than a flushing window but below the direct threshold
 * moves the window to the heap and keeps the order of bytes. */
static void test_flushing_window_moves_for_a_large_write(void)
{
    fill();
    fab_buf out;
    fab_buf_init(&out);
    uint8_t mem[32];
    fab_stage s;
    fab_stage_init(&s, mem, sizeof(mem), NULL, fab_buf_sink, &out);
    CHECK_EQ(fab_stage_write(&s, data, 10), FAB_OK);
    CHECK_EQ(fab_stage_room(&s, 1000), FAB_OK);
    CHECK(s.heap);
    CHECK(s.cap - s.len >= 1000);
    memcpy(s.data + s.len, data + 10, 1000);
    s.len += 1000;
    CHECK_EQ(fab_stage_flush(&s), FAB_OK);
    CHECK_EQ(out.len, 1010);
    CHECK_MEM(out.data, data, 1010);
    fab_stage_destroy(&s);
    fab_buf_destroy(&out);
}

static void test_oversized_room_is_refused(void)
{
    uint8_t mem[16];
    fab_stage s;
    fab_stage_init(&s, mem, sizeof(mem), NULL, NULL, NULL);
    CHECK_EQ(fab_stage_write(&s, "xy", 2), FAB_OK);
    CHECK_EQ(fab_stage_room(&s, SIZE_MAX), FAB_EOVERFLOW);
    CHECK_EQ(fab_stage_room(&s, SIZE_MAX / 2), FAB_EOVERFLOW);
    /* The window is unchanged and still usable. */
    CHECK_EQ(s.len, 2);
    CHECK(s.data == mem);
    CHECK_EQ(fab_stage_write(&s, "z", 1), FAB_OK);
    CHECK_MEM(s.data, "xyz", 3);
    fab_stage_destroy(&s);
}

/* A sink that fails its fail_at-th call (counting from 1) with FAB_EIO. */
typedef struct {
    int calls;
    int fail_at;
    fab_buf got;
} failing_sink;

static int failing_write(void *ctx, const void *p, size_t len)
{
    failing_sink *f = ctx;
    if (++f->calls == f->fail_at)
        return FAB_EIO;
    return fab_buf_append(&f->got, p, len);
}

/* Fails the 1st, 2nd, ... call of the target until a run passes: each
 * failure comes back from the call that hit it, and nothing is written
 * twice or out of order before it. */
static void test_sink_failure_loop(void)
{
    fill();
    int passed = 0;
    for (int fail_at = 1; fail_at < 100 && !passed; fail_at++) {
        failing_sink f = {0, fail_at, {0}};
        fab_buf_init(&f.got);
        uint8_t mem[512];
        fab_stage s;
        fab_stage_init(&s, mem, sizeof(mem), NULL, failing_write, &f);
        int rc = FAB_OK;
        for (size_t off = 0, i = 0; off < sizeof(data) && rc == FAB_OK; i++) {
            size_t n = steps[i % NSTEPS];
            if (n > sizeof(data) - off)
                n = sizeof(data) - off;
            rc = fab_stage_write(&s, data + off, n);
            off += n;
        }
        if (rc == FAB_OK)
            rc = fab_stage_flush(&s);
        if (rc == FAB_OK) {
            passed = 1;
            CHECK_EQ(f.got.len, sizeof(data));
            CHECK_MEM(f.got.data, data, sizeof(data));
        } else {
            CHECK_EQ(rc, FAB_EIO);
            CHECK_EQ(f.calls, fail_at);
            CHECK(f.got.len < sizeof(data));
            if (f.got.len)
                CHECK_MEM(f.got.data, data, f.got.len);
        }
        fab_stage_destroy(&s);
        fab_buf_destroy(&f.got);
    }
    CHECK(passed);
}

int main(void)
{
    static const check_case cases[] = {
        {"hasher_splits", test_hasher_splits},
        {"sink_splits_and_puts", test_sink_splits_and_puts},
        {"grow_keeps_bytes", test_grow_keeps_bytes},
        {"flushing_window_moves_for_a_large_write", test_flushing_window_moves_for_a_large_write},
        {"oversized_room_is_refused", test_oversized_room_is_refused},
        {"sink_failure_loop", test_sink_failure_loop},
        {NULL, NULL},
    };
    return check_run("stage", cases);
}
