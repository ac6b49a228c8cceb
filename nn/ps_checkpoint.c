#include "ps_checkpoint.h"
#include "ps_h5.h"

#include <hdf5.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifndef PANSURV_VERSION
#define PANSURV_VERSION "unknown"
#endif

uint32_t ps_crc32(uint32_t crc, const void *data, size_t n) {
  static uint32_t table[256];
  static int ready = 0;
  if (!ready) { // benign race: every thread writes the same values
    for (uint32_t i = 0; i < 256; i++) {
      uint32_t c = i;
      for (int k = 0; k < 8; k++) c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
      table[i] = c;
    }
    ready = 1;
  }
  const uint8_t *p = data;
  crc = ~crc;
  for (size_t i = 0; i < n; i++) crc = table[(crc ^ p[i]) & 0xFF] ^ (crc >> 8);
  return ~crc;
}

static uint32_t crc_host(const ps_param_table *t);

// A host view of table t: t itself on the CPU, else a copy of its entries over a downloaded
// values arena (*buf, freed by the caller). Checkpoints of a CUDA model go through it, so the
// file bytes are those of a CPU model with the same values.
static ps_status host_view(const ps_param_table *t, ps_param_table *out, float **buf) {
  *out = *t;
  *buf = NULL;
  if (t->device == PS_CPU) return PS_OK;
  *buf = malloc(((size_t)t->total + 1) * sizeof(float));
  if (!*buf) PS_FAIL(PS_ERR_MEM, "checkpoint: out of memory staging %lld %s values", (long long)t->total, t->what);
  ps_status s = ps_param_table_download(t, *buf, false);
  if (s != PS_OK) {
    free(*buf);
    *buf = NULL;
    return s;
  }
  out->data = *buf;
  out->grad = NULL;
  out->device = PS_CPU;
  return PS_OK;
}

uint32_t ps_checkpoint_param_crc(const ps_param_table *t) {
  ps_param_table h;
  float *buf;
  if (host_view(t, &h, &buf) != PS_OK) return 0; // only a failed download of a CUDA table
  uint32_t crc = crc_host(&h);
  free(buf);
  return crc;
}

static uint32_t crc_host(const ps_param_table *t) {
  uint32_t crc = 0;
  for (int i = 0; i < t->count; i++) crc = ps_crc32(crc, t->data + t->p[i].offset, (size_t)t->p[i].numel * sizeof(float));
  return crc;
}

// ---- small HDF5 helpers (errors become ps_status; HDF5's own printing is silenced) ------------------
#define H5_OK(call, ...)                                                                                   \
  do {                                                                                                     \
    if ((call) < 0) {                                                                                      \
      st = ps_error_set(PS_ERR_HDF5, __FILE__, __LINE__, __VA_ARGS__);                                     \
      goto done;                                                                                           \
    }                                                                                                      \
  } while (0)

