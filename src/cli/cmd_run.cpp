#include "commands.hpp"
#include "job_file.hpp"
#include "soupkit/util/error.hpp"
#include "soupkit/util/log.hpp"

#include <fmt/ranges.h>

#include <cstdio>

namespace soupkit::cli {

// `soupkit run JOB [OPTION...]`: runs the command a job file describes;
// options after the job file are added to (and override) the job's own,
// e.g. --dry-run or --resume from an sbatch script.
int cmd_run(const Communicator& comm, const Args& args) {
  if (!args.empty() && (args[0] == "--help" || args[0] == "-h")) {
    if (comm.is_root())
      std::puts("usage: soupkit run JOB.yaml [OPTION...]\n\n"
                "Runs the merge a job file describes (keys as in mergekit: merge_method, base_model, models,\n"
                "parameters, dtype, out_dtype, tokenizer_source; plus out_path). Options after the job file\n"
                "are passed to the command, after the job's own. See docs/operations.md and jobs/.");
    return 0;
  }
  // "soupkit run -- -job.yaml": `--` ends run's own options, so a job
  // file name may start with '-'.
  const bool ended = !args.empty() && args[0] == "--";
  const Args rest(args.begin() + (ended ? 1 : 0), args.end());
  SOUPKIT_INPUT_ERROR_IF(rest.empty(), "run: which job file? (soupkit run JOB.yaml)");
  const std::string& job_file = rest[0];
  const JobCommand job = read_job_file(job_file);
  const auto command_line = job.args({rest.begin() + 1, rest.end()});
  const CommandFunction* command = find_command(job.command);
  SOUPKIT_INPUT_ERROR_IF(!command, "{}: this build of soupkit has no '{}' command", job_file, job.command);
  log::debug("{}: soupkit {} {}", job_file, job.command, fmt::join(command_line, " "));
  try {
    return (*command)(comm, command_line);
  } catch (const InputError& e) {
    // Option problems come from the job's keys: name the job file.
    throw InputError(fmt::format("{}: {}", job_file, e.what()));
  }
}

}  // namespace soupkit::cli
