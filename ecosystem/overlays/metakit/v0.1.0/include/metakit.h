/* metakit: metagraph snapshot helpers on top of tessellation. */
#ifndef METAKIT_H
#define METAKIT_H

#include "tess.h"

/* The digest of snapshot `ordinal` carrying `payload`, chained from the previous digest. */
uint64_t mk_snapshot_digest(uint64_t ordinal, const char *payload, uint64_t previous);

/* Writes `digest` as 16 lowercase hex digits and a NUL into `out`. */
void mk_format_digest(uint64_t digest, char out[17]);

#endif
