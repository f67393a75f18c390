/* metakit: metagraph snapshot helpers on top of tessellation. */
#ifndef METAKIT_H
#define METAKIT_H

#include "tess.h"

/* The digest of snapshot `ordinal` carrying `payload`, chained from the previous digest. */
uint64_t mk_snapshot_digest(uint64_t ordinal, const char *payload, uint64_t previous);

/* Whether `votes` signatures out of `validators` make a snapshot final. */
int mk_snapshot_accepted(unsigned votes, unsigned validators);

/* Writes `digest` as 16 lowercase hex digits and a NUL into `out`. */
void mk_format_digest(uint64_t digest, char out[17]);

#endif
