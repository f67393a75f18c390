#include "metakit.h"

int mk_snapshot_accepted(unsigned votes, unsigned validators)
{
    return validators > 0 && votes <= validators && votes >= tess_quorum(validators);
}
