/* tests/unit/test_model.c - placeholder until the module's tests land. */
#include "testutil.h"

Suite *model_suite(void)
{
    return suite_create("model");
}
