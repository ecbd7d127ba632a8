/* fab_ledger_ref_crc: a read item's CRC-32C from its record's checksum. */
#include <stdlib.h>
#include <unistd.h>
#include "check.h"
#include "fabric/common.h"
#include "fabric/crc32c.h"
#include "fabric/ledger.h"

static char tmpdir[256];

static fab_ledger *open_at(const char *path, int mode)
{
    fab_ledger_options opt = {0};
    opt.mode = mode;
    opt.durability = FAB_DUR_OS;
    opt.created_ns = 1700000000000000000ull;
    fab_ledger *l = NULL;
    fab_ledger_error err;
    CHECK_EQ(fab_ledger_open(&l, path, &opt, &err), 0);
    return l;
}

static void test_items_and_replies(void)
{
    char path[512];
    snprintf(path, sizeof(path), "%s/crc.fabl", tmpdir);
    static uint8_t item[3][40000];
    for (int i = 0; i < 3; i++)
        for (size_t j = 0; j < sizeof(item[i]); j++)
            item[i][j] = (uint8_t)(j * (i + 3) + i);
    uint8_t skey[32] = {1}, rkey[32] = {2};
    fab_ledger *l = open_at(path, FAB_LEDGER_WRITE);
    uint64_t begin;
    CHECK_EQ(fab_ledger_stream_begin(l, skey, &begin, NULL), 1);
    for (int i = 0; i < 3; i++)
        CHECK_EQ(fab_ledger_stream_append(l, skey, begin, item[i], 1000 + 13000 * (size_t)i,
                                          NULL), 0);
    CHECK_EQ(fab_ledger_stream_end(l, skey, begin, 3, NULL), 1);
    CHECK_EQ(fab_ledger_record(l, rkey, item[1], 777, NULL), 1);

    /* in the writer that wrote them, then in a reader that validated them at open */
    for (int round = 0; round < 2; round++) {
        fab_ledger_cursor cur;
        fab_ledger_ref ref;
        uint32_t crc;
        CHECK_EQ(fab_ledger_stream_open(l, skey, &cur), 0);
        for (int i = 0; i < 3; i++) {
            CHECK_EQ(fab_ledger_stream_next(l, &cur, 1, &ref), 1);
            CHECK_EQ(fab_ledger_ref_crc(&ref, &crc), 0);
            CHECK_EQ(crc, fab_crc32c(0, item[i], 1000 + 13000 * (size_t)i));
            /* a ref that does not end where its record ends */
            ref.len--;
            CHECK_EQ(fab_ledger_ref_crc(&ref, &crc), FAB_EINVAL);
            fab_lmap_release(ref.map);
        }
        CHECK_EQ(fab_ledger_lookup(l, rkey, 1, &ref, NULL), 1);
        CHECK_EQ(fab_ledger_ref_crc(&ref, &crc), 0);
        CHECK_EQ(crc, fab_crc32c(0, item[1], 777));
        fab_lmap_release(ref.map);
        CHECK_EQ(fab_ledger_lookup(l, rkey, 0, &ref, NULL), 1); /* no mapping held */
        CHECK_EQ(fab_ledger_ref_crc(&ref, &crc), FAB_EINVAL);
        fab_ledger_close(l);
        if (round == 0)
            l = open_at(path, FAB_LEDGER_READ);
    }
}

int main(void)
{
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/fabric-test-ledger-crc-XXXXXX");
    if (mkdtemp(tmpdir) == NULL)
        return 2;
    static const check_case cases[] = {
        {"items_and_replies", test_items_and_replies},
        {NULL, NULL},
    };
    int rc = check_run("ledger_crc", cases);
    char cmd[600];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", tmpdir);
    if (system(cmd) != 0)
        rc = 1;
    return rc;
}
