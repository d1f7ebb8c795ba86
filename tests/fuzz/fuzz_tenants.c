/* tests/fuzz/fuzz_tenants.c - arbitrary bytes as a tenants file, then as an Authorization
 * header against the shipped example. Must never crash or leak. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "server/tenants.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int ready;
    if (!ready) {
        YM_ASSERT(ym_tenants_init() == 0);
        ready = 1;
    }
    ym_tenants_t *t = NULL;
    ym_diag diag = {{0}, {0}};
    if (ym_tenants_parse((const char *)data, size, &t, &diag) == YM_OK) {
        YM_ASSERT(t != NULL && ym_tenants_count(t) >= 1);
        ym_tenants_free(t);
    } else {
        YM_ASSERT(t == NULL && diag.msg[0] != '\0');
    }
    static const char example[] =
        "{\"tenants\": [{\"name\": \"a\", \"keys\": "
        "[\"sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad\"]}]}";
    YM_ASSERT(ym_tenants_parse(example, sizeof(example) - 1, &t, NULL) == YM_OK);
    char *header = malloc(size + 1);
    if (header != NULL) {
        memcpy(header, data, size);
        header[size] = '\0';
        const ym_tenant *who = ym_tenants_auth(t, header);
        YM_ASSERT(who == NULL || strcmp(who->name, "a") == 0);
        free(header);
    }
    ym_tenants_free(t);
    return 0;
}