static herr_t write_dataset(hid_t grp, const char *name, const float *data, int ndim, const int64_t *shape) {
  hsize_t dims[PS_MAX_DIMS];
  for (int d = 0; d < ndim; d++) dims[d] = (hsize_t)shape[d];
  hid_t sp = H5Screate_simple(ndim, dims, NULL);
  hid_t ds = H5Dcreate2(grp, name, H5T_IEEE_F32LE, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  herr_t r = ds < 0 ? -1 : H5Dwrite(ds, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, data);
  if (ds >= 0) H5Dclose(ds);
  H5Sclose(sp);
  return r;
}

static ps_status write_table(hid_t file, const char *gname, const ps_param_table *t, const char *path) {
  ps_status st = PS_OK;
  hid_t g = H5Gcreate2(file, gname, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  char *order = NULL;
  H5_OK(g, "checkpoint %s: cannot create group %s", path, gname);
  size_t len = 1;
  for (int i = 0; i < t->count; i++) len += strlen(t->p[i].name) + 1;
  order = calloc(len, 1);
  if (!order) {
    st = ps_error_set(PS_ERR_MEM, __FILE__, __LINE__, "checkpoint %s: out of memory", path);
    goto done;
  }
  for (int i = 0; i < t->count; i++) {
    strcat(order, t->p[i].name);
    if (i + 1 < t->count) strcat(order, "\n");
    H5_OK(write_dataset(g, t->p[i].name, t->data + t->p[i].offset, t->p[i].ndim, t->p[i].shape),
          "checkpoint %s: cannot write %s/%s", path, gname, t->p[i].name);
  }
  H5_OK(ps_h5_write_attr_str(g, "order", order), "checkpoint %s: cannot write %s order", path, gname);
done:
  free(order);
  if (g >= 0) H5Gclose(g);
  return st;
}

ps_status ps_checkpoint_write(const char *path, ps_model *m, const ps_optim *opt, const ps_ckpt_state *state,
                              const ps_ckpt_blob *blobs, int nblobs, const char *config_text) {
  ps_status st = PS_OK;
  H5E_auto2_t efunc;
  void *edata;
  H5Eget_auto2(H5E_DEFAULT, &efunc, &edata);
  H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
  ps_param_table hpt, hbt;
  const ps_param_table *pt = &hpt, *bt = &hbt;
  float *pbuf = NULL, *bbuf = NULL, *om = NULL, *ov = NULL;
  hid_t f = -1, g = -1;
  if ((st = host_view(ps_model_params(m), &hpt, &pbuf)) != PS_OK) goto done;
  if ((st = host_view(ps_model_buffers(m), &hbt, &bbuf)) != PS_OK) goto done;
  if (opt) {
    om = malloc(((size_t)opt->n + 1) * sizeof(float));
    ov = malloc(((size_t)opt->n + 1) * sizeof(float));
    if (!om || !ov) {
      st = ps_error_set(PS_ERR_MEM, __FILE__, __LINE__, "checkpoint %s: out of memory staging the optimizer", path);
      goto done;
    }
    if ((st = ps_optim_download(opt, om, ov)) != PS_OK) goto done;
  }
  f = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
  if (f < 0) {
    st = ps_error_set(PS_ERR_IO, __FILE__, __LINE__, "checkpoint %s: cannot create the file", path);
    goto done;
  }
  H5_OK(ps_h5_write_attr_str(f, "magic", PS_CHECKPOINT_MAGIC), "checkpoint %s: cannot write magic", path);
  H5_OK(ps_h5_write_attr_i64(f, "format_version", PS_CHECKPOINT_VERSION), "checkpoint %s: cannot write version", path);
  H5_OK(ps_h5_write_attr_i64(f, "param_crc32", crc_host(pt)), "checkpoint %s: cannot write crc", path);
  H5_OK(ps_h5_write_attr_str(f, "pansurv_version", PANSURV_VERSION), "checkpoint %s: cannot write version", path);
  if ((st = write_table(f, "params", pt, path)) != PS_OK) goto done;
  if ((st = write_table(f, "buffers", bt, path)) != PS_OK) goto done;
  if (opt) {
    g = H5Gcreate2(f, "optimizer", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    H5_OK(g, "checkpoint %s: cannot create /optimizer", path);
    H5_OK(ps_h5_write_attr_str(g, "kind", ps_optim_kind_name(opt->cfg.kind)), "checkpoint %s: optimizer kind", path);
    H5_OK(ps_h5_write_attr_i64(g, "step", opt->step), "checkpoint %s: optimizer step", path);
    H5_OK(write_dataset(g, "m", om, 1, &opt->n), "checkpoint %s: cannot write /optimizer/m", path);
    H5_OK(write_dataset(g, "v", ov, 1, &opt->n), "checkpoint %s: cannot write /optimizer/v", path);
    H5Gclose(g);
    g = -1;
  }
  ps_ckpt_state zero = {0, 0, 0, 0};
  if (!state) state = &zero;
  g = H5Gcreate2(f, "state", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  H5_OK(g, "checkpoint %s: cannot create /state", path);
  H5_OK(ps_h5_write_attr_i64(g, "step", state->step), "checkpoint %s: /state step", path);
  H5_OK(ps_h5_write_attr_i64(g, "epoch", state->epoch), "checkpoint %s: /state epoch", path);
  H5_OK(ps_h5_write_attr_u64(g, "rng_seed", state->rng_seed), "checkpoint %s: /state rng_seed", path);
  H5_OK(ps_h5_write_attr_i64(g, "loader_position", state->loader_position), "checkpoint %s: /state loader", path);
  H5Gclose(g);
  g = H5Gcreate2(f, "normalization", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  H5_OK(g, "checkpoint %s: cannot create /normalization", path);
  for (int i = 0; i < nblobs; i++)
    H5_OK(write_dataset(g, blobs[i].name, blobs[i].data, 1, &blobs[i].n), "checkpoint %s: cannot write blob %s", path,
          blobs[i].name);
  H5Gclose(g);
  g = -1;
  {
    const char *txt = config_text ? config_text : "";
    size_t n = strlen(txt);
    hid_t t = H5Tcopy(H5T_C_S1);
    H5Tset_size(t, n ? n : 1);
    hid_t sp = H5Screate(H5S_SCALAR);
    hid_t ds = H5Dcreate2(f, "config", t, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    herr_t r = ds < 0 ? -1 : H5Dwrite(ds, t, H5S_ALL, H5S_ALL, H5P_DEFAULT, n ? txt : " ");
    if (ds >= 0) H5Dclose(ds);
    H5Sclose(sp);
    H5Tclose(t);
    H5_OK(r, "checkpoint %s: cannot write /config", path);
  }
  if (H5Fflush(f, H5F_SCOPE_GLOBAL) < 0)
    st = ps_error_set(PS_ERR_IO, __FILE__, __LINE__, "checkpoint %s: flush failed", path);
done:
  if (g >= 0) H5Gclose(g);
  if (f >= 0 && H5Fclose(f) < 0 && st == PS_OK)
    st = ps_error_set(PS_ERR_IO, __FILE__, __LINE__, "checkpoint %s: close failed (disk full?)", path);
  if (st != PS_OK && f >= 0) remove(path); // nothing half-written stays behind
  free(pbuf);
  free(bbuf);
  free(om);
  free(ov);
  H5Eset_auto2(H5E_DEFAULT, efunc, edata);
  return st;
}

// ---- reading --------------------------------------------------------------------------------------
static ps_status open_checked(const char *path, hid_t *out) {
  *out = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
  if (*out < 0) PS_FAIL(PS_ERR_IO, "checkpoint %s: cannot open (missing or not an HDF5 file)", path);
  char *magic = ps_h5_read_attr_str(*out, "magic");
  int64_t ver = -1;
  ps_h5_read_attr_i64(*out, "format_version", &ver);
  bool ok = magic && !strcmp(magic, PS_CHECKPOINT_MAGIC);
  free(magic);
  if (!ok) {
    H5Fclose(*out);
    PS_FAIL(PS_ERR_FORMAT, "checkpoint %s: no '%s' magic attribute: not a pansurv checkpoint", path,
            PS_CHECKPOINT_MAGIC);
  }
  if (ver != PS_CHECKPOINT_VERSION) {
    H5Fclose(*out);
    PS_FAIL(PS_ERR_FORMAT, "checkpoint %s: format version %lld, this build reads version %d (use a matching pansurv)",
            path, (long long)ver, PS_CHECKPOINT_VERSION);
  }
  return PS_OK;
}

// Reads dataset grp/name of exactly (ndim, shape) into out; *shape_msg describes a mismatch.
static ps_status read_param(hid_t grp, const char *gname, const char *name, int ndim, const int64_t *shape, float *out,
                            const char *path) {
  if (H5Lexists(grp, name, H5P_DEFAULT) <= 0)
    PS_FAIL(PS_ERR_FORMAT, "checkpoint %s: %s '%s' expected by the configured model is missing from the file", path,
            gname, name);
  hid_t ds = H5Dopen2(grp, name, H5P_DEFAULT);
  if (ds < 0) PS_FAIL(PS_ERR_HDF5, "checkpoint %s: cannot open %s/%s", path, gname, name);
  hid_t sp = H5Dget_space(ds);
  int fnd = H5Sget_simple_extent_ndims(sp);
  hsize_t dims[8] = {0};
  if (fnd > 0 && fnd <= 8) H5Sget_simple_extent_dims(sp, dims, NULL);
  H5Sclose(sp);
  bool same = fnd == ndim;
  for (int d = 0; same && d < ndim; d++) same = dims[d] == (hsize_t)shape[d];
  if (!same) {
    char e[96], fb[96];
    int64_t fs[8];
    for (int d = 0; d < fnd && d < 8; d++) fs[d] = (int64_t)dims[d];
    ps_param_shape_str(ndim, shape, e, sizeof e);
    ps_param_shape_str(fnd < 0 ? 0 : (fnd > 8 ? 8 : fnd), fs, fb, sizeof fb);
    H5Dclose(ds);
    PS_FAIL(PS_ERR_FORMAT, "checkpoint %s: %s '%s' has shape %s in the file, the configured model expects %s", path,
            gname, name, fb, e);
  }
  herr_t r = H5Dread(ds, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, out);
  H5Dclose(ds);
  if (r < 0) PS_FAIL(PS_ERR_HDF5, "checkpoint %s: cannot read %s/%s", path, gname, name);
  return PS_OK;
}

static int count_lines(const char *s) {
  if (!s || !*s) return 0;
  int n = 1;
  for (; *s; s++) n += *s == '\n';
  return n;
}

// Reads a whole table into `dst` (same layout as t). Extra entries in the file are an error too.
static ps_status read_table(hid_t f, const char *gname, const ps_param_table *t, float *dst, const char *path) {
  hid_t g = H5Gopen2(f, gname, H5P_DEFAULT);
  if (g < 0) PS_FAIL(PS_ERR_FORMAT, "checkpoint %s: group /%s missing", path, gname);
  ps_status st = PS_OK;
  for (int i = 0; i < t->count && st == PS_OK; i++)
    st = read_param(g, gname, t->p[i].name, t->p[i].ndim, t->p[i].shape, dst + t->p[i].offset, path);
  if (st == PS_OK) {
    char *order = ps_h5_read_attr_str(g, "order");
    int n = count_lines(order);
    if (n != t->count) {
      // Name the first entry of the file the model does not know.
      char extra[PS_PARAM_NAME_MAX] = "?";
      for (char *s = order, *e; s && *s; s = e ? e + 1 : NULL) {
        e = strchr(s, '\n');
        size_t l = e ? (size_t)(e - s) : strlen(s);
        char nm[PS_PARAM_NAME_MAX] = "";
        snprintf(nm, sizeof nm, "%.*s", (int)l, s);
        if (ps_param_find(t, nm) < 0) {
          snprintf(extra, sizeof extra, "%s", nm);
          break;
        }
        if (!e) break;
      }
      st = ps_error_set(PS_ERR_FORMAT, __FILE__, __LINE__,
                        "checkpoint %s: /%s holds %d entries, the configured model has %d (first unknown: '%s')", path,
                        gname, n, t->count, extra);
    }
    free(order);
  }
  H5Gclose(g);
  return st;
}

ps_status ps_checkpoint_read(const char *path, ps_model *m, ps_optim *opt, ps_ckpt_state *state) {
  H5E_auto2_t efunc;
  void *edata;
  H5Eget_auto2(H5E_DEFAULT, &efunc, &edata);
  H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
  ps_param_table *pt = ps_model_params(m), *bt = ps_model_buffers(m);
  hid_t f;
  ps_status st = open_checked(path, &f);
  if (st != PS_OK) {
    H5Eset_auto2(H5E_DEFAULT, efunc, edata);
    return st;
  }
  // Stage into scratch so that the model is untouched on failure.
  float *np = calloc((size_t)pt->total + 1, sizeof(float)), *nb = calloc((size_t)bt->total + 1, sizeof(float));
  float *om = NULL, *ov = NULL;
  int64_t ostep = 0;
  if (!np || !nb) {
    st = ps_error_set(PS_ERR_MEM, __FILE__, __LINE__, "checkpoint %s: out of memory", path);
    goto done;
  }
  if ((st = read_table(f, "params", pt, np, path)) != PS_OK) goto done;
  if ((st = read_table(f, "buffers", bt, nb, path)) != PS_OK) goto done;
  {
    int64_t crc = -1;
    ps_h5_read_attr_i64(f, "param_crc32", &crc);
    ps_param_table tmp = *pt;
    tmp.data = np;
    uint32_t have = crc_host(&tmp);
    if (crc < 0 || (uint32_t)crc != have) {
      st = ps_error_set(PS_ERR_FORMAT, __FILE__, __LINE__,
                        "checkpoint %s: parameter CRC-32 %08x does not match the stored %08x (file corrupted)", path,
                        have, (unsigned)crc);
      goto done;
    }
  }
  if (opt) {
    hid_t g = H5Lexists(f, "optimizer", H5P_DEFAULT) > 0 ? H5Gopen2(f, "optimizer", H5P_DEFAULT) : -1;
    if (g < 0) {
      st = ps_error_set(PS_ERR_FORMAT, __FILE__, __LINE__, "checkpoint %s: no /optimizer state to resume from", path);
      goto done;
    }
    char *kind = ps_h5_read_attr_str(g, "kind");
    bool same = kind && !strcmp(kind, ps_optim_kind_name(opt->cfg.kind));
    if (!same)
      st = ps_error_set(PS_ERR_FORMAT, __FILE__, __LINE__, "checkpoint %s: optimizer is '%s', the run uses '%s'", path,
                        kind ? kind : "?", ps_optim_kind_name(opt->cfg.kind));
    free(kind);
    om = calloc((size_t)opt->n + 1, sizeof(float));
    ov = calloc((size_t)opt->n + 1, sizeof(float));
    if (st == PS_OK && (!om || !ov)) st = ps_error_set(PS_ERR_MEM, __FILE__, __LINE__, "checkpoint: out of memory");
    if (st == PS_OK) st = read_param(g, "optimizer", "m", 1, &opt->n, om, path);
    if (st == PS_OK) st = read_param(g, "optimizer", "v", 1, &opt->n, ov, path);
    if (st == PS_OK && ps_h5_read_attr_i64(g, "step", &ostep) < 0)
      st = ps_error_set(PS_ERR_FORMAT, __FILE__, __LINE__, "checkpoint %s: /optimizer has no step", path);
    H5Gclose(g);
    if (st != PS_OK) goto done;
  }
  if (state) {
    hid_t g = H5Gopen2(f, "state", H5P_DEFAULT);
    int64_t seed = 0;
    if (g < 0 || ps_h5_read_attr_i64(g, "step", &state->step) < 0 || ps_h5_read_attr_i64(g, "epoch", &state->epoch) < 0 ||
        ps_h5_read_attr_i64(g, "loader_position", &state->loader_position) < 0 || ps_h5_read_attr_i64(g, "rng_seed", &seed) < 0)
      st = ps_error_set(PS_ERR_FORMAT, __FILE__, __LINE__, "checkpoint %s: /state incomplete", path);
    state->rng_seed = (uint64_t)seed;
    if (g >= 0) H5Gclose(g);
    if (st != PS_OK) goto done;
  }
  // Everything validated: install (uploads on a CUDA model; a failing copy there is a device fault).
  if ((st = ps_param_table_upload(pt, np)) != PS_OK) goto done;
  if ((st = ps_param_table_upload(bt, nb)) != PS_OK) goto done;
  if (opt) {
    if ((st = ps_optim_upload(opt, om, ov)) != PS_OK) goto done;
    opt->step = ostep;
  }
done:
  free(np);
  free(nb);
  free(om);
  free(ov);
  H5Fclose(f);
  H5Eset_auto2(H5E_DEFAULT, efunc, edata);
  return st;
}

ps_status ps_checkpoint_verify(const char *path, uint32_t *crc_out) {
  H5E_auto2_t efunc;
  void *edata;
  H5Eget_auto2(H5E_DEFAULT, &efunc, &edata);
  H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
  hid_t f;
  ps_status st = open_checked(path, &f);
  if (st != PS_OK) {
    H5Eset_auto2(H5E_DEFAULT, efunc, edata);
    return st;
  }
  hid_t g = H5Gopen2(f, "params", H5P_DEFAULT);
  char *order = g >= 0 ? ps_h5_read_attr_str(g, "order") : NULL;
  uint32_t crc = 0;
  float *buf = NULL;
  if (!order) {
    st = ps_error_set(PS_ERR_FORMAT, __FILE__, __LINE__, "checkpoint %s: /params or its 'order' attribute missing", path);
    goto done;
  }
  for (char *s = order, *e; *s; s = e + 1) {
    e = strchr(s, '\n');
    if (e) *e = 0;
    hid_t ds = H5Dopen2(g, s, H5P_DEFAULT);
    if (ds < 0) {
      st = ps_error_set(PS_ERR_FORMAT, __FILE__, __LINE__, "checkpoint %s: /params/%s listed but missing", path, s);
      goto done;
    }
    hid_t sp = H5Dget_space(ds);
    hssize_t n = H5Sget_simple_extent_npoints(sp);
    H5Sclose(sp);
    float *nbuf = realloc(buf, (size_t)(n > 0 ? n : 1) * sizeof(float));
    if (!nbuf || H5Dread(ds, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, nbuf) < 0) {
      if (nbuf) buf = nbuf;
      H5Dclose(ds);
      st = ps_error_set(PS_ERR_HDF5, __FILE__, __LINE__, "checkpoint %s: cannot read /params/%s", path, s);
      goto done;
    }
    buf = nbuf;
    H5Dclose(ds);
    crc = ps_crc32(crc, buf, (size_t)n * sizeof(float));
    if (!e) break;
  }
  {
    int64_t stored = -1;
    ps_h5_read_attr_i64(f, "param_crc32", &stored);
    if (stored < 0 || (uint32_t)stored != crc)
      st = ps_error_set(PS_ERR_FORMAT, __FILE__, __LINE__,
                        "checkpoint %s: parameter CRC-32 %08x does not match the stored %08x (file corrupted)", path,
                        crc, (unsigned)stored);
  }
  if (crc_out) *crc_out = crc;
done:
  free(order);
  free(buf);
  if (g >= 0) H5Gclose(g);
  H5Fclose(f);
  H5Eset_auto2(H5E_DEFAULT, efunc, edata);
  return st;
}

ps_status ps_checkpoint_read_blob(const char *path, const char *name, float *out, int64_t n) {
  H5E_auto2_t efunc;
  void *edata;
  H5Eget_auto2(H5E_DEFAULT, &efunc, &edata);
  H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
  hid_t f;
  ps_status st = open_checked(path, &f);
  if (st == PS_OK) {
    hid_t g = H5Gopen2(f, "normalization", H5P_DEFAULT);
    st = g < 0 ? ps_error_set(PS_ERR_FORMAT, __FILE__, __LINE__, "checkpoint %s: /normalization missing", path)
               : read_param(g, "normalization", name, 1, &n, out, path);
    if (g >= 0) H5Gclose(g);
    H5Fclose(f);
  }
  H5Eset_auto2(H5E_DEFAULT, efunc, edata);
  return st;
}

ps_status ps_checkpoint_read_config(const char *path, char **text) {
  *text = NULL;
  H5E_auto2_t efunc;
  void *edata;
  H5Eget_auto2(H5E_DEFAULT, &efunc, &edata);
  H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
  hid_t f;
  ps_status st = open_checked(path, &f);
  if (st == PS_OK) {
    hid_t ds = H5Dopen2(f, "config", H5P_DEFAULT);
    if (ds < 0) {
      st = ps_error_set(PS_ERR_FORMAT, __FILE__, __LINE__, "checkpoint %s: /config missing", path);
    } else {
      hid_t ft = H5Dget_type(ds);
      size_t n = H5Tget_size(ft);
      hid_t mt = H5Tcopy(H5T_C_S1);
      H5Tset_size(mt, n + 1);
      *text = calloc(n + 2, 1);
      if (!*text || H5Dread(ds, mt, H5S_ALL, H5S_ALL, H5P_DEFAULT, *text) < 0) {
        free(*text);
        *text = NULL;
        st = ps_error_set(PS_ERR_HDF5, __FILE__, __LINE__, "checkpoint %s: cannot read /config", path);
      }
      H5Tclose(mt);
      H5Tclose(ft);
      H5Dclose(ds);
    }
    H5Fclose(f);
  }
  H5Eset_auto2(H5E_DEFAULT, efunc, edata);
  return st;
}
