#pragma once
// What every fuzz target shares: a scratch directory of its own, writing the
// input to a file there, and the rule for outcomes. Returning, or throwing
// soupkit::Error whose message names the input, is a clean outcome (the CLI
// prints it and exits 1); any other exception, or a message that names no
// file, is a finding: the target aborts and libFuzzer saves the input.
#include "soupkit/util/error.hpp"
#include "soupkit/io/file.hpp"

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <fstream>
#include <string>
#include <string_view>

namespace soupkit::fuzz {

[[noreturn]] inline void finding(const char* what, const std::string& detail) {
  std::fprintf(stderr, "soupkit fuzz: %s: %s\n", what, detail.c_str());
  std::abort();
}

// A fresh directory for this process, removed at exit: under /dev/shm when
// there is one (memory: thousands of files a second, and soupkit's fsyncs
// cost nothing there), else under $TMPDIR or /tmp.
inline fs::path make_scratch_dir() {
  const char* tmp = std::getenv("TMPDIR");
  const std::string parent = fs::is_directory("/dev/shm") ? "/dev/shm" : tmp && *tmp ? tmp : "/tmp";
  std::string pattern = parent + "/soupkit-fuzz-XXXXXX";
  if (!::mkdtemp(pattern.data())) finding("cannot make a scratch directory", pattern);
  return pattern;
}

inline const fs::path& scratch_dir() {
  static const fs::path dir = make_scratch_dir();
  // Registered once dir exists, so it runs before dir is destroyed.
  static const bool removed_at_exit = std::atexit([] {
    std::error_code ec;
    fs::remove_all(scratch_dir(), ec);
  }) == 0;
  (void)removed_at_exit;
  return dir;
}

// Plain writes (write_text_file would fsync every input).
inline void write_input(const fs::path& path, const std::uint8_t* data, std::size_t size) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
  if (!out.flush()) finding("cannot write the input", path.string());
}

// Runs `body`; `names` is what every error message must mention (the input
// file's name, or the source name given to a parser).
template <class Body>
void expect_clean_outcome(std::string_view names, Body&& body) {
  try {
    body();
  } catch (const Error& e) {
    if (std::string_view(e.what()).find(names) == std::string_view::npos)
      finding("error message does not name the input", e.what());
  } catch (const std::exception& e) {
    finding("exception other than soupkit::Error", e.what());
  }
}

}  // namespace soupkit::fuzz
