/* engine/state.c - not yet written. */
