/* tests/unit/test_safetensors.c - placeholder until the module's tests land. */
#include "testutil.h"

Suite *safetensors_suite(void)
{
    return suite_create("safetensors");
}
