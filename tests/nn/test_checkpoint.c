// Checkpoints: save -> load -> bitwise-identical forward; verify (CRC) without a model; a shape
// mismatch names the parameter, the file's shape and the expected one; corruption is detected;
// a failed write leaves nothing behind; optimizer state, run state, blobs and config round-trip.
#include <hdf5.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ps_checkpoint.h"
#include "testutil.h"

enum { B = 4, K = 3 };

static void small_config(ps_model_config *c, uint64_t seed) {
  ps_model_config_default(c);
  c->d = 8, c->genes = 10, c->ae_hidden = 8, c->tile_size = 8, c->max_tiles = K;
  c->cnn_ch[0] = 4, c->cnn_ch[1] = 6, c->cnn_ch[2] = 8, c->attn_hidden = 5, c->clinical = 4, c->clinical_hidden = 6;
  c->heads = 2, c->ff_hidden = 12, c->seed = seed;
}

int main(void) {
  uint64_t seed = ps_tu_seed("nn_checkpoint", 11);
  char path[256], bad[256];
  snprintf(path, sizeof path, "/tmp/ps_nn_ckpt_%d.h5", (int)getpid());
  snprintf(bad, sizeof bad, "/tmp/ps_nn_no_such_dir_%d/x.h5", (int)getpid());
  ps_model_config cfg;
  small_config(&cfg, seed);
  ps_model *a, *b;
  TU_OK(ps_model_create(&a, &cfg));
  TU_OK(ps_model_plan(a, B));
  static float omics[B * 10], clin[B * 4], tiles[B * K * 192];
  ps_tu_fill_uniform(omics, B * 10, -1, 1, seed, 1);
  ps_tu_fill_uniform(clin, B * 4, -1, 1, seed, 2);
  ps_tu_fill_uniform(tiles, B * K * 192, 0, 1, seed, 3);
  int64_t pid[B] = {1, 2, 3, 4};
  uint8_t op[B] = {1, 0, 1, 1}, cp[B] = {1, 1, 0, 1};
  int32_t tc[B] = {3, 1, 2, 0};
  ps_model_batch in = {B, pid, omics, op, clin, cp, tiles, NULL, tc, 0};
  float eta_a[B], eta_b[B], deta[B] = {0.1f, -0.2f, 0.3f, 0.05f};
  double rec;
  // A training step so that BN running statistics and the optimizer state are non-trivial.
  ps_optim_config oc;
  ps_optim_config_default(&oc);
  ps_optim opt, opt2;
  TU_OK(ps_optim_create(&opt, &oc, ps_model_params(a)));
  ps_param_zero_grad(ps_model_params(a));
  TU_OK(ps_model_forward(a, eta_a, &rec, &in, true, 0));
  TU_OK(ps_model_backward(a, deta, 0.1f, NULL, NULL));
  TU_OK(ps_optim_step(&opt, ps_model_params(a)->data, ps_model_params(a)->grad, NULL));
  float blob[3] = {1.5f, -2.0f, 3.25f};
  ps_ckpt_blob blobs[1] = {{"omics_mean", blob, 3}};
  ps_ckpt_state st = {17, 3, 99, 1234};
  char text[2048];
  ps_model_config_text(&cfg, text, sizeof text);
  TU_OK(ps_checkpoint_write(path, a, &opt, &st, blobs, 1, text));
  uint32_t crc = 0;
  TU_OK(ps_checkpoint_verify(path, &crc));
  TU_CHECK(crc == ps_checkpoint_param_crc(ps_model_params(a)), "verify crc %08x vs model %08x", crc,
           ps_checkpoint_param_crc(ps_model_params(a)));
  // Load into a differently initialized model: identical forward, bit for bit (eval and train).
  // (Same config: its seed also keys dropout; the parameters are re-drawn from another seed.)
  TU_OK(ps_model_create(&b, &cfg));
  ps_param_table_init_values(ps_model_params(b), seed + 1000);
  TU_OK(ps_model_plan(b, B));
  TU_OK(ps_optim_create(&opt2, &oc, ps_model_params(b)));
  ps_ckpt_state st2;
  TU_OK(ps_checkpoint_read(path, b, &opt2, &st2));
  TU_CHECK(st2.step == 17 && st2.epoch == 3 && st2.rng_seed == 99 && st2.loader_position == 1234, "state round trip");
  TU_CHECK(opt2.step == 1 && !memcmp(opt2.m, opt.m, sizeof(float) * (size_t)opt.n) &&
               !memcmp(opt2.v, opt.v, sizeof(float) * (size_t)opt.n),
           "optimizer state round trip");
  TU_CHECK(!memcmp(ps_model_buffers(a)->data, ps_model_buffers(b)->data,
                   sizeof(float) * (size_t)ps_model_buffers(a)->total),
           "BN running statistics round trip");
  for (int training = 0; training < 2; training++) {
    TU_OK(ps_model_forward(a, eta_a, &rec, &in, training, 5));
    TU_OK(ps_model_forward(b, eta_b, &rec, &in, training, 5));
    TU_CHECK(!memcmp(eta_a, eta_b, sizeof eta_a), "forward (%s) differs after load: %.9g vs %.9g",
             training ? "train" : "eval", eta_a[0], eta_b[0]);
  }
  float blob2[3];
  TU_OK(ps_checkpoint_read_blob(path, "omics_mean", blob2, 3));
  TU_CHECK(!memcmp(blob, blob2, sizeof blob), "blob round trip");
  char *t2;
  TU_OK(ps_checkpoint_read_config(path, &t2));
  TU_CHECK(!strcmp(t2, text), "config text round trip");
  free(t2);
  // Shape mismatch: the precise message.
  ps_model_config cfg3 = cfg;
  cfg3.cnn_ch[0] = 5;
  ps_model *c3;
  TU_OK(ps_model_create(&c3, &cfg3));
  float before = ps_model_params(c3)->data[0];
  ps_status s = ps_checkpoint_read(path, c3, NULL, NULL);
  printf("  mismatch message: %s\n", ps_error_message());
  TU_CHECK(s == PS_ERR_FORMAT &&
               strstr(ps_error_message(), "'slide.conv1.weight' has shape (4, 3, 3, 3) in the file, the configured "
                                          "model expects (5, 3, 3, 3)"),
           "mismatch: %s", ps_error_message());
  TU_CHECK(ps_model_params(c3)->data[0] == before, "failed load modified the model");
  ps_model_destroy(c3);
  // A model without clinical: the file's extra entries are named.
  cfg3 = cfg;
  cfg3.use[PS_NN_CLINICAL] = false;
  TU_OK(ps_model_create(&c3, &cfg3));
  s = ps_checkpoint_read(path, c3, NULL, NULL);
  printf("  extra-entries message: %s\n", ps_error_message());
  TU_CHECK(s == PS_ERR_FORMAT && strstr(ps_error_message(), "'fusion.modality_embedding' has shape (3, 8)"),
           "modality mismatch: %s", ps_error_message());
  ps_model_destroy(c3);
  // Corruption: change one stored parameter value; verify and read both refuse.
  {
    hid_t f = H5Fopen(path, H5F_ACC_RDWR, H5P_DEFAULT);
    hid_t ds = H5Dopen2(f, "params/head.bias", H5P_DEFAULT);
    float v = 12345.0f;
    TU_CHECK(ds >= 0 && H5Dwrite(ds, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, &v) >= 0, "corrupting");
    H5Dclose(ds);
    H5Fclose(f);
  }
  s = ps_checkpoint_verify(path, NULL);
  TU_CHECK(s == PS_ERR_FORMAT && strstr(ps_error_message(), "CRC-32"), "corrupt verify: %s", ps_error_message());
  s = ps_checkpoint_read(path, b, NULL, NULL);
  TU_CHECK(s == PS_ERR_FORMAT && strstr(ps_error_message(), "CRC-32"), "corrupt read: %s", ps_error_message());
  // Missing file, not a checkpoint, unwritable path.
  s = ps_checkpoint_verify("/tmp/ps_nn_definitely_missing.h5", NULL);
  TU_CHECK(s == PS_ERR_IO, "missing file: %s", ps_status_name(s));
  s = ps_checkpoint_write(bad, a, NULL, NULL, NULL, 0, NULL);
  TU_CHECK(s == PS_ERR_IO && access(bad, F_OK) != 0, "unwritable path: %s", ps_status_name(s));
  remove(path);
  ps_optim_free(&opt);
  ps_optim_free(&opt2);
  ps_model_destroy(a);
  ps_model_destroy(b);
  return ps_tu_finish("nn_checkpoint");
}
