#pragma once
// The user's evaluator for greedy soups: any shell command in which
// "{model}" stands for a checkpoint directory; it prints a score (higher is
// better) as the last line of its standard output.
#include "soupkit/file.hpp"

#include <string>

namespace soupkit {

// Checks that `command` names {model} (InputError otherwise).
void check_eval_command(const std::string& command);

// `command` with every {model} replaced by `model`, quoted for /bin/sh.
std::string substitute_model(const std::string& command, const fs::path& model);

// Parses an evaluator's standard output: the last non-empty line must be a
// finite number. nullopt-like failure is reported by throwing InputError with
// `describe` (what was run) and the output's tail.
double parse_score(const std::string& stdout_text, const std::string& stderr_text, const std::string& describe);

// Runs `command` (with {model} substituted) under /bin/sh -c, waits for it,
// and returns the score. A non-zero exit, a signal, or no number on the last
// line throws InputError showing the command and the tail of its stdout and
// stderr. Call on one rank only.
double run_evaluator(const std::string& command, const fs::path& model);

}  // namespace soupkit
