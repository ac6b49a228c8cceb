// Config loader: every bad-input path gives a message with file:line:column
// (or --set), names the key and what was expected; good input round-trips
// through the resolved-config printer.
#define _POSIX_C_SOURCE 200809L
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ps_config.h"
#include "testutil.h"

static char dir[256];

static const char *write_yaml(const char *name, const char *text) {
  static char path[512];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  FILE *f = fopen(path, "w");
  fputs(text, f);
  fclose(f);
  return path;
}

// Loads `text`; expects failure whose message contains every needle.
static void expect_error(const char *what, const char *text, const char *n1, const char *n2, const char *n3) {
  ps_config c;
  ps_config_defaults(&c);
  const char *path = write_yaml("bad.yaml", text);
  ps_status s = ps_config_load(&c, path);
  const char *m = ps_error_message();
  TU_CHECK(s == PS_ERR_CONFIG, "%s: expected a config error, got %d (%s)", what, s, m);
  const char *needles[] = {n1, n2, n3};
  for (int i = 0; i < 3; i++)
    if (needles[i]) TU_CHECK(strstr(m, needles[i]) != NULL, "%s: message '%s' lacks '%s'", what, m, needles[i]);
}

static void expect_set_error(const char *assign, const char *n1, const char *n2) {
  ps_config c;
  ps_config_defaults(&c);
  ps_status s = ps_config_set(&c, assign);
  const char *m = ps_error_message();
  TU_CHECK(s == PS_ERR_CONFIG, "--set %s: expected a config error", assign);
  if (n1) TU_CHECK(strstr(m, n1) != NULL, "--set %s: message '%s' lacks '%s'", assign, m, n1);
  if (n2) TU_CHECK(strstr(m, n2) != NULL, "--set %s: message '%s' lacks '%s'", assign, m, n2);
}

