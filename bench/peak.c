/* bench/peak.c - the core's arithmetic peak in registers, against ym_matmul's rates in the same
 * run: build-test/bench/peak [REPS] [N K].
 *
 * Owns: seven loops written in assembly, the first five with no memory operand in their body:
 *   clock   a dependent chain of 64-bit adds, one cycle each: the core's clock as the thread
 *           sees it (perf's cycle counter is not available in this VM, and the TSC ticks at a
 *           fixed rate whatever the core's clock), so the others can be given per cycle;
 *   fma     vfmadd231ps zmm: 16 f32 multiply-adds (32 FLOP) per instruction;
 *   dpbf16  vdpbf16ps zmm (AVX512-BF16): 32 bf16 x bf16 products summed in pairs into 16 f32
 *           lanes, counted as 32 multiply-adds (64 FLOP);
 *   vnni    vpdpbusd zmm (AVX512-VNNI): 64 u8 x s8 products summed in fours into 16 int32
 *           lanes, counted as 64 multiply-adds (128 integer ops).
 *   vnni_copy  vpdpbusd zmm with a register copy of its accumulator before and after it
 *           (vmovdqa32 acc -> t; vpdpbusd into t; vmovdqa64 t -> acc), the pattern GCC 12
 *           compiled _mm512_dpbusd_epi32 into in the engine's int8 x int8 row blocks (they
 *           now use inline asm that accumulates in place), so their rate can be compared with
 *           that instruction mix's own ceiling.
 *   vnni_mix   the int8 x int8 row block's inner loop as engine/weight.c writes it, with its
 *           operands in L1: per 64 columns, 4 weight rows loaded and sign-flipped (vpxord from
 *           memory), 4 prefetches, 4 input rows loaded, 16 vpdpbusd into a 4 x 4 block of sums
 *           (8 rows of 1 KiB, cycled): that mix's own ceiling, without the compiler's
 *           extra copies, spills and reloads and without the reduction after the loop;
 *   vnni_compiled  that loop as GCC 12 compiled it from the intrinsic (v_4_4 in objdump -d
 *           of a release build before the inline asm), operands in L1 as vnni_mix's: that
 *           compiled loop's own ceiling.
 * Each vector loop updates 16 independent accumulators (zmm0-15; vnni_compiled: the registers
 * the compiler chose) from fixed sources (no dependence between iterations but through the
 * sums): 16 chains hide a latency of up to 16 cycles at one instruction a cycle, or 8 at two.
 * Every loop runs on one thread and on two threads at once (one per core of this machine);
 * then ym_matmul (the engine's kernels) runs an N x K weight (default 3072 x 768, the 130m
 * shape's in_proj) at 1 row (decode; the weight as warm as the other cases left it), 16
 * rows (batch-16 decode) and 512 rows (a 512-token prefill) for f32, bf16 (widened to f32),
 * bf16 x bf16 and int8 x int8, one thread, and prints each as a
 * fraction of the one-thread peak of the instruction it runs on, measured in the same round.
 * Times are the thread's CPU time (CLOCK_THREAD_CPUTIME_ID), as bench/matmul's; two-thread
 * rates are also given over wall time. Last, the scan (ym_scan_f32) of the 130m shape's 24
 * layers of 1536 channels x 16 states, one thread, per token: as batch-16 decode runs it (16
 * sequences with their own states, one row each: 37.7 MB of state read and written a step) and
 * as a prefill chunk runs it (128 rows of one sequence). Each figure is the best of REPS rounds
 * (default 5), the loops interleaved within a round.
 * Runs: main thread, plus two short-lived pthreads per two-thread measurement.
 * Must not: execute an instruction the CPU lacks (each loop is skipped, with a line saying so,
 * where the CPU lacks it; on anything but x86-64 only the ym_matmul part and the scan run). */
#include <cblas.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#include "engine/kernels.h"
#include "engine/weight.h"

enum { K_CLOCK, K_FMA, K_DPBF16, K_VNNI, K_VNNI_COPY, K_VNNI_MIX, K_VNNI_COMPILED, K_COUNT };

static const char *const k_name[K_COUNT] = {"clock (add chain)", "vfmadd231ps zmm",
                                            "vdpbf16ps zmm", "vpdpbusd zmm",
                                            "vpdpbusd+2 vmovdqa", "vpdpbusd 4x4 from L1",
                                            "v_4_4 loop from L1"};
/* Instructions per loop iteration (counting the multiply-adds only), and what one instruction
 * counts: adds (one a cycle) for the clock, multiply-adds for the others. */
