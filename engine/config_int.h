/* engine/config_int.h - config internals shared with engine/model.c; not a public interface. */
#ifndef YM_ENGINE_CONFIG_INT_H
#define YM_ENGINE_CONFIG_INT_H

#include "engine/config.h"

/* Check a filled ym_config against the same bounds ym_config_parse enforces (positive sizes,
 * sane upper limits). YM_EFORMAT naming the field, with the HF key in the message. */
ym_err ym__config_check(const ym_config *c, ym_diag *diag);

#endif
