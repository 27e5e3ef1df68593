#include "commands.hpp"
#include "job_file.hpp"
#include "soupkit/methods/method_registry.hpp"
#include "soupkit/util/error.hpp"
#include "soupkit/util/log.hpp"

#include <fmt/ranges.h>

#include <algorithm>
#include <cstdio>

namespace soupkit::cli {
namespace {

constexpr const char* kUsage = "soupkit run JOB.yaml [OUT] [OPTION...]";

// The help names every merge_method a job may give, by the command it runs.
std::string help_text() {
  std::size_t width = 0;
  for (const auto& m : merge_method_names()) width = std::max(width, m.size());
  std::string text = fmt::format(
      "usage: {}\n\n"
      "Runs the merge a job file describes: a mergekit configuration (merge_method, base_model,\n"
      "models, parameters with gradients and filters, dtype, out_dtype, tokenizer_source) for the\n"
      "merge methods below, with soupkit's out_path, or the output given after the job file as\n"
      "mergekit-yaml takes it (OUT wins over out_path). Options after it are passed to the command,\n"
      "after the job's own. See docs/operations.md, docs/mergekit.md and jobs/.\n\n"
      "  {:<{}}  the command it runs (mergekit's methods take mergekit's parameters; for soupkit's own,\n"
      "  {:<{}}  `parameters` sets the command's options)\n",
      kUsage, "merge_method", width, "", width);
  for (const auto& c : commands())
    for (const auto& m : c.merge_methods) text += fmt::format("  {:<{}}  soupkit {}\n", m, width, c.name);
  return text;
}

// `soupkit run JOB [OPTION...]`: runs the command a job file describes;
// options after the job file are added to (and override) the job's own,
// e.g. --dry-run or --resume from an sbatch script.
int run(const Communicator& comm, const Args& args) {
  if (!args.empty() && (args[0] == "--help" || args[0] == "-h")) {
    if (comm.is_root()) std::fputs(help_text().c_str(), stdout);
    return 0;
  }
  // "soupkit run -- -job.yaml": `--` ends run's own options, so a job
  // file name may start with '-'.
  const bool ended = !args.empty() && args[0] == "--";
  const Args rest(args.begin() + (ended ? 1 : 0), args.end());
  SOUPKIT_INPUT_ERROR_IF(rest.empty(), "run: which job file? (soupkit run JOB.yaml)");
  const std::string& job_file = rest[0];
  const JobCommand job = read_job_file(job_file);
  // `soupkit run JOB OUT`, as mergekit-yaml takes its output.
  const bool positional_out = rest.size() > 1 && !rest[1].starts_with('-');
  Args overrides(rest.begin() + (positional_out ? 2 : 1), rest.end());
  const Command* command = find_command(job.command);
  SOUPKIT_ERROR_IF(!command, "internal: {}: no '{}' command for this job", job_file, job.command);
  try {
    if (job.merge) {
      MergeInputs in = *job.merge;
      in.job_name = job_file;
      if (positional_out) in.output = rest[1];
      SOUPKIT_INPUT_ERROR_IF(in.output.empty(), "where should the merge go? give it after the job file (soupkit run "
                             "{} OUT) or as out_path", job_file);
      return command->run_merge(comm, in, overrides);
    }
    if (positional_out) overrides.insert(overrides.begin(), {"--out", rest[1]});
    const auto command_line = job.args(overrides);
    log::debug("{}: soupkit {} {}", job_file, job.command, fmt::join(command_line, " "));
    return command->run(comm, command_line);
  } catch (const InputError& e) {
    // Option problems come from the job's keys: name the job file.
    throw InputError(fmt::format("{}: {}", job_file, e.what()));
  }
}

}  // namespace

Command run_command() {
  return {.name = "run",
          .summary = "run the merge a job file describes (mergekit-style keys; see jobs/ and 'soupkit run --help')",
          .usage = kUsage,
          .run = run};
}

}  // namespace soupkit::cli
