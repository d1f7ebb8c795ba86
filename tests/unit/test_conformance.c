/* tests/unit/test_conformance.c - placeholder until the module's tests land. */
#include "testutil.h"

Suite *conformance_suite(void)
{
    return suite_create("conformance");
}