static const double k_insns = 16, k_per_insn[K_COUNT] = {1, 16, 32, 64, 64, 64, 64};

#if defined(__x86_64__)
/* The loops, as plain functions of the System V ABI (every zmm register is caller-saved):
 * void peak_<name>(uint64_t iters), iters >= 1 in %rdi. */
#define YM_PEAK_16(op, src)                                                                      \
    op " " src ", %zmm16, %zmm0\n\t" op " " src ", %zmm16, %zmm1\n\t" op " " src                 \
       ", %zmm16, %zmm2\n\t" op " " src ", %zmm16, %zmm3\n\t" op " " src ", %zmm16, %zmm4\n\t" op \
       " " src ", %zmm16, %zmm5\n\t" op " " src ", %zmm16, %zmm6\n\t" op " " src                 \
       ", %zmm16, %zmm7\n\t" op " " src ", %zmm16, %zmm8\n\t" op " " src ", %zmm16, %zmm9\n\t" op \
       " " src ", %zmm16, %zmm10\n\t" op " " src ", %zmm16, %zmm11\n\t" op " " src               \
       ", %zmm16, %zmm12\n\t" op " " src ", %zmm16, %zmm13\n\t" op " " src                        \
       ", %zmm16, %zmm14\n\t" op " " src ", %zmm16, %zmm15\n\t"

/* Sources: 1.0f in every f32 lane (as bf16 pairs: 1.0 and 0x3f80 -> ~1.0; as bytes: 0, 0,
 * 128, 63), accumulators from zero: no denormals, no overflow in 2^32 iterations of f32 adds
 * of 1 (they stop growing at 2^24), int32 sums wrap harmlessly. */
#define YM_PEAK_LOOP(name, op)                                                                   \
    ".globl " name "\n\t.type " name ", @function\n" name ":\n\t"                                \
    "movl $0x3f800000, %eax\n\tvpbroadcastd %eax, %zmm16\n\tvmovdqa64 %zmm16, %zmm17\n\t"        \
    "vpxord %zmm0, %zmm0, %zmm0\n\tvmovdqa64 %zmm0, %zmm1\n\tvmovdqa64 %zmm0, %zmm2\n\t"        \
    "vmovdqa64 %zmm0, %zmm3\n\tvmovdqa64 %zmm0, %zmm4\n\tvmovdqa64 %zmm0, %zmm5\n\t"            \
    "vmovdqa64 %zmm0, %zmm6\n\tvmovdqa64 %zmm0, %zmm7\n\tvmovdqa64 %zmm0, %zmm8\n\t"            \
    "vmovdqa64 %zmm0, %zmm9\n\tvmovdqa64 %zmm0, %zmm10\n\tvmovdqa64 %zmm0, %zmm11\n\t"          \
    "vmovdqa64 %zmm0, %zmm12\n\tvmovdqa64 %zmm0, %zmm13\n\tvmovdqa64 %zmm0, %zmm14\n\t"         \
    "vmovdqa64 %zmm0, %zmm15\n"                                                                 \
    "1:\n\t" YM_PEAK_16(op, "%zmm17") "decq %rdi\n\tjnz 1b\n\t"                                  \
    "vzeroupper\n\tret\n\t.size " name ", .-" name "\n"

/* One accumulator through a temporary: acc -> t, vpdpbusd into t, t -> acc. */
#define YM_PEAK_COPY(i, t)                                                                       \
    "vmovdqa32 %zmm" #i ", %zmm" #t "\n\tvpdpbusd %zmm17, %zmm16, %zmm" #t                         \
    "\n\tvmovdqa64 %zmm" #t ", %zmm" #i "\n\t"

/* 4 weight rows then 4 input rows of 1 KiB, in L1 (vnni_mix, vnni_compiled), and 128 bytes
 * for vnni_compiled's two spills. */
extern unsigned char peak_l1_buf[8192 + 128];
unsigned char peak_l1_buf[8192 + 128] __attribute__((aligned(64)));

/* One input row (at byte offset off of the buffer) against the 4 weight rows in zmm18-21. */
#define YM_PEAK_MIX_ROW(off, a0, a1, a2, a3)                                                     \
    "vmovdqu64 " #off "(%rsi,%rax), %zmm22\n\t"                                                 \
    "vpdpbusd %zmm22, %zmm18, %zmm" #a0 "\n\tvpdpbusd %zmm22, %zmm19, %zmm" #a1 "\n\t"          \
    "vpdpbusd %zmm22, %zmm20, %zmm" #a2 "\n\tvpdpbusd %zmm22, %zmm21, %zmm" #a3 "\n\t"

