#include "tess.h"

unsigned tess_quorum(unsigned nodes)
{
    /* 64-bit product: 2 * nodes must not wrap for large validator sets. */
    return (unsigned)(2ULL * nodes / 3) + 1;
}
