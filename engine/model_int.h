/* engine/model_int.h - model internals shared with the code that builds derived models
 * (engine/sparse.c). Not a public interface. */
#ifndef YM_ENGINE_MODEL_INT_H
#define YM_ENGINE_MODEL_INT_H

#include <stddef.h>

#include "engine/model.h"

/* A new 64-byte aligned (2 MiB aligned and huge-page advised when large) buffer of n floats,
 * owned by m and freed with it; NULL when out of memory. Only while m is being built. */
float *ym__model_alloc(ym_model_t *m, size_t n);

#endif
