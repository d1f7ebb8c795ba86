/* engine/tokenizer.c - not yet written. */