int main(void) {
  snprintf(dir, sizeof dir, "/tmp/ps_cfg_XXXXXX");
  if (!mkdtemp(dir)) return 1;

  // Unknown key: file:line:column and the closest valid key.
  expect_error("unknown key", "train:\n  epochs: 3\n  lerning_rate: 0.1\n", "bad.yaml:3:3", "train.lerning_rate",
               "did you mean");
  expect_error("typo", "optim:\n  weight_decy: 0.1\n", "bad.yaml:2:3", "'optim.weight_decay'", NULL);
  expect_error("key in wrong section", "train:\n  lr: 0.1\n", "bad.yaml:2:3", "'optim.lr'", NULL);
  expect_error("unknown section", "trian:\n  epochs: 3\n", "bad.yaml:1:1", "unknown section 'trian'", "'train'");
  // Types and ranges: name the key and the expected type/range.
  expect_error("int type", "train:\n  epochs: three\n", "bad.yaml:2:11", "train.epochs", "expected int in 1..1000000");
  expect_error("int range", "train:\n  epochs: 0\n", "train.epochs", "1..1000000", NULL);
  expect_error("int not float", "train:\n  global_batch: 6.5\n", "train.global_batch", "expected int", NULL);
  expect_error("float type", "optim:\n  lr: fast\n", "optim.lr", "expected float in 0..10", NULL);
  expect_error("float range", "optim:\n  lr: -1\n", "optim.lr", "0..10", NULL);
  expect_error("float nan", "optim:\n  lr: nan\n", "optim.lr", NULL, NULL);
  expect_error("quoted number", "optim:\n  lr: '0.1'\n", "optim.lr", "expected float", NULL);
  expect_error("bool", "optim:\n  nesterov: maybe\n", "optim.nesterov", "true|false", NULL);
  expect_error("enum", "loss:\n  ties: exact\n", "bad.yaml:2:9", "loss.ties", "efron|breslow");
  expect_error("enum list element", "data:\n  modalities: [clinical, rna]\n", "data.modalities", "clinical|omics|slides",
               NULL);
  expect_error("enum list duplicate", "data:\n  modalities: [omics, omics]\n", "listed twice", NULL, NULL);
  expect_error("empty list", "data:\n  modalities: []\n", "data.modalities", "1..8 elements", NULL);
  expect_error("int list", "model:\n  cnn_channels: [32, x]\n", "model.cnn_channels", "expected list of int", NULL);
  expect_error("list for scalar", "train:\n  epochs: [1, 2]\n", "bad.yaml:2:11", "train.epochs", "got a list");
  expect_error("mapping for scalar", "train:\n  epochs: {a: 1}\n", "train.epochs", "got a mapping", NULL);
  expect_error("section not mapping", "train: 5\n", "bad.yaml:1:8", "section 'train' must be a mapping", NULL);
  expect_error("root not mapping", "- a\n- b\n", "bad.yaml:1:1", "mapping of sections", NULL);
  expect_error("duplicate key", "train:\n  epochs: 1\n  epochs: 2\n", "bad.yaml:3:3", "given twice", NULL);
  expect_error("duplicate section", "train:\n  epochs: 1\ntrain:\n  seed: 2\n", "bad.yaml:3:1", "given twice", NULL);
  expect_error("syntax", "train:\n  epochs: [1, 2\n", "bad.yaml:", "YAML syntax error", NULL);
  expect_error("empty file", "", "empty config file", NULL, NULL);

  // Missing file.
  {
    ps_config c;
    ps_config_defaults(&c);
    ps_status s = ps_config_load(&c, "/nonexistent/x.yaml");
    TU_CHECK(s == PS_ERR_IO && strstr(ps_error_message(), "/nonexistent/x.yaml"), "missing file: %s", ps_error_message());
  }

  // --set errors.
  expect_set_error("train.epochs", "expected section.key=value", NULL);
  expect_set_error("train.epoch=3", "did you mean 'train.epochs'", NULL);
  expect_set_error("trian.epochs=3", "unknown section 'trian'", "'train'");
  expect_set_error("train.epochs=-2", "--set", "train.epochs");
  expect_set_error("loss.ties=exact", "efron|breslow", NULL);

  // Cross-key validation.
  {
    ps_config c;
    ps_config_defaults(&c);
    TU_OK(ps_config_set(&c, "data.path=x.h5"));
    TU_OK(ps_config_validate(&c));
    TU_OK(ps_config_set(&c, "train.accumulation=5"));
    TU_CHECK(ps_config_validate(&c) == PS_ERR_CONFIG && strstr(ps_error_message(), "train.accumulation"), "accum: %s",
             ps_error_message());
    ps_config_defaults(&c);
    TU_OK(ps_config_set(&c, "data.path=x.h5"));
    TU_OK(ps_config_set(&c, "data.split=kfold"));
    TU_OK(ps_config_set(&c, "data.fold=5"));
    TU_CHECK(ps_config_validate(&c) == PS_ERR_CONFIG && strstr(ps_error_message(), "data.fold"), "fold: %s",
             ps_error_message());
    ps_config_defaults(&c);
    TU_CHECK(ps_config_validate(&c) == PS_ERR_CONFIG && strstr(ps_error_message(), "data.path"), "path: %s",
             ps_error_message());
  }

  // Good file + overrides; the printed config loads back to identical values.
  {
    ps_config c, d;
    ps_config_defaults(&c);
    const char *p = write_yaml("good.yaml", "# comment\ndata:\n  path: \"co:hort \\\"x\\\".h5\"\n  modalities: [omics, slides]\n"
                                            "model:\n  cnn_channels: [8, 16]\noptim:\n  lr: 3e-4\n  nesterov: yes\n"
                                            "train:\n  seed: 123456789012\nlog:\n");
    TU_OK(ps_config_load(&c, p));
    TU_CHECK(c.data.n_modalities == 2 && c.data.modalities[0] == PS_CFG_MOD_OMICS && c.data.modalities[1] == PS_CFG_MOD_SLIDES,
             "modalities");
    TU_CHECK(!strcmp(c.data.path, "co:hort \"x\".h5"), "path '%s'", c.data.path);
    TU_CHECK(c.model.n_cnn_channels == 2 && c.model.cnn_channels[1] == 16, "channels");
    TU_CHECK(c.optim.lr == 3e-4 && c.optim.nesterov && c.train.seed == 123456789012LL, "scalars");
    TU_CHECK(c.train.epochs == 20, "default kept");
    TU_OK(ps_config_set(&c, "train.epochs=7"));
    TU_OK(ps_config_set(&c, "model.cnn_channels=[4, 8, 12]"));
    TU_OK(ps_config_set(&c, "data.modalities=clinical"));
    TU_CHECK(c.train.epochs == 7 && c.model.n_cnn_channels == 3 && c.data.n_modalities == 1, "overrides");
    char *text = ps_config_to_string(&c);
    const char *q = write_yaml("resolved.yaml", text);
    free(text);
    ps_config_defaults(&d);
    TU_OK(ps_config_load(&d, q));
    memcpy(d.source, c.source, sizeof d.source);
    TU_CHECK(memcmp(&c, &d, sizeof c) == 0, "printed config does not load back to the same values");
  }

  // Edit distance sanity.
  TU_CHECK(ps_config_edit_distance("kitten", "sitting") == 3, "levenshtein");
  TU_CHECK(ps_config_edit_distance("", "abc") == 3, "levenshtein empty");

  char cmd[300];
  snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
  if (system(cmd)) { /* best effort */ }
  return ps_tu_finish("launch_config");
}