__asm__(".text\n\t.p2align 6\n"
        /* 16 adds, each waiting for the one before: 16 cycles an iteration. */
        ".globl peak_clock\n\t.type peak_clock, @function\npeak_clock:\n\t"
        "xorl %eax, %eax\n\tmovl $1, %edx\n"
        "1:\n\t"
        "addq %rdx, %rax\n\taddq %rdx, %rax\n\taddq %rdx, %rax\n\taddq %rdx, %rax\n\t"
        "addq %rdx, %rax\n\taddq %rdx, %rax\n\taddq %rdx, %rax\n\taddq %rdx, %rax\n\t"
        "addq %rdx, %rax\n\taddq %rdx, %rax\n\taddq %rdx, %rax\n\taddq %rdx, %rax\n\t"
        "addq %rdx, %rax\n\taddq %rdx, %rax\n\taddq %rdx, %rax\n\taddq %rdx, %rax\n\t"
        "decq %rdi\n\tjnz 1b\n\tret\n\t.size peak_clock, .-peak_clock\n\t.p2align 6\n"
        YM_PEAK_LOOP("peak_fma", "vfmadd231ps") "\t.p2align 6\n"
        YM_PEAK_LOOP("peak_dpbf16", "vdpbf16ps") "\t.p2align 6\n"
        YM_PEAK_LOOP("peak_vnni", "vpdpbusd") "\t.p2align 6\n"
        ".globl peak_vnni_copy\n\t.type peak_vnni_copy, @function\npeak_vnni_copy:\n\t"
        "movl $0x3f800000, %eax\n\tvpbroadcastd %eax, %zmm16\n\tvmovdqa64 %zmm16, %zmm17\n\t"
        "vpxord %zmm0, %zmm0, %zmm0\n\tvmovdqa64 %zmm0, %zmm1\n\tvmovdqa64 %zmm0, %zmm2\n\t"
        "vmovdqa64 %zmm0, %zmm3\n\tvmovdqa64 %zmm0, %zmm4\n\tvmovdqa64 %zmm0, %zmm5\n\t"
        "vmovdqa64 %zmm0, %zmm6\n\tvmovdqa64 %zmm0, %zmm7\n\tvmovdqa64 %zmm0, %zmm8\n\t"
        "vmovdqa64 %zmm0, %zmm9\n\tvmovdqa64 %zmm0, %zmm10\n\tvmovdqa64 %zmm0, %zmm11\n\t"
        "vmovdqa64 %zmm0, %zmm12\n\tvmovdqa64 %zmm0, %zmm13\n\tvmovdqa64 %zmm0, %zmm14\n\t"
        "vmovdqa64 %zmm0, %zmm15\n"
        "1:\n\t" YM_PEAK_COPY(0, 18) YM_PEAK_COPY(1, 19) YM_PEAK_COPY(2, 20) YM_PEAK_COPY(3, 21)
        YM_PEAK_COPY(4, 22) YM_PEAK_COPY(5, 23) YM_PEAK_COPY(6, 24) YM_PEAK_COPY(7, 25)
        YM_PEAK_COPY(8, 18) YM_PEAK_COPY(9, 19) YM_PEAK_COPY(10, 20) YM_PEAK_COPY(11, 21)
        YM_PEAK_COPY(12, 22) YM_PEAK_COPY(13, 23) YM_PEAK_COPY(14, 24) YM_PEAK_COPY(15, 25)
        "decq %rdi\n\tjnz 1b\n\tvzeroupper\n\tret\n\t.size peak_vnni_copy, .-peak_vnni_copy\n"
        "\t.p2align 6\n"
        ".globl peak_vnni_mix\n\t.type peak_vnni_mix, @function\npeak_vnni_mix:\n\t"
        "leaq peak_l1_buf(%rip), %rsi\n\txorl %eax, %eax\n\t"
        "movl $0x80808080, %edx\n\tvpbroadcastd %edx, %zmm24\n\t"
        "vpxord %zmm0, %zmm0, %zmm0\n\tvmovdqa64 %zmm0, %zmm1\n\tvmovdqa64 %zmm0, %zmm2\n\t"
        "vmovdqa64 %zmm0, %zmm3\n\tvmovdqa64 %zmm0, %zmm4\n\tvmovdqa64 %zmm0, %zmm5\n\t"
        "vmovdqa64 %zmm0, %zmm6\n\tvmovdqa64 %zmm0, %zmm7\n\tvmovdqa64 %zmm0, %zmm8\n\t"
        "vmovdqa64 %zmm0, %zmm9\n\tvmovdqa64 %zmm0, %zmm10\n\tvmovdqa64 %zmm0, %zmm11\n\t"
        "vmovdqa64 %zmm0, %zmm12\n\tvmovdqa64 %zmm0, %zmm13\n\tvmovdqa64 %zmm0, %zmm14\n\t"
        "vmovdqa64 %zmm0, %zmm15\n"
        "1:\n\t"
        "prefetcht0 256(%rsi,%rax)\n\tvpxord (%rsi,%rax), %zmm24, %zmm18\n\t"
        "prefetcht0 1280(%rsi,%rax)\n\tvpxord 1024(%rsi,%rax), %zmm24, %zmm19\n\t"
        "prefetcht0 2304(%rsi,%rax)\n\tvpxord 2048(%rsi,%rax), %zmm24, %zmm20\n\t"
        "prefetcht0 3328(%rsi,%rax)\n\tvpxord 3072(%rsi,%rax), %zmm24, %zmm21\n\t"
        YM_PEAK_MIX_ROW(4096, 0, 1, 2, 3) YM_PEAK_MIX_ROW(5120, 4, 5, 6, 7)
        YM_PEAK_MIX_ROW(6144, 8, 9, 10, 11) YM_PEAK_MIX_ROW(7168, 12, 13, 14, 15)
        "addq $64, %rax\n\tandq $1023, %rax\n\t"
        "decq %rdi\n\tjnz 1b\n\tvzeroupper\n\tret\n\t.size peak_vnni_mix, .-peak_vnni_mix\n"
        "\t.p2align 6\n"
        /* The compiled inner loop of engine/weight.c's v_4_4 (GCC 12.2, release build: -O3),
         * instruction for instruction, its pointers turned into offsets into peak_l1_buf and
         * its two stack spills into stores to the buffer's tail. */
        ".globl peak_vnni_compiled\n\t.type peak_vnni_compiled, @function\n"
        "peak_vnni_compiled:\n\t"
        "leaq peak_l1_buf(%rip), %rsi\n\txorl %eax, %eax\n\t"
        "movl $0x80808080, %edx\n\tvpbroadcastd %edx, %zmm5\n\t"
        "vpxord %zmm0, %zmm0, %zmm0\n\t"
        "vmovdqa64 %zmm0, %zmm21\n\t"
        "vmovdqa64 %zmm0, %zmm6\n\t"
        "vmovdqa64 %zmm0, %zmm20\n\t"
        "vmovdqa64 %zmm0, %zmm13\n\t"
        "vmovdqa64 %zmm0, %zmm19\n\t"
        "vmovdqa64 %zmm0, %zmm11\n\t"
        "vmovdqa64 %zmm0, %zmm18\n\t"
        "vmovdqa64 %zmm0, %zmm12\n\t"
        "vmovdqa64 %zmm0, %zmm10\n\t"
        "vmovdqa64 %zmm0, %zmm17\n\t"
        "vmovdqa64 %zmm0, %zmm9\n\t"
        "vmovdqa64 %zmm0, %zmm16\n\t"
        "vmovdqa64 %zmm0, %zmm15\n\t"
        "vmovdqa64 %zmm0, %zmm8\n\t"
        "vmovdqa64 %zmm0, %zmm14\n\t"
        "vmovdqa64 %zmm0, %zmm7\n\t"
        "1:\n\t"
        "vpxord (%rsi,%rax),%zmm5,%zmm4\n\t"
        "vpxord 1024(%rsi,%rax),%zmm5,%zmm3\n\t"
        "prefetcht0 256(%rsi,%rax)\n\t"
        "vmovdqa32 %zmm21,%zmm31\n\t"
        "vpxord 2048(%rsi,%rax),%zmm5,%zmm2\n\t"
        "vmovdqu64 4096(%rsi,%rax),%zmm1\n\t"
        "vmovdqa32 %zmm6,%zmm30\n\t"
        "vmovdqa32 %zmm20,%zmm29\n\t"
        "vpxord 3072(%rsi,%rax),%zmm5,%zmm0\n\t"
        "vmovdqa32 %zmm13,%zmm28\n\t"
        "vmovdqu64 5120(%rsi,%rax),%zmm22\n\t"
        "vmovdqa32 %zmm19,%zmm27\n\t"
        "vpdpbusd %zmm1,%zmm4,%zmm31\n\t"
        "prefetcht0 1280(%rsi,%rax)\n\t"
        "prefetcht0 2304(%rsi,%rax)\n\t"
        "vmovdqa32 %zmm11,%zmm26\n\t"
        "vpdpbusd %zmm1,%zmm3,%zmm30\n\t"
        "vmovdqa32 %zmm18,%zmm25\n\t"
        "vmovdqa32 %zmm12,%zmm24\n\t"
        "prefetcht0 3328(%rsi,%rax)\n\t"
        "vpdpbusd %zmm1,%zmm2,%zmm29\n\t"
        "vmovdqa32 %zmm10,%zmm23\n\t"
        "vpdpbusd %zmm1,%zmm0,%zmm28\n\t"
        "vmovdqu64 6144(%rsi,%rax),%zmm1\n\t"
        "vpdpbusd %zmm22,%zmm0,%zmm23\n\t"
        "vpdpbusd %zmm1,%zmm4,%zmm27\n\t"
        "vpdpbusd %zmm1,%zmm3,%zmm26\n\t"
        "vmovdqa64 %zmm31,%zmm21\n\t"
        "vpdpbusd %zmm1,%zmm2,%zmm25\n\t"
        "vmovdqa64 %zmm30,%zmm6\n\t"
        "vpdpbusd %zmm1,%zmm0,%zmm24\n\t"
        "vmovdqa32 %zmm17,%zmm1\n\t"
        "vmovdqa64 %zmm29,%zmm20\n\t"
        "vpdpbusd %zmm22,%zmm4,%zmm1\n\t"
        "vmovdqa64 %zmm28,%zmm13\n\t"
        "vmovdqa64 %zmm23,%zmm10\n\t"
        "vmovdqa64 %zmm27,%zmm19\n\t"
        "vmovdqa64 %zmm26,%zmm11\n\t"
        "vmovdqa64 %zmm25,%zmm18\n\t"
        "vmovdqa64 %zmm24,%zmm12\n\t"
        "vmovdqa32 %zmm1,8192(%rsi)\n\t"
        "vmovdqa64 %zmm1,%zmm17\n\t"
        "vmovdqa32 %zmm9,%zmm1\n\t"
        "vpdpbusd %zmm22,%zmm3,%zmm1\n\t"
        "vmovdqa32 %zmm1,8256(%rsi)\n\t"
        "vmovdqa64 %zmm1,%zmm9\n\t"
        "vmovdqa32 %zmm16,%zmm1\n\t"
        "vpdpbusd %zmm22,%zmm2,%zmm1\n\t"
        "vmovdqa32 %zmm15,%zmm22\n\t"
        "vpdpbusd 7168(%rsi,%rax),%zmm4,%zmm22\n\t"
        "vmovdqa32 %zmm8,%zmm4\n\t"
        "vpdpbusd 7168(%rsi,%rax),%zmm3,%zmm4\n\t"
        "vmovdqa32 %zmm14,%zmm3\n\t"
        "vpdpbusd 7168(%rsi,%rax),%zmm2,%zmm3\n\t"
        "vmovdqa32 %zmm7,%zmm2\n\t"
        "vpdpbusd 7168(%rsi,%rax),%zmm0,%zmm2\n\t"
        "add $0x40,%rax\n\t"
        "vmovdqa64 %zmm1,%zmm16\n\t"
        "vmovdqa64 %zmm22,%zmm15\n\t"
        "vmovdqa64 %zmm4,%zmm8\n\t"
        "vmovdqa64 %zmm3,%zmm14\n\t"
        "vmovdqa64 %zmm2,%zmm7\n\t"
        "andq $1023, %rax\n\tdecq %rdi\n\tjnz 1b\n\tvzeroupper\n\tret\n\t"
        ".size peak_vnni_compiled, .-peak_vnni_compiled\n");

