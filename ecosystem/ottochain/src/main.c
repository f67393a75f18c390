/* ottochain: the example metagraph's node binary, linked statically against metakit and
 * tessellation. `--schema` prints its data types; the sdk generates its types from that. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "metakit.h"

struct type {
    const char *name;
    const char *fields; /* space-separated name:kind, kind one of string, number, address */
};

static const struct type types[] = {
#define TYPE(name, fields) {#name, fields},
#include "schema.def"
#undef TYPE
};

static int print_schema(void)
{
    printf("schema %d\n", SCHEMA_VERSION);
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++)
        printf("type %s %s\n", types[i].name, types[i].fields);
    return 0;
}

/* Chains the payloads as snapshots 1..n and prints each digest, as a node publishes them. */
static int chain(int count, char **payloads)
{
    uint64_t digest = TESS_HASH_SEED;
    char hex[17];

    for (int i = 0; i < count; i++) {
        digest = mk_snapshot_digest((uint64_t)i + 1, payloads[i], digest);
        mk_format_digest(digest, hex);
        printf("%d %s\n", i + 1, hex);
    }
    return 0;
}

static int parse_count(const char *text, unsigned *out)
{
    char *end;
    unsigned long value = strtoul(text, &end, 10);

    if (*text == '\0' || *end != '\0' || value > 1000000) {
        fprintf(stderr, "ottochain: not a count: %s\n", text);
        return -1;
    }
    *out = (unsigned)value;
    return 0;
}

/* Exit status 0 when the votes make the snapshot final, 1 when not, 2 on bad input. */
static int accept_snapshot(const char *votes_text, const char *validators_text)
{
    unsigned votes, validators;

    if (parse_count(votes_text, &votes) || parse_count(validators_text, &validators))
        return 2;
    int ok = mk_snapshot_accepted(votes, validators);
    printf("%s: %u of %u votes, quorum %u\n", ok ? "accepted" : "rejected", votes, validators,
           tess_quorum(validators));
    return ok ? 0 : 1;
}

int main(int argc, char **argv)
{
    if (argc == 2 && strcmp(argv[1], "--schema") == 0)
        return print_schema();
    if (argc >= 3 && strcmp(argv[1], "chain") == 0)
        return chain(argc - 2, argv + 2);
    if (argc == 4 && strcmp(argv[1], "accept") == 0)
        return accept_snapshot(argv[2], argv[3]);
    fputs("usage: ottochain --schema | chain PAYLOAD... | accept VOTES VALIDATORS\n", stderr);
    return 2;
}
