// ps_ckpt_files: atomic checkpoint files in one directory, whatever writes
// their contents. A checkpoint is written under a temporary name in the same
// directory, fsync'ed, renamed over its final name and the directory fsync'ed,
// so a crash leaves either the old set or the new file, never a half file
// under a final name. Names: ckpt-<step, 10 digits>.h5 (the last `keep` are
// kept) and best.h5. Validity is decided by a verify function (the model's
// checkpoint module: magic, version, checksum).
#ifndef PS_CKPT_FILES_H
#define PS_CKPT_FILES_H

#include <stdint.h>

#include "ps_status.h"

enum { PS_CKPT_PATH_MAX = 4096 };

// Writes the whole file at `tmp_path` (the callee creates it); returns PS_OK.
typedef ps_status (*ps_ckpt_write_fn)(const char *tmp_path, void *ctx);
// PS_OK when the file at `path` is a complete, uncorrupted checkpoint
// (otherwise a status with a message saying what is wrong).
typedef ps_status (*ps_ckpt_verify_fn)(const char *path, void *ctx);

// Creates `dir` and its parents (mode 0755) if needed.
ps_status ps_ckpt_mkdirs(const char *dir);

// Atomically writes `dir/name` through `write`. `name` is a plain file name.
ps_status ps_ckpt_write_atomic(const char *dir, const char *name, ps_ckpt_write_fn write, void *ctx);

// ckpt-<step>.h5 atomically, then deletes the oldest step checkpoints beyond `keep`.
ps_status ps_ckpt_save_step(const char *dir, int64_t step, int keep, ps_ckpt_write_fn write, void *ctx,
                            char *out_path);

// Step checkpoints in `dir`, newest first (paths into caller arrays).
ps_status ps_ckpt_list(const char *dir, char (*paths)[PS_CKPT_PATH_MAX], int64_t *steps, int max, int *count);

// `--resume auto`: the newest checkpoint that verifies. Each one skipped is
// reported through `note` (e.g. printed by rank 0). *found = 0 when the
// directory has no valid checkpoint (or does not exist): start fresh.
typedef void (*ps_ckpt_note_fn)(const char *msg, void *ctx);
ps_status ps_ckpt_find_latest_valid(const char *dir, ps_ckpt_verify_fn verify, void *vctx, ps_ckpt_note_fn note,
                                    void *nctx, char *out_path, int *found);

// Removes leftover temporary files (from a crash during a write).
ps_status ps_ckpt_clean_temps(const char *dir);

#endif
