#pragma once
// The user's evaluator for greedy soups: any shell command in which
// "{model}" stands for a checkpoint directory; it prints a score (higher is
// better) as the last line of its standard output.
#include "soupkit/io/file.hpp"

#include <csignal>
#include <string>

namespace soupkit {

// Checks that `command` names {model} (InputError otherwise).
void check_eval_command(const std::string& command);

// Is a {model} of `command` inside single or double quotes (as /bin/sh
// reads it)? The substitution is already quoted: quoting it again lets a
// crafted path escape. warn_if_placeholder_quoted logs a warning if so.
bool placeholder_inside_quotes(const std::string& command);
void warn_if_placeholder_quoted(const std::string& command);

// While one exists, SIGTERM and SIGINT do not kill soupkit: they are
// forwarded to the running evaluator's process group (which gets a few
// seconds, then SIGKILL), and run_evaluator then throws, so the caller can
// clean up and exit with one message. The previous handlers come back on
// destruction.
class TerminationGuard {
 public:
  TerminationGuard();
  ~TerminationGuard();
  TerminationGuard(const TerminationGuard&) = delete;
  TerminationGuard& operator=(const TerminationGuard&) = delete;

 private:
  struct sigaction previous_term_ {}, previous_int_ {};
};

// "interrupted by signal N (SIGTERM) <during>" if a TerminationGuard caught
// a signal, else empty; throw_if_terminated throws it as an Error.
std::string termination_message(const std::string& during);
void throw_if_terminated(const std::string& during);

// `command` with every {model} replaced by `model`, quoted for /bin/sh.
std::string substitute_model(const std::string& command, const fs::path& model);

// Parses an evaluator's standard output: the last non-empty line must be a
// finite number. nullopt-like failure is reported by throwing InputError with
// `describe` (what was run) and the output's tail.
double parse_score(const std::string& stdout_text, const std::string& stderr_text, const std::string& describe);

// Runs `command` (with {model} substituted) under /bin/sh -c, waits for it,
// and returns the score. A non-zero exit, a signal, or no number on the last
// line throws InputError showing the command and the tail of its stdout and
// stderr. Only the last 64 KiB of each stream are kept (memory stays
// bounded however much the evaluator prints). Call on one rank only. The evaluator runs in its own process
// group; see TerminationGuard.
double run_evaluator(const std::string& command, const fs::path& model);

}  // namespace soupkit
