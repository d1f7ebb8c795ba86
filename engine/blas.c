/* engine/blas.c - not yet written. */
