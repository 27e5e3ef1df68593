#pragma once
// The `soupkit` sub-commands, registered in one list (commands.cpp): each
// with its name, one-line summary, usage, the options a job file's
// `parameters` may set, the mergekit merge_method names it answers to and
// its job-file translation. `soupkit --help`, `soupkit run --help` and the
// job-file parser are generated from the list.
#include "soupkit/parallel/communicator.hpp"

#include <boost/program_options/options_description.hpp>

#include <functional>
#include <string>
#include <vector>

namespace soupkit {
struct MergeMethodSpec;
struct MergeInputs;
}

namespace soupkit::cli {

using Args = std::vector<std::string>;
struct JobCommand;
class JobInput;

struct Command {
  std::string name;     // soupkit <name>
  std::string summary;  // one line, for soupkit --help
  std::string usage;    // after "usage: " in the command's --help (lines after the first start with spaces)
  // Parses `args` (the words after the command's name) and runs it; returns the exit status.
  std::function<int(const Communicator&, const Args&)> run;
  // The command's named options (not its positionals): what --help lists
  // and what a job file's `parameters` may set, checked by name.
  std::function<boost::program_options::options_description()> options = {};
  // Job files: the merge_method names this command answers to (none: not
  // reachable from a job file) and the translation of a job into its
  // command line (`job.merge_method()` says which name was used). A key it
  // does not read is an error naming it (job_file.cpp).
  std::vector<std::string> merge_methods = {};
  std::function<void(JobInput& job, JobCommand& out)> translate = {};
  // A merge method of the family instead reads the whole mergekit
  // configuration (mergekit_config.hpp) into its inputs, and runs them with
  // the options given after the job file.
  std::function<int(const Communicator&, const MergeInputs&, const Args&)> run_merge = {};
  const MergeMethodSpec* merge_spec = nullptr;
};

// Every command, in the order `soupkit --help` lists them.
const std::vector<Command>& commands();
// The command called `name`, or nullptr.
const Command* find_command(const std::string& name);
// The command a job's merge_method runs, or nullptr.
const Command* find_merge_method(const std::string& merge_method);
// Every merge_method name, sorted.
std::vector<std::string> merge_method_names();
// What `soupkit --help` prints.
std::string usage_text();

// The commands, one function each (cmd_<name>.cpp).
Command monosoup_command();
Command soup_command();
Command transplant_command();
Command convert_command();
Command inspect_command();
Command example_command();
Command run_command();
// The command of a merge method of the family (cmd_method.cpp).
Command method_command(const MergeMethodSpec& spec);

}  // namespace soupkit::cli
