#pragma once
// Files soupkit writes beside its output (--report, --log). The path is the
// user's, so something may already be there: soupkit replaces it only if it
// is a file soupkit wrote, and writes atomically, never through a symlink.
#include "soupkit/io/file.hpp"

#include <nlohmann/json.hpp>

#include <functional>
#include <string>
#include <string_view>

namespace soupkit {

// Does nothing if `file` does not exist. Otherwise throws InputError naming
// `option` and `file` unless it is a regular file (not a symlink) holding
// JSON for which `written_by_soupkit` holds; `kind` says what soupkit writes
// there ("soupkit report"). Call before any heavy work.
void check_side_file_replaceable(const fs::path& file, const std::string& option, const std::string& kind,
                                 const std::function<bool(const nlohmann::json&)>& written_by_soupkit);

// check_side_file_replaceable for a --report: monosoup's ("summary") and
// transplant's ("matrices") reports may replace each other.
void check_report_replaceable(const fs::path& file);

// Writes `text` to a new temporary file beside `file` (created with O_EXCL |
// O_NOFOLLOW, so nothing existing is written through), syncs it and renames
// it over `file` (which replaces a symlink there rather than following it).
void write_side_file(const fs::path& file, std::string_view text);

}  // namespace soupkit
