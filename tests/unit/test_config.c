/* tests/unit/test_config.c - placeholder until the module's tests land. */
#include "testutil.h"

Suite *config_suite(void)
{
    return suite_create("config");
}
