// ps_signal: graceful stop on SIGUSR1 / SIGTERM / SIGINT. The first signal
// only sets a flag; the training loop finishes its step, agrees with the other
// ranks (all-reduce of the flag), writes a checkpoint and exits with
// PS_EXIT_PREEMPTED. A second SIGTERM or SIGINT exits at once with 128+signal.
#ifndef PS_SIGNAL_H
#define PS_SIGNAL_H

enum {
  PS_EXIT_OK = 0,
  PS_EXIT_ERROR = 1,
  PS_EXIT_USAGE = 2,
  PS_EXIT_PREEMPTED = 3, // stopped by a signal after writing a checkpoint; resume with --resume auto
};

void ps_signal_install(void);
// The first stop signal received (0: none).
int ps_signal_pending(void);
// For tests: pretend `sig` arrived.
void ps_signal_raise_flag(int sig);

#endif
