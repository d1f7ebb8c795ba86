/* tests/unit/test_sampling.c - placeholder until the module's tests land. */
#include "testutil.h"

Suite *sampling_suite(void)
{
    return suite_create("sampling");
}