void peak_clock(uint64_t iters);
void peak_fma(uint64_t iters);
void peak_dpbf16(uint64_t iters);
void peak_vnni(uint64_t iters);
void peak_vnni_copy(uint64_t iters);
void peak_vnni_mix(uint64_t iters);
void peak_vnni_compiled(uint64_t iters);

static void (*const k_fn[K_COUNT])(uint64_t) = {peak_clock,     peak_fma,       peak_dpbf16,
                                                peak_vnni,      peak_vnni_copy, peak_vnni_mix,
                                                peak_vnni_compiled};

static int k_supported(int k)
{
    __builtin_cpu_init();
    switch (k) {
    case K_CLOCK:
        return 1;
    case K_FMA:
        return __builtin_cpu_supports("avx512f");
    case K_DPBF16:
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bf16");
    default:
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vnni");
    }
}
#else
static void (*const k_fn[K_COUNT])(uint64_t) = {NULL, NULL, NULL, NULL, NULL, NULL, NULL};
static int k_supported(int k)
{
    (void)k;
    return 0;
}
#endif

static double cpu_now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static double wall_now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* Loop iterations of one pass: about 0.1 s at 4 GHz and one iteration every 16 cycles. */
enum { ITERS = 25 * 1000 * 1000 };

typedef struct {
    int k;
    pthread_barrier_t *start;
    double cpu_s; /* out: this thread's CPU time */
} pass_arg;

