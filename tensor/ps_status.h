// ps_status: status codes and error messages shared by every module.
// Library code returns a ps_status and records a message with file:line;
// only launch/ prints it and decides the exit code.
#ifndef PS_STATUS_H
#define PS_STATUS_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
  PS_OK = 0,
  PS_ERR_ARG,         // bad argument from the caller (shapes, sizes, flags)
  PS_ERR_IO,          // file missing, unreadable, short write
  PS_ERR_FORMAT,      // file exists but its contents are not what was expected
  PS_ERR_DATA,        // valid file, invalid values (negative time, NaN, ...)
  PS_ERR_CONFIG,      // configuration error
  PS_ERR_MEM,         // allocation failed / arena exhausted
  PS_ERR_MPI,         // MPI call failed
  PS_ERR_HDF5,        // HDF5 call failed
  PS_ERR_CUDA,        // CUDA / cuBLAS / NCCL call failed
  PS_ERR_UNSUPPORTED, // feature not built in or not available on this device
  PS_ERR_NUMERIC,     // non-finite value, no convergence, singular matrix
  PS_ERR_INTERRUPTED, // stopped by a signal (checkpoint written)
  PS_ERR_INTERNAL,    // a bug: an invariant failed
  PS_STATUS_COUNT
} ps_status;

const char *ps_status_name(ps_status s);

// Records a message for the calling thread (overwrites the previous one) and returns s.
ps_status ps_error_set(ps_status s, const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
// Prepends context ("while loading X: ") to the current message; returns s.
ps_status ps_error_wrap(ps_status s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
const char *ps_error_message(void); // "" when none
void ps_error_clear(void);

#ifdef __cplusplus
}
#endif

// Return s with a formatted message carrying file:line.
#define PS_FAIL(s, ...) return ps_error_set((s), __FILE__, __LINE__, __VA_ARGS__)
// Propagate a failing status unchanged.
#define PS_TRY(expr)                                                                               \
  do {                                                                                             \
    ps_status ps_try_s_ = (expr);                                                                  \
    if (ps_try_s_ != PS_OK) return ps_try_s_;                                                      \
  } while (0)
// Fail with PS_ERR_ARG when a precondition does not hold.
#define PS_REQUIRE(cond, ...)                                                                      \
  do {                                                                                             \
    if (!(cond)) PS_FAIL(PS_ERR_ARG, __VA_ARGS__);                                                 \
  } while (0)

// One generator for checking foreign calls (MPI, HDF5, CUDA, cuBLAS, NCCL):
// `ok` is an expression of the result `r`, `describe(r)` returns a string.
#define PS_CHECK_GEN(call, rtype, ok, status, describe)                                            \
  do {                                                                                             \
    rtype r = (call);                                                                              \
    if (!(ok)) return ps_error_set((status), __FILE__, __LINE__, "%s failed: %s", #call, describe); \
  } while (0)

#endif
