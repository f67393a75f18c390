#include <string.h>

#include "metakit.h"

uint64_t mk_snapshot_digest(uint64_t ordinal, const char *payload, uint64_t previous)
{
    unsigned char le[8];

    /* Little-endian bytes, so the digest is the same on every host. */
    for (int i = 0; i < 8; i++)
        le[i] = (unsigned char)(ordinal >> (8 * i));
    return tess_hash(payload, strlen(payload), tess_hash(le, sizeof le, previous));
}

void mk_format_digest(uint64_t digest, char out[17])
{
    static const char hex[] = "0123456789abcdef";

    for (int i = 15; i >= 0; i--, digest >>= 4)
        out[i] = hex[digest & 0xf];
    out[16] = '\0';
}
