#pragma once
// Messages for the operator: printed by rank 0 only (every rank computes the
// same plan, so one voice is enough), to stderr, filtered by level.
#include <fmt/format.h>

#include <cstdio>
#include <string>

namespace soupkit::log {

enum class Level { Debug = 0, Info = 1, Warning = 2, Error = 3, Quiet = 4 };

void configure(int rank, Level level);
Level level();
bool enabled(Level l);  // on this rank, at this level
void write(Level l, const std::string& message);
// Parses "debug", "info", "warning", "error", "quiet".
Level parse_level(const std::string& text);

template <class... Args>
void info(fmt::format_string<Args...> f, Args&&... args) {
  if (enabled(Level::Info)) write(Level::Info, fmt::format(f, std::forward<Args>(args)...));
}
template <class... Args>
void warn(fmt::format_string<Args...> f, Args&&... args) {
  if (enabled(Level::Warning)) write(Level::Warning, fmt::format(f, std::forward<Args>(args)...));
}
template <class... Args>
void debug(fmt::format_string<Args...> f, Args&&... args) {
  if (enabled(Level::Debug)) write(Level::Debug, fmt::format(f, std::forward<Args>(args)...));
}

}  // namespace soupkit::log