static void *pass_thread(void *p)
{
    pass_arg *a = p;
    pthread_barrier_wait(a->start);
    double t0 = cpu_now();
    k_fn[a->k](ITERS);
    a->cpu_s = cpu_now() - t0;
    return NULL;
}

/* Units (adds or multiply-adds) per second of loop k on `threads` threads: *cpu_rate summed
 * over the threads' own CPU times, *wall_rate over the wall time of the whole pass. Returns 0
 * when a thread could not be started (both rates 0). */
static int pass(int k, int threads, double *cpu_rate, double *wall_rate)
{
    pthread_t t[2];
    pass_arg a[2];
    pthread_barrier_t start;
    double units = (double)ITERS * k_insns * k_per_insn[k];
    *cpu_rate = *wall_rate = 0;
    if (threads == 1) {
        double t0 = cpu_now();
        k_fn[k](ITERS);
        *cpu_rate = *wall_rate = units / (cpu_now() - t0);
        return 1;
    }
    pthread_barrier_init(&start, NULL, 3);
    for (int i = 0; i < 2; i++) {
        a[i] = (pass_arg){k, &start, 0};
        if (pthread_create(&t[i], NULL, pass_thread, &a[i]) != 0) {
            fprintf(stderr, "peak: cannot start a thread\n");
            exit(1); /* the barrier would wait forever for it */
        }
    }
    pthread_barrier_wait(&start);
    double w0 = wall_now();
    for (int i = 0; i < 2; i++)
        pthread_join(t[i], NULL);
    double w = wall_now() - w0;
    pthread_barrier_destroy(&start);
    *cpu_rate = units / a[0].cpu_s + units / a[1].cpu_s;
    *wall_rate = 2 * units / w;
    return 1;
}

