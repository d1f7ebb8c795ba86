/* engine/kernels.c - not yet written. */
