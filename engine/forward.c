/* engine/forward.c - not yet written. */
