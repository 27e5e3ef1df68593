// What the engine knows of memory: this process's resident set, and the
// node's available memory for the default --memory-budget.
#include "soupkit/engine/engine.hpp"

#include <sys/resource.h>
#include <unistd.h>

#include <fstream>

namespace soupkit {

std::uint64_t peak_rss_bytes() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return static_cast<std::uint64_t>(usage.ru_maxrss) * 1024;
}

std::uint64_t current_rss_bytes() {
  std::ifstream statm("/proc/self/statm");
  std::uint64_t pages = 0, resident = 0;
  statm >> pages >> resident;
  return resident * static_cast<std::uint64_t>(sysconf(_SC_PAGESIZE));
}

std::uint64_t default_memory_budget(const Communicator& comm) {
  std::uint64_t available = 0;
  std::ifstream meminfo("/proc/meminfo");
  for (std::string key; meminfo >> key;) {
    std::uint64_t kib = 0;
    std::string unit;
    meminfo >> kib >> unit;
    if (key == "MemAvailable:") available = kib * 1024;
  }
  if (available == 0) available = static_cast<std::uint64_t>(sysconf(_SC_PHYS_PAGES)) * sysconf(_SC_PAGESIZE);
  const Communicator node_comm = comm.split_shared();
  // Every rank of a node sees the same figure; take the smallest across all
  // nodes so the plan (made on rank 0) is safe everywhere.
  const double share = 0.8 * static_cast<double>(available) / node_comm.size();
  return static_cast<std::uint64_t>(-comm.max(-share));
}

int fewest_ranks_per_node(const Communicator& comm) {
  const Communicator node_comm = comm.split_shared();
  return static_cast<int>(-comm.max(-static_cast<double>(node_comm.size())));
}

}  // namespace soupkit
