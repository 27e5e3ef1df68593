#pragma once
// Job files: a whole merge described in YAML, run with `soupkit run JOB`.
// Keys follow mergekit's config where the concept is the same
// (merge_method, base_model, models[].model, models[].parameters.weight,
// parameters, dtype, out_dtype, tokenizer_source); a job becomes the
// equivalent command line of one soupkit command, so a job file and a
// command line can never disagree. See docs/operations.md.
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

namespace soupkit::cli {

struct JobCommand {
  std::string command;                  // "monosoup", "soup", "transplant", "convert"
  std::vector<std::string> positional;  // e.g. soup's mode and ingredients
  // --name [value], in the job's order (a flag has no value).
  std::vector<std::pair<std::string, std::optional<std::string>>> options;

  void option(const std::string& name, std::optional<std::string> value = std::nullopt);
  // The command line: positionals, the job's options, then `overrides`
  // (options given after the job file), which replace job options of the
  // same name.
  std::vector<std::string> args(const std::vector<std::string>& overrides = {}) const;
};

// Reads and translates a job file. Throws InputError naming the file, the
// key and the problem.
JobCommand read_job_file(const std::filesystem::path& path);
// The same from YAML text (`source` names it in errors).
JobCommand parse_job(const std::string& yaml_text, const std::string& source);

}  // namespace soupkit::cli
