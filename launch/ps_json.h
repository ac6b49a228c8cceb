// Minimal JSON writers shared by the subcommands' --json outputs.
#ifndef PS_JSON_H
#define PS_JSON_H

#include <stdio.h>

// A quoted, escaped JSON string.
void ps_json_string(FILE *f, const char *s);
// A number with round-trip precision (%.17g); NaN/Inf become null.
void ps_json_number(FILE *f, double x);

#endif
