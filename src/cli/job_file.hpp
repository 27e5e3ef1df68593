#pragma once
// Job files: a whole merge described in YAML, run with `soupkit run JOB`.
// Keys follow mergekit's config where the concept is the same
// (merge_method, base_model, models[].model, models[].parameters.<name>,
// parameters, dtype, out_dtype, tokenizer_source); a job becomes the
// equivalent command line of one soupkit command, so a job file and a
// command line can never disagree. The command comes from the registry
// (commands.hpp) by merge_method, and its own translation (in its
// cmd_*.cpp) reads the keys it takes; any key it does not read, and any
// `parameters` entry that is not one of its options, is an error naming
// it. See docs/operations.md.
#include <filesystem>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace YAML {
class Node;
}

namespace soupkit {
struct MergeInputs;
}

namespace soupkit::cli {

struct JobCommand {
  std::string command;                  // a registered command's name
  std::vector<std::string> positional;  // e.g. soup's mode and ingredients
  // --name [value], in the job's order (a flag has no value).
  std::vector<std::pair<std::string, std::optional<std::string>>> options;
  // A merge method of the family: the configuration read into its inputs
  // (mergekit_config.hpp); positional and options are then empty.
  std::shared_ptr<const MergeInputs> merge;

  void option(const std::string& name, std::optional<std::string> value = std::nullopt);
  bool has_option(std::string_view name) const;
  // The command line: positionals, the job's options, then `overrides`
  // (options given after the job file), which replace job options of the
  // same name.
  std::vector<std::string> args(const std::vector<std::string>& overrides = {}) const;
};

// A single value a job file gave, with where it was for messages.
struct JobValue {
  std::string text;
  std::string key;   // "base_model", "models[1].parameters.weight"
  std::string line;  // "line 7" (empty when YAML gave no position)
};

struct JobModel {
  std::string path;
  std::string key;                                           // "models[1]"
  std::vector<std::pair<std::string, JobValue>> parameters;  // models[i].parameters, in the job's order
};

// A job file's keys, read and checked for form (single values, names,
// dtypes, a non-empty out_path) but not yet interpreted. A translation
// reads the keys its command takes through these accessors, which mark them
// read; check_all_read() then refuses, by name, every key given and left
// unread, so nothing in a job is silently dropped. `parameters` is not here:
// it is checked against the command's options (job_file.cpp).
class JobInput {
 public:
  // Reads the job's keys (all but merge_method and parameters) from its
  // top-level YAML mapping.
  static JobInput read(const YAML::Node& job, const std::string& source, const std::string& merge_method);

  const std::string& source() const { return source_; }
  const std::string& merge_method() const { return merge_method_; }

  const std::optional<JobValue>& base_model() { return take("base_model", base_model_); }
  const std::optional<JobValue>& tokenizer_source() { return take("tokenizer_source", tokenizer_source_); }
  const std::optional<JobValue>& out_path() { return take("out_path", out_path_); }
  const std::optional<JobValue>& out_dtype() { return take("out_dtype", out_dtype_); }  // F64, F32, F16 or BF16
  // mergekit's compute dtype, F32 or F64 (others are refused when read).
  // Every command satisfies either (soupkit never computes below float32),
  // so it counts as read even when its command does not use it.
  const std::optional<JobValue>& dtype() const { return dtype_; }
  // The models (none when the key is absent); their parameters stay unread.
  const std::vector<JobModel>& models();
  // models[i].parameters.<name>, or nullptr when not given.
  const JobValue* model_parameter(std::size_t i, std::string_view name);

  // InputError "<source>: merge_method <m> needs <what>" unless `ok`.
  void need(bool ok, std::string_view what) const;
  // InputError "<source>: <key>: <problem> (<line>)" (no line when YAML gave none).
  [[noreturn]] void refuse(const JobValue& value, std::string_view problem) const;
  // --out OUT and --out-dtype D from out_path and out_dtype, as most commands take them.
  void add_output_options(JobCommand& out);
  // After the translation: InputError naming the first key given and not read.
  void check_all_read() const;

 private:
  const std::optional<JobValue>& take(const char* key, const std::optional<JobValue>& value) {
    read_.insert(key);
    return value;
  }

  std::string source_, merge_method_;
  std::optional<JobValue> base_model_, tokenizer_source_, out_path_, out_dtype_, dtype_;
  std::optional<std::vector<JobModel>> models_;
  std::string models_line_;
  std::set<std::string> read_;  // top-level keys, and "models[i].parameters.<name>"
};

// Reads and translates a job file. Throws InputError naming the file, the
// key and the problem.
JobCommand read_job_file(const std::filesystem::path& path);
// The same from YAML text (`source` names it in errors).
JobCommand parse_job(const std::string& yaml_text, const std::string& source);

}  // namespace soupkit::cli
