/* engine/textout.c - not yet written. */
