/* tessellation: hashing and quorum primitives for metagraph snapshots. */
#ifndef TESS_H
#define TESS_H

#include <stddef.h>
#include <stdint.h>

/* The FNV-1a offset basis: the seed of a chain's first hash. */
#define TESS_HASH_SEED 0xcbf29ce484222325ULL

/* 64-bit FNV-1a of `len` bytes, continuing from `seed` so hashes can be chained. */
uint64_t tess_hash(const void *data, size_t len, uint64_t seed);

/* Votes a byzantine quorum of `nodes` validators needs: floor(2 * nodes / 3) + 1. */
unsigned tess_quorum(unsigned nodes);

#endif
