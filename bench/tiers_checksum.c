/* bench/tiers_checksum.c - GB/s of the candidate state checksums over a state's payload.
 *
 * Owns: nothing; a stand-alone measurement. Runs: one thread. Must not: be read as more than
 * a ranking (each figure is the best of 5 timings on whatever else the machine runs).
 *
 *   cc -std=gnu11 -O2 -Wall -Wextra -Werror -o /tmp/tiers_checksum bench/tiers_checksum.c \
 *       -lxxhash && /tmp/tiers_checksum
 *
 * Sizes: the payload of the default model's state (389,728 bytes) and of the mamba-130m
 * shape's (2,802,272 bytes). Candidates: FNV-1a-64 (state version 1, byte-serial), CRC32C
 * with the SSE4.2 instruction on one stream, the same on three interleaved streams (an upper
 * bound: the three CRCs are XORed, not combined, so that figure omits the combining step a
 * real 3-way CRC32C needs), and XXH3-64 from libxxhash, plain (the library's baseline SSE2
 * build) and through libxxhash's x86 dispatch (AVX2 or AVX-512 when the CPU has them), which
 * is what engine/state.c calls on x86-64. x86-64 only (the CRC32C instruction). */
#include <nmmintrin.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <xxh_x86dispatch.h>
#include <xxhash.h>

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static uint64_t fnv1a(const uint8_t *b, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++) {
        h ^= b[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

__attribute__((target("sse4.2"))) static uint64_t crc32c_1(const uint8_t *b, size_t n)
{
    uint64_t c = 0xffffffffu;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t v;
        memcpy(&v, b + i, 8);
        c = _mm_crc32_u64(c, v);
    }
    for (; i < n; i++)
        c = _mm_crc32_u8((uint32_t)c, b[i]);
    return ~c & 0xffffffffu;
}

__attribute__((target("sse4.2"))) static uint64_t crc32c_3(const uint8_t *b, size_t n)
{
    uint64_t c0 = 0xffffffffu, c1 = 0, c2 = 0;
    size_t L = n / 24 * 8;
    for (size_t i = 0; i < L; i += 8) {
        uint64_t v0, v1, v2;
        memcpy(&v0, b + i, 8);
        memcpy(&v1, b + L + i, 8);
        memcpy(&v2, b + 2 * L + i, 8);
        c0 = _mm_crc32_u64(c0, v0);
        c1 = _mm_crc32_u64(c1, v1);
        c2 = _mm_crc32_u64(c2, v2);
    }
    return c0 ^ c1 ^ c2;
}

static uint64_t xxh3_plain(const uint8_t *b, size_t n)
{
    return XXH3_64bits(b, n);
}

static uint64_t xxh3_dispatch(const uint8_t *b, size_t n)
{
    return XXH3_64bits_dispatch(b, n);
}

int main(void)
{
    static const size_t sizes[2] = {389776 - 48, 2802320 - 48};
    static const struct {
        const char *name;
        uint64_t (*f)(const uint8_t *, size_t);
        int reps;
    } fs[] = {
        {"fnv1a-64 (state version 1)", fnv1a, 10},
        {"crc32c sse4.2, 1 stream", crc32c_1, 100},
        {"crc32c sse4.2, 3 streams (bound)", crc32c_3, 200},
        {"xxh3-64 libxxhash plain", xxh3_plain, 200},
        {"xxh3-64 libxxhash dispatch", xxh3_dispatch, 400},
    };
    printf("%10s  %-34s %8s %10s\n", "bytes", "checksum", "GB/s", "us/state");
    for (int k = 0; k < 2; k++) {
        size_t n = sizes[k];
        uint8_t *b = malloc(n);
        if (b == NULL)
            return 1;
        for (size_t i = 0; i < n; i++)
            b[i] = (uint8_t)((i * 2654435761u) >> 13);
        for (size_t f = 0; f < sizeof(fs) / sizeof(fs[0]); f++) {
            volatile uint64_t sink = 0;
            double best = 1e30;
            for (int t = 0; t < 5; t++) {
                double t0 = now();
                for (int r = 0; r < fs[f].reps; r++) {
                    b[r] ^= 1; /* a different input each time */
                    sink += fs[f].f(b, n);
                }
                double dt = (now() - t0) / fs[f].reps;
                if (dt < best)
                    best = dt;
            }
            (void)sink;
            printf("%10zu  %-34s %8.2f %10.1f\n", n, fs[f].name, (double)n / best / 1e9,
                   best * 1e6);
        }
        free(b);
    }
    return 0;
}
