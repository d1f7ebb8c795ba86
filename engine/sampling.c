/* engine/sampling.c - not yet written. */
