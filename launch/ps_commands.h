// The subcommands of the pansurv binary. Each returns the process exit code.
#ifndef PS_COMMANDS_H
#define PS_COMMANDS_H

typedef struct {
  const char *name;
  int (*run)(int argc, char **argv); // argv[0] is the subcommand name
  const char *summary;
} ps_command;

int ps_cmd_bench(int argc, char **argv);
int ps_cmd_sim(int argc, char **argv);
int ps_cmd_check(int argc, char **argv);
int ps_cmd_prep(int argc, char **argv);

// Prints "pansurv <cmd>: <message>" to stderr and returns the exit code for s.
int ps_report_error(const char *cmd, int status);

#endif
