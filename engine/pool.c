/* engine/pool.c - not yet written. */
