/*
 * CRC-32C (Castagnoli), as used by iSCSI, ext4 and many storage formats.
 *
 * Uses the SSE4.2 crc32 instruction when the CPU has it (checked once at run
 * time) and a portable table-driven implementation otherwise.
 */
#ifndef FABRIC_CRC32C_H
#define FABRIC_CRC32C_H

#include <stddef.h>
#include <stdint.h>

/*
 * Extends crc (0 to start) over len bytes of data and returns the new value.
 * crc32c(crc32c(0, a), b) == crc32c(0, a || b). data may be NULL when len is 0.
 */
uint32_t fab_crc32c(uint32_t crc, const void *data, size_t len);

/*
 * What len zero bytes do to a CRC: fab_crc32c(c, data, len) ==
 * fab_crc32c(0, data, len) ^ fab_crc32c_shift(c, len) for any data. So the
 * CRC of a buffer's tail follows from the CRC of the whole and of its head
 * without reading the tail (O(log len) steps, no table).
 */
uint32_t fab_crc32c_shift(uint32_t crc, uint64_t len);

/* The portable implementation, always available; for tests and benchmarks. */
uint32_t fab_crc32c_sw(uint32_t crc, const void *data, size_t len);

/* 1 when fab_crc32c uses the hardware instruction, else 0. */
int fab_crc32c_hw_available(void);

#endif
