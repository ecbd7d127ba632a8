/* fab_ledger_fs_is_network: the statfs f_type classifier behind the
 * refusal of several writers on network file systems (spec: Network file
 * systems). No network file system is mounted: the seam is the type. */
#include "check.h"
#include "fabric/common.h"
#include "fabric/ledger.h"

static void test_network_types(void)
{
    static const unsigned long network[] = {
        0x6969UL,     /* NFS */
        0x517BUL,     /* SMB */
        0xFF534D42UL, /* CIFS */
        0xFE534D42UL, /* SMB2 */
        0x564cUL,     /* NCP */
        0x73757245UL, /* Coda */
        0x47504653UL, /* GPFS */
        0x0BD00BD0UL, /* Lustre */
        0x01021997UL, /* 9p */
        0x65735546UL, /* FUSE: sshfs and the others */
        0x5346414FUL, /* AFS */
        0x6B414653UL, /* AFS dynamic root */
        0x00C36400UL, /* CephFS */
    };
    for (size_t i = 0; i < sizeof(network) / sizeof(network[0]); i++)
        CHECK_EQ(fab_ledger_fs_is_network(network[i]), 1);
}

static void test_local_types(void)
{
    static const unsigned long local[] = {
        0xEF53UL,     /* ext2/3/4 */
        0x58465342UL, /* XFS */
        0x9123683EUL, /* Btrfs */
        0x01021994UL, /* tmpfs: one digit from 9p */
        0x794C7630UL, /* overlayfs (containers) */
        0x2FC12FC1UL, /* ZFS */
        0xF2F52010UL, /* F2FS */
        0x4d44UL,     /* FAT */
        0x5346544EUL, /* NTFS (ntfs3) */
        0UL,
    };
    for (size_t i = 0; i < sizeof(local) / sizeof(local[0]); i++)
        CHECK_EQ(fab_ledger_fs_is_network(local[i]), 0);
}

int main(void)
{
    static const check_case cases[] = {
        {"network_types", test_network_types},
        {"local_types", test_local_types},
        {NULL, NULL},
    };
    return check_run("ledger_fs", cases);
}
