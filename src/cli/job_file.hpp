#pragma once
// Job files: a whole merge described in YAML, run with `soupkit run JOB`.
// Keys follow mergekit's config where the concept is the same
// (merge_method, base_model, models[].model, models[].parameters.weight,
// parameters, dtype, out_dtype, tokenizer_source); a job becomes the
// equivalent command line of one soupkit command, so a job file and a
// command line can never disagree. See docs/operations.md.
#include <filesystem>
#include <string>
#include <vector>

namespace soupkit::cli {

struct JobCommand {
  std::string command;            // "monosoup", "soup", "transplant", "convert"
  std::vector<std::string> args;  // its arguments, as on a command line
};

// Reads and translates a job file. Throws InputError naming the file, the
// key and the problem.
JobCommand read_job_file(const std::filesystem::path& path);
// The same from YAML text (`source` names it in errors).
JobCommand parse_job(const std::string& yaml_text, const std::string& source);

}  // namespace soupkit::cli
