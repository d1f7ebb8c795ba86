/* tests/unit/test_state.c - placeholder until the module's tests land. */
#include "testutil.h"

Suite *state_suite(void)
{
    return suite_create("state");
}
