#pragma once
// What every fuzz target shares: a scratch directory of its own, writing the
// input to a file there, and the rule for outcomes. Returning, or throwing
// soupkit::Error whose message names the input, is a clean outcome (the CLI
// prints it and exits 1); any other exception, or a message that names no
// file, is a finding: the target aborts and libFuzzer saves the input.
#include "soupkit/error.hpp"
#include "soupkit/file.hpp"

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>
#include <string_view>

namespace soupkit::fuzz {

// A fresh directory for this process (under $TMPDIR or /tmp), removed at exit.
inline const fs::path& scratch_dir() {
  static const fs::path dir = [] {
    const char* tmp = std::getenv("TMPDIR");
    std::string pattern = std::string(tmp && *tmp ? tmp : "/tmp") + "/soupkit-fuzz-XXXXXX";
    if (!::mkdtemp(pattern.data())) {
      std::perror("soupkit fuzz: mkdtemp");
      std::abort();
    }
    static const fs::path made = pattern;
    std::atexit([] {
      std::error_code ec;
      fs::remove_all(made, ec);
    });
    return made;
  }();
  return dir;
}

inline void write_input(const fs::path& path, const std::uint8_t* data, std::size_t size) {
  write_text_file(path, std::string_view(reinterpret_cast<const char*>(data), size));
}

[[noreturn]] inline void finding(const char* what, const std::string& detail) {
  std::fprintf(stderr, "soupkit fuzz: %s: %s\n", what, detail.c_str());
  std::abort();
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
