// Fuzzes the job-file parser: the input is the YAML text of a job; a job that
// parses is turned into its command line, as `soupkit run` does.
#include "fuzz_support.hpp"
#include "cli/job_file.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  soupkit::fuzz::expect_clean_outcome("fuzz-job.yaml", [&] {
    const auto job = soupkit::cli::parse_job(text, "fuzz-job.yaml");
    (void)job.args({"--quiet"});
  });
  return 0;
}