static void *huge(size_t bytes)
{
    size_t h = (size_t)2 << 20, n = (bytes + h - 1) / h * h;
    void *p = aligned_alloc(h, n);
    if (p != NULL)
        madvise(p, n, MADV_HUGEPAGE);
    return p;
}

/* The ym_matmul cases: weight type, activations (int8 x int8 / bf16 x bf16 or f32), and the
 * loop whose peak bounds it. */
enum { MM_F32, MM_BF16, MM_BF16XBF16, MM_INT8XINT8, MM_COUNT };
static const char *const mm_name[MM_COUNT] = {"f32", "bf16 (widened)", "bf16xbf16",
                                              "int8xint8"};
static const int mm_bound[MM_COUNT] = {K_FMA, K_FMA, K_DPBF16, K_VNNI};
enum { MM_NROWS = 3 };
static const int mm_rows[MM_NROWS] = {1, 16, 512};

/* The scan's shape: the 130m model's layers, channels and states; a step's sequences (decode)
 * and a prefill chunk's rows. */
enum { SC_LAYERS = 24, SC_CH = 1536, SC_N = 16, SC_SEQS = 16, SC_ROWS = 128 };

typedef struct {
    float *s;  /* [SC_SEQS, SC_LAYERS, SC_CH, SC_N] states */
    float *A;  /* [SC_CH, SC_N] */
    float *D;  /* [SC_CH] */
    float *x, *dt, *z, *y; /* [SC_ROWS, SC_CH] */
    float *bc; /* [SC_ROWS, 2 SC_N] */
} scan_buf;

static int scan_init(scan_buf *b)
{
    size_t st = (size_t)SC_SEQS * SC_LAYERS * SC_CH * SC_N, rows = (size_t)SC_ROWS * SC_CH;
    b->s = huge(sizeof(float) * st);
    b->A = malloc(sizeof(float) * SC_CH * SC_N), b->D = malloc(sizeof(float) * SC_CH);
    b->x = malloc(sizeof(float) * rows), b->dt = malloc(sizeof(float) * rows);
    b->z = malloc(sizeof(float) * rows), b->y = malloc(sizeof(float) * rows);
    b->bc = malloc(sizeof(float) * SC_ROWS * 2 * SC_N);
    if (!b->s || !b->A || !b->D || !b->x || !b->dt || !b->z || !b->y || !b->bc)
        return 0;
    memset(b->s, 0, sizeof(float) * st);
    for (int i = 0; i < SC_CH * SC_N; i++) /* A = -exp(A_log) as Mamba's init: -(n + 1) */
        b->A[i] = -(float)(i % SC_N + 1);
    for (int d = 0; d < SC_CH; d++)
        b->D[d] = 1.0f;
    for (size_t i = 0; i < rows; i++) { /* values as bench_scan's (tools/bench.c) */
        b->dt[i] = 0.01f + 0.09f * (float)((i * 37) % 101) / 100.0f;
        b->x[i] = (float)((i * 53) % 17) / 8.0f - 1.0f;
        b->z[i] = (float)((i * 29) % 13) / 6.0f - 1.0f;
    }
    for (int i = 0; i < SC_ROWS * 2 * SC_N; i++)
        b->bc[i] = (float)((i * 7) % 11) / 5.0f - 1.0f;
    return 1;
}

