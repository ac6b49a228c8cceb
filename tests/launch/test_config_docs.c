// docs/config.md against the key table, both directions: every key the loader
// knows is documented with its type and default, and every documented key exists.
// Regenerate the table with `pansurv config --markdown`.
#include <stdlib.h>
#include <string.h>

#include "ps_config.h"
#include "testutil.h"

static void trim(char *s) {
  char *b = s;
  while (*b == ' ') b++;
  memmove(s, b, strlen(b) + 1);
  size_t n = strlen(s);
  while (n && (s[n - 1] == ' ' || s[n - 1] == '\n')) s[--n] = '\0';
}

int main(void) {
  const char *src = getenv("PANSURV_SOURCE_DIR");
  char path[1024];
  snprintf(path, sizeof path, "%s/docs/config.md", src ? src : ".");
  FILE *f = fopen(path, "r");
  TU_CHECK(f != NULL, "cannot open %s", path);
  if (!f) return ps_tu_finish("launch_config_docs");
  int *seen = calloc(ps_config_key_count, sizeof *seen);
  char line[4096];
  int lineno = 0, rows = 0;
  while (fgets(line, sizeof line, f)) {
    lineno++;
    if (strncmp(line, "| `", 3)) continue;
    // | `section.key` | type | range | `default` | doc |
    char *cells[6] = {0};
    int nc = 0;
    char *save = NULL;
    for (char *t = strtok_r(line + 1, "|", &save); t && nc < 6; t = strtok_r(NULL, "|", &save)) cells[nc++] = t;
    TU_CHECK(nc >= 5, "%s:%d: a key row needs 5 cells", path, lineno);
    if (nc < 5) continue;
    for (int i = 0; i < nc; i++) trim(cells[i]);
    char name[256];
    snprintf(name, sizeof name, "%s", cells[0] + 1);
    char *tick = strchr(name, '`');
    if (tick) *tick = '\0';
    rows++;
    size_t i = 0;
    for (; i < ps_config_key_count; i++) {
      char full[256];
      snprintf(full, sizeof full, "%s.%s", ps_config_keys[i].section, ps_config_keys[i].key);
      if (!strcmp(full, name)) break;
    }
    TU_CHECK(i < ps_config_key_count, "%s:%d: documents '%s', which the loader does not know", path, lineno, name);
    if (i == ps_config_key_count) continue;
    seen[i]++;
    const ps_cfg_key *k = &ps_config_keys[i];
    TU_CHECK(!strcmp(cells[1], ps_cfg_type_name(k->type)), "%s:%d: %s type '%s', loader says '%s'", path, lineno, name,
             cells[1], ps_cfg_type_name(k->type));
    char def[512];
    snprintf(def, sizeof def, "`%s`", k->def);
    TU_CHECK(!strcmp(cells[3], def), "%s:%d: %s default %s, loader says %s", path, lineno, name, cells[3], def);
  }
  fclose(f);
  TU_CHECK(rows > 0, "%s: no key rows found", path);
  for (size_t i = 0; i < ps_config_key_count; i++)
    TU_CHECK(seen[i] == 1, "%s.%s documented %d times in %s (expected once)", ps_config_keys[i].section,
             ps_config_keys[i].key, seen[i], path);
  free(seen);
  return ps_tu_finish("launch_config_docs");
}
