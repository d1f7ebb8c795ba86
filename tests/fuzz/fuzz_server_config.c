/* tests/fuzz/fuzz_server_config.c - arbitrary bytes as yunmind's JSON settings file.
 *
 * Must never crash or leak; accepted settings respect the relations the server relies on. */
#include <stdint.h>
#include <stdlib.h>

#include "server/conf.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    ym_conf c;
    ym_diag diag = {{0}, {0}};
    if (ym_conf_parse_json(&c, (const char *)data, size, &diag) == YM_OK) {
        YM_ASSERT(c.max_running >= 1 && c.max_running <= c.max_batch_tokens);
        YM_ASSERT(c.default_max_tokens <= c.max_tokens_cap && c.port <= 65535);
        YM_ASSERT(c.host != NULL && c.host[0] != '\0' && c.model != NULL);
        char *dump = ym_conf_dump(&c);
        YM_ASSERT(dump != NULL);
        free(dump);
        ym_conf_deinit(&c);
    } else {
        YM_ASSERT(diag.msg[0] != '\0' && c.host == NULL);
    }
    return 0;
}
