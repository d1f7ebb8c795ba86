/* engine/model.c - not yet written. */