/* Microseconds of scan per token for all layers, one thread: rows = 1 runs one step of
 * SC_SEQS sequences (one row each, each its own states); rows > 1 runs that many rows of one
 * sequence in one call per layer. */
static double scan_us_per_token(scan_buf *b, int rows)
{
    double t0 = cpu_now();
    if (rows == 1) {
        for (int l = 0; l < SC_LAYERS; l++)
            for (int q = 0; q < SC_SEQS; q++)
                ym_scan_f32(b->y + (size_t)q * SC_CH,
                            b->s + ((size_t)q * SC_LAYERS + l) * SC_CH * SC_N, b->A, b->D,
                            b->x + (size_t)q * SC_CH, b->dt + (size_t)q * SC_CH,
                            b->z + (size_t)q * SC_CH, b->bc + q * 2 * SC_N, 2 * SC_N, 1, SC_CH,
                            SC_N, 0, SC_CH);
        return (cpu_now() - t0) * 1e6 / SC_SEQS;
    }
    for (int l = 0; l < SC_LAYERS; l++)
        ym_scan_f32(b->y, b->s + (size_t)l * SC_CH * SC_N, b->A, b->D, b->x, b->dt, b->z, b->bc,
                    2 * SC_N, rows, SC_CH, SC_N, 0, SC_CH);
    return (cpu_now() - t0) * 1e6 / rows;
}

