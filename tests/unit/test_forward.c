/* tests/unit/test_forward.c - placeholder until the module's tests land. */
#include "testutil.h"

Suite *forward_suite(void)
{
    return suite_create("forward");
}
