#pragma once
// Test hooks of the engine, off unless their environment variable is set.
#include <cstdlib>

namespace soupkit {

// Fault injection for the kill-and-resume tests: SOUPKIT_FAULT_KILL_AFTER=N
// makes the coordinator kill itself (SIGKILL, like an OOM kill or a node
// loss) right after journaling its N-th tensor of this run.
inline long fault_kill_after() {
  const char* text = std::getenv("SOUPKIT_FAULT_KILL_AFTER");
  return text ? std::strtol(text, nullptr, 10) : 0;
}


}  // namespace soupkit
