/* engine/safetensors.c - not yet written. */
