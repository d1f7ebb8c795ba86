/* engine/config.c - not yet written. */