int main(int argc, char **argv)
{
    int reps = argc > 1 ? atoi(argv[1]) : 5;
    int N = argc > 3 ? atoi(argv[2]) : 3072, K = argc > 3 ? atoi(argv[3]) : 768;
    if (reps < 1 || N < 1 || K < 1) {
        fprintf(stderr, "usage: peak [REPS] [N K]\n");
        return 2;
    }
    openblas_set_num_threads(1);

    /* The weights in each type, and inputs for the larger row count. */
    size_t n = (size_t)N * K, Mmax = (size_t)mm_rows[MM_NROWS - 1];
    float *W = huge(n * 4), *sc = malloc(sizeof(float) * (size_t)N);
    void *b16 = huge(n * 2), *i8 = huge(n);
    float *A = malloc(sizeof(float) * Mmax * K), *C = malloc(sizeof(float) * Mmax * N);
    float *scr = malloc(sizeof(float) * ym_matmul_scratch(K));
    if (!W || !sc || !b16 || !i8 || !A || !C || !scr) {
        fprintf(stderr, "peak: out of memory\n");
        return 1;
    }
    for (size_t i = 0; i < n; i++)
        W[i] = (float)((i * 7) % 13) / 13.0f - 0.5f;
    for (size_t i = 0; i < Mmax * K; i++)
        A[i] = 1.0f / (float)(i % 97 + 1);
    ym_weight w[3] = {{YM_WT_F32, N, K, W, NULL}, {YM_WT_BF16, N, K, b16, NULL},
                      {YM_WT_INT8, N, K, i8, sc}};
    if (ym_weight_convert(YM_WT_BF16, W, (size_t)K, N, K, b16, NULL, NULL) != YM_OK ||
        ym_weight_convert(YM_WT_INT8, W, (size_t)K, N, K, i8, sc, NULL) != YM_OK) {
        fprintf(stderr, "peak: weight conversion failed\n");
        return 1;
    }

    scan_buf sb;
    if (!scan_init(&sb)) {
        fprintf(stderr, "peak: out of memory\n");
        return 1;
    }
    double scan_dec = 1e30, scan_pre = 1e30;

    /* best[k][threads - 1]: CPU-time rate; bestw: wall-time rate (2 threads). */
    double best[K_COUNT][2] = {{0}}, bestw[K_COUNT] = {0}, mm[MM_COUNT][MM_NROWS] = {{0}};
    /* the one-thread peak of the round each mm best came from */
    double peak1[MM_COUNT][MM_NROWS] = {{0}};
    for (int r = 0; r < reps; r++) {
        double round1[K_COUNT] = {0};
        for (int k = 0; k < K_COUNT; k++) {
            if (!k_supported(k))
                continue;
            for (int th = 1; th <= 2; th++) {
                double c, wr;
                pass(k, th, &c, &wr);
                if (th == 1)
                    round1[k] = c;
                if (c > best[k][th - 1])
                    best[k][th - 1] = c;
                if (th == 2 && wr > bestw[k])
                    bestw[k] = wr;
            }
        }
        for (int i = 0; i < MM_COUNT; i++) {
            const ym_weight *x = &w[i == MM_F32 ? 0 : i == MM_INT8XINT8 ? 2 : 1];
            ym_matmul_int8_activations(i == MM_INT8XINT8);
            ym_matmul_bf16_activations(i == MM_BF16XBF16);
            for (int j = 0; j < MM_NROWS; j++) {
                int M = mm_rows[j];
                double t0 = cpu_now();
                ym_matmul(C, N, A, K, M, x, 0, N, 0.0f, scr);
                double rate = (double)M * (double)n / (cpu_now() - t0); /* multiply-adds/s */
                if (rate > mm[i][j]) {
                    mm[i][j] = rate;
                    peak1[i][j] = round1[mm_bound[i]];
                }
            }
        }
        ym_matmul_int8_activations(1);
        ym_matmul_bf16_activations(0);
        for (int i = 0; i < 4; i++) { /* 4 decode steps, then the chunk, best of each */
            double us = scan_us_per_token(&sb, 1);
            scan_dec = us < scan_dec ? us : scan_dec;
        }
        double us = scan_us_per_token(&sb, SC_ROWS);
        scan_pre = us < scan_pre ? us : scan_pre;
    }

    printf("peak: best of %d rounds; matmul %s, weight %d x %d\n", reps, ym_matmul_isa(), N, K);
    double ghz1 = best[K_CLOCK][0] / 1e9, ghz2 = best[K_CLOCK][1] / 2e9;
    printf("clock (dependent adds): %.3f GHz one thread, %.3f GHz a thread with two\n", ghz1,
           ghz2);
    printf("%-18s %14s %12s %14s %14s %12s\n", "loop", "1 thread G/s", "per cycle",
           "2 thr. G/s cpu", "2 thr. G/s wall", "per cycle");
    for (int k = K_FMA; k < K_COUNT; k++) {
        if (!k_supported(k)) {
            printf("%-18s not supported by this CPU\n", k_name[k]);
            continue;
        }
        /* Multiply-adds per cycle of one core: the rate over the clock loop's rate. */
        printf("%-18s %14.1f %12.2f %14.1f %14.1f %12.2f   (G multiply-adds/s; x2 for FLOP/s)\n",
               k_name[k], best[k][0] / 1e9, ghz1 > 0 ? best[k][0] / 1e9 / ghz1 : 0,
               best[k][1] / 1e9, bestw[k] / 1e9, ghz2 > 0 ? best[k][1] / 2e9 / ghz2 : 0);
    }
    printf("ym_matmul, one thread (G multiply-adds/s; fraction of the one-thread peak of its\n"
           "instruction in the same round):\n");
    for (int i = 0; i < MM_COUNT; i++) {
        printf("  %-16s", mm_name[i]);
        for (int j = 0; j < MM_NROWS; j++)
            printf("  %3d rows %7.1f (%.2f of %s)", mm_rows[j], mm[i][j] / 1e9,
                   peak1[i][j] > 0 ? mm[i][j] / peak1[i][j] : 0, k_name[mm_bound[i]]);
        printf("\n");
    }
    printf("scan (ym_scan_f32, %s), 24 layers x 1536 channels x 16 states, one thread, per token:\n"
           "  decode, 16 sequences a step %.1f us (%.1f cycles a channel of 16 states)\n"
           "  prefill, %d rows of one sequence %.1f us (%.1f cycles)\n",
           ym_kernels_isa(), scan_dec, scan_dec * 1e3 * ghz1 / (SC_LAYERS * SC_CH), SC_ROWS,
           scan_pre, scan_pre * 1e3 * ghz1 / (SC_LAYERS * SC_CH));
    free(sb.s), free(sb.A), free(sb.D), free(sb.x), free(sb.dt), free(sb.z), free(sb.y),
        free(sb.bc);
    free(W), free(sc), free(b16), free(i8), free(A), free(C), free(scr);
    return 0;
}
