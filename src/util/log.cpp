#include "soupkit/util/log.hpp"

#include "soupkit/util/error.hpp"

namespace soupkit::log {
namespace {
int g_rank = 0;
Level g_level = Level::Info;
}  // namespace

void configure(int rank, Level level) {
  g_rank = rank;
  g_level = level;
}

Level level() { return g_level; }

bool enabled(Level l) { return g_rank == 0 && l >= g_level && g_level != Level::Quiet; }

void write(Level l, const std::string& message) {
  const char* prefix = l == Level::Warning ? "soupkit: warning: " : l == Level::Error ? "soupkit: error: " : "";
  std::fprintf(stderr, "%s%s\n", prefix, message.c_str());
  std::fflush(stderr);
}

Level parse_level(const std::string& text) {
  if (text == "debug") return Level::Debug;
  if (text == "info") return Level::Info;
  if (text == "warning" || text == "warn") return Level::Warning;
  if (text == "error") return Level::Error;
  if (text == "quiet") return Level::Quiet;
  throw InputError(fmt::format("--log-level: unknown level '{}' (debug, info, warning, error, quiet)", text));
}

}  // namespace soupkit::log
