/* CRC-32C: known answers, hardware against the portable fallback. */
#include "check.h"
#include "fabric/crc32c.h"

static void test_known_answers(void)
{
    /* RFC 3720 B.4 and the common check value. */
    CHECK_EQ(fab_crc32c(0, "123456789", 9), 0xe3069283u);
    CHECK_EQ(fab_crc32c_sw(0, "123456789", 9), 0xe3069283u);
    uint8_t zeros[32] = {0}, ones[32];
    memset(ones, 0xff, sizeof(ones));
    CHECK_EQ(fab_crc32c(0, zeros, 32), 0x8a9136aau);
    CHECK_EQ(fab_crc32c(0, ones, 32), 0x62a8ab43u);
    CHECK_EQ(fab_crc32c(0, NULL, 0), 0);
}

static void test_hw_matches_sw_and_chains(void)
{
    uint8_t buf[4099];
    for (size_t i = 0; i < sizeof(buf); i++)
        buf[i] = (uint8_t)(i * 131 + (i >> 5));
    for (size_t start = 0; start < 9; start++)
        for (size_t len = 0; len + start <= sizeof(buf); len += 97)
            CHECK_EQ(fab_crc32c(0, buf + start, len), fab_crc32c_sw(0, buf + start, len));
    uint32_t whole = fab_crc32c(0, buf, sizeof(buf));
    for (size_t cut = 0; cut <= sizeof(buf); cut += 513)
        CHECK_EQ(fab_crc32c(fab_crc32c(0, buf, cut), buf + cut, sizeof(buf) - cut), whole);
}

/* Lengths around the three-lane block sizes (768 bytes and 12 KiB) and
 * across many blocks, at every alignment of the start. */
static void test_hw_lanes_match_sw(void)
{
    static uint8_t big[3 * 12288 * 3 + 4096];
    uint32_t x = 12345;
    for (size_t i = 0; i < sizeof(big); i++) {
        x = x * 1103515245u + 12345u;
        big[i] = (uint8_t)(x >> 16);
    }
    static const size_t lens[] = {767, 768, 769, 1535, 1536, 2303, 12287, 12288, 12289,
                                  12288 + 768, 12288 + 767, 24576 + 1000, 36864,
                                  sizeof(big) - 8};
    for (size_t start = 0; start < 8; start++)
        for (size_t i = 0; i < sizeof(lens) / sizeof(lens[0]); i++)
            CHECK_EQ(fab_crc32c(7, big + start, lens[i]), fab_crc32c_sw(7, big + start, lens[i]));
    for (size_t len = 0; len <= sizeof(big); len += 4093)
        CHECK_EQ(fab_crc32c(0, big, len), fab_crc32c_sw(0, big, len));
    uint8_t zeros[12288] = {0};
    uint32_t z = fab_crc32c(0, zeros, sizeof(zeros));
    CHECK_EQ(z, fab_crc32c_sw(0, zeros, sizeof(zeros)));
}

static void test_shift(void)
{
    static uint8_t zeros[70000], data[70000];
    for (size_t i = 0; i < sizeof(data); i++)
        data[i] = (uint8_t)(i * 29 + 5);
    static const size_t lens[] = {0, 1, 2, 3, 7, 8, 255, 256, 4096, 12289, 69999};
    static const uint32_t crcs[] = {0, 1, 0x80000000u, 0xe3069283u, 0xdeadbeefu};
    for (size_t i = 0; i < sizeof(lens) / sizeof(lens[0]); i++)
        for (size_t j = 0; j < sizeof(crcs) / sizeof(crcs[0]); j++) {
            uint32_t c = crcs[j];
            size_t n = lens[i];
            CHECK_EQ(fab_crc32c_shift(c, n),
                     fab_crc32c(c, zeros, n) ^ fab_crc32c(0, zeros, n));
            CHECK_EQ(fab_crc32c(c, data, n), fab_crc32c(0, data, n) ^ fab_crc32c_shift(c, n));
        }
    /* a tail's CRC from the whole's and the head's */
    uint32_t whole = fab_crc32c(0, data, sizeof(data)), head = fab_crc32c(0, data, 1000);
    CHECK_EQ(whole ^ fab_crc32c_shift(head, sizeof(data) - 1000),
             fab_crc32c(0, data + 1000, sizeof(data) - 1000));
}

int main(void)
{
    static const check_case cases[] = {
        {"known_answers", test_known_answers},
        {"hw_matches_sw_and_chains", test_hw_matches_sw_and_chains},
        {"hw_lanes_match_sw", test_hw_lanes_match_sw},
        {"shift", test_shift},
        {NULL, NULL},
    };
    printf("crc32c: hardware %s\n", fab_crc32c_hw_available() ? "yes" : "no");
    return check_run("crc32c", cases);
}
