#include "fabric/crc32c.h"

#include <pthread.h>
#include <string.h>

#define POLY 0x82f63b78u /* reflected Castagnoli polynomial */

static uint32_t table[8][256];
static pthread_once_t table_once = PTHREAD_ONCE_INIT;

static void build_table(void)
{
    for (uint32_t n = 0; n < 256; n++) {
        uint32_t c = n;
        for (int k = 0; k < 8; k++)
            c = (c & 1) ? (c >> 1) ^ POLY : c >> 1;
        table[0][n] = c;
    }
    for (uint32_t n = 0; n < 256; n++) {
        uint32_t c = table[0][n];
        for (int k = 1; k < 8; k++) {
            c = table[0][c & 0xff] ^ (c >> 8);
            table[k][n] = c;
        }
    }
}

uint32_t fab_crc32c_sw(uint32_t crc, const void *data, size_t len)
{
    const uint8_t *p = data;
    pthread_once(&table_once, build_table);
    crc = ~crc;
    while (len && ((uintptr_t)p & 7)) {
        crc = table[0][(crc ^ *p++) & 0xff] ^ (crc >> 8);
        len--;
    }
    while (len >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        /* Slicing-by-8 on a little-endian load. */
        uint32_t lo = (uint32_t)w ^ crc, hi = (uint32_t)(w >> 32);
        crc = table[7][lo & 0xff] ^ table[6][(lo >> 8) & 0xff] ^
              table[5][(lo >> 16) & 0xff] ^ table[4][lo >> 24] ^
              table[3][hi & 0xff] ^ table[2][(hi >> 8) & 0xff] ^
              table[1][(hi >> 16) & 0xff] ^ table[0][hi >> 24];
        p += 8;
        len -= 8;
    }
    while (len--)
        crc = table[0][(crc ^ *p++) & 0xff] ^ (crc >> 8);
    return ~crc;
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define FAB_HAVE_HW_CRC 1
#include <nmmintrin.h>

/*
 * Three lanes. The crc32 instruction has a latency of three cycles and a
 * throughput of one per cycle: one lane waits on itself, three independent
 * lanes over three adjacent parts of a block keep it busy (about three times
 * the speed on a large buffer). The lanes' states are then joined: the state
 * after a || b is shift_n(state after a) ^ (state of b run from 0), where
 * shift_n runs n zero bytes through the state (linear over GF(2), so a
 * 4 x 256 table per n).
 */
#define LANE_BIG 4096  /* bytes per lane in a big block (12 KiB per block) */
#define LANE_SMALL 256 /* and in a small one (768 bytes) */

static uint32_t shift_big[4][256], shift_small[4][256];
static pthread_once_t shift_once = PTHREAD_ONCE_INIT;

/* mat applied to vec: mat[i] is the image of bit i. */
static uint32_t gf2_times(const uint32_t mat[32], uint32_t vec)
{
    uint32_t sum = 0;
    for (int i = 0; vec; i++, vec >>= 1)
        if (vec & 1)
            sum ^= mat[i];
    return sum;
}

/* The operator that runs `bytes` zero bytes (a power of two) through a state. */
static void zeros_operator(uint32_t op[32], size_t bytes)
{
    uint32_t sq[32];
    op[0] = POLY; /* one zero bit: shift right, reduce when bit 0 was set */
    for (int i = 1; i < 32; i++)
        op[i] = 1u << (i - 1);
    for (size_t bits = 1; bits < bytes * 8; bits *= 2) {
        for (int i = 0; i < 32; i++)
            sq[i] = gf2_times(op, op[i]);
        memcpy(op, sq, sizeof(sq));
    }
}

static void shift_table(uint32_t tab[4][256], size_t bytes)
{
    uint32_t op[32];
    zeros_operator(op, bytes);
    for (int k = 0; k < 4; k++)
        for (uint32_t b = 0; b < 256; b++)
            tab[k][b] = gf2_times(op, b << (8 * k));
}

static void build_shift_tables(void)
{
    shift_table(shift_big, LANE_BIG);
    shift_table(shift_small, LANE_SMALL);
}

static inline uint32_t shift(const uint32_t tab[4][256], uint32_t c)
{
    return tab[0][c & 0xff] ^ tab[1][(c >> 8) & 0xff] ^ tab[2][(c >> 16) & 0xff] ^
           tab[3][c >> 24];
}

__attribute__((target("sse4.2")))
static uint64_t lanes3(uint64_t c, const uint8_t *p, size_t lane, const uint32_t tab[4][256])
{
    uint64_t b = 0, d = 0;
    const uint8_t *q = p + lane, *r = p + 2 * lane;
    for (size_t i = 0; i < lane; i += 8) {
        uint64_t w0, w1, w2;
        memcpy(&w0, p + i, 8);
        memcpy(&w1, q + i, 8);
        memcpy(&w2, r + i, 8);
        c = _mm_crc32_u64(c, w0);
        b = _mm_crc32_u64(b, w1);
        d = _mm_crc32_u64(d, w2);
    }
    return shift(tab, shift(tab, (uint32_t)c) ^ (uint32_t)b) ^ (uint32_t)d;
}

__attribute__((target("sse4.2")))
static uint32_t crc32c_hw(uint32_t crc, const void *data, size_t len)
{
    const uint8_t *p = data;
    uint64_t c = ~crc;
    while (len && ((uintptr_t)p & 7)) {
        c = _mm_crc32_u8((uint32_t)c, *p++);
        len--;
    }
    if (len >= 3 * LANE_SMALL) {
        pthread_once(&shift_once, build_shift_tables);
        for (; len >= 3 * LANE_BIG; p += 3 * LANE_BIG, len -= 3 * LANE_BIG)
            c = lanes3(c, p, LANE_BIG, shift_big);
        for (; len >= 3 * LANE_SMALL; p += 3 * LANE_SMALL, len -= 3 * LANE_SMALL)
            c = lanes3(c, p, LANE_SMALL, shift_small);
    }
    while (len >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        c = _mm_crc32_u64(c, w);
        p += 8;
        len -= 8;
    }
    while (len--)
        c = _mm_crc32_u8((uint32_t)c, *p++);
    return ~(uint32_t)c;
}
#endif

/* a * b modulo the polynomial, both reflected (bit 31 is x^0). */
static uint32_t multmodp(uint32_t a, uint32_t b)
{
    uint32_t m = 1u << 31, p = 0;
    for (;;) {
        if (a & m) {
            p ^= b;
            if ((a & (m - 1)) == 0)
                break;
        }
        m >>= 1;
        b = (b & 1) ? (b >> 1) ^ POLY : b >> 1;
    }
    return p;
}

uint32_t fab_crc32c_shift(uint32_t crc, uint64_t len)
{
    /* crc * x^(8 len): x^(2^k) for each bit k of 8 len, squared as it goes. */
    uint32_t x2k = 1u << 30; /* x^1 */
    uint32_t p = 1u << 31;   /* x^0 */
    uint64_t n = len;
    for (int k = 0; k < 3; k++)
        x2k = multmodp(x2k, x2k); /* x^8: one byte */
    while (n) {
        if (n & 1)
            p = multmodp(x2k, p);
        n >>= 1;
        if (n)
            x2k = multmodp(x2k, x2k);
    }
    return crc ? multmodp(p, crc) : 0;
}

static int hw_state = -1; /* -1 unknown, 0 no, 1 yes */

int fab_crc32c_hw_available(void)
{
#ifdef FAB_HAVE_HW_CRC
    int state = __atomic_load_n(&hw_state, __ATOMIC_RELAXED);
    if (state < 0) {
        /* Two threads may both probe; they store the same answer. */
        __builtin_cpu_init();
        state = __builtin_cpu_supports("sse4.2") ? 1 : 0;
        __atomic_store_n(&hw_state, state, __ATOMIC_RELAXED);
    }
    return state;
#else
    return 0;
#endif
}

uint32_t fab_crc32c(uint32_t crc, const void *data, size_t len)
{
#ifdef FAB_HAVE_HW_CRC
    if (fab_crc32c_hw_available())
        return crc32c_hw(crc, data, len);
#endif
    return fab_crc32c_sw(crc, data, len);
}
