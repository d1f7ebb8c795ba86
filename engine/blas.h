/* engine/blas.h - choosing OpenBLAS's kernel before the library loads (docs/ENGINE.md).
 *
 * Debian's OpenBLAS 0.3.21 does not recognise recent Intel CPUs and silently runs its generic
 * SSE3 kernels; OPENBLAS_CORETYPE is read when the library loads, so a program that wants the
 * right kernel re-executes itself with it set. Call ym_blas_reexec(argv) first thing in main(). */
#ifndef YM_ENGINE_BLAS_H
#define YM_ENGINE_BLAS_H

/* If OPENBLAS_CORETYPE is unset and this CPU has AVX-512 (F, BW, VL, DQ, CD) that the library
 * would not detect, set it (SkylakeX, or Cooperlake with AVX512-BF16) and execv() ourselves.
 * Never overrides a value the user set; returns normally when nothing is to be done or the
 * exec fails. Set YUNMIN_NO_REEXEC=1 to disable. */
void ym_blas_reexec(char **argv);
/* The kernel OpenBLAS is running (openblas_get_corename()), e.g. "SkylakeX". */
const char *ym_blas_core(void);
/* Make OpenBLAS single-threaded: the engine's own pool owns parallelism (docs/ENGINE.md,
 * "Forward pass"). */
void ym_blas_single_thread(void);

#endif
