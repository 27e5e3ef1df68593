// What the engine knows of memory: this process's resident set, and the
// node's available memory for the default --memory-budget.
#include "soupkit/engine/engine.hpp"

#include <sys/resource.h>
#include <unistd.h>

#include <fstream>
#include <iterator>
#include <sstream>

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

namespace {

// A limit file's value: a byte count, or "max" / a huge v1 figure for none.
std::optional<std::uint64_t> read_limit(const fs::path& file) {
  std::ifstream in(file);
  std::string text;
  if (!(in >> text) || text == "max" || text.empty() || text.size() > 20 ||
      text.find_first_not_of("0123456789") != std::string::npos)
    return std::nullopt;
  const std::uint64_t value = std::stoull(text);
  // cgroup v1 writes "no limit" as the largest page-aligned signed 64-bit value.
  if (value >= (std::uint64_t{1} << 62)) return std::nullopt;
  return value;
}

// The limit on `dir` and each ancestor up to `root` (a relative path from
// /proc/self/cgroup never climbs out: ".." parts are refused).
std::optional<std::uint64_t> tightest_limit(const fs::path& root, const std::string& relative, const char* file) {
  fs::path dir = root;
  std::optional<std::uint64_t> best = read_limit(dir / file);
  std::stringstream parts(relative);
  for (std::string part; std::getline(parts, part, '/');) {
    if (part.empty()) continue;
    if (part == "." || part == "..") return best;
    dir /= part;
    if (const auto limit = read_limit(dir / file)) best = best ? std::min(*best, *limit) : *limit;
  }
  return best;
}

}  // namespace

std::optional<std::uint64_t> cgroup_memory_limit(const std::string& proc_self_cgroup, const fs::path& cgroup_root) {
  std::optional<std::uint64_t> best;
  const auto take = [&best](std::optional<std::uint64_t> limit) {
    if (limit) best = best ? std::min(*best, *limit) : *limit;
  };
  std::stringstream lines(proc_self_cgroup);
  for (std::string line; std::getline(lines, line);) {
    // "ID:CONTROLLERS:PATH"; v2 is "0::PATH".
    const auto first = line.find(':'), second = line.find(':', first == std::string::npos ? first : first + 1);
    if (first == std::string::npos || second == std::string::npos) continue;
    const std::string controllers = line.substr(first + 1, second - first - 1), path = line.substr(second + 1);
    if (controllers.empty()) {
      take(tightest_limit(cgroup_root, path, "memory.max"));
      take(tightest_limit(cgroup_root / "unified", path, "memory.max"));  // hybrid layout
    }
    std::stringstream names(controllers);
    for (std::string name; std::getline(names, name, ',');)
      if (name == "memory") take(tightest_limit(cgroup_root / "memory", path, "memory.limit_in_bytes"));
  }
  return best;
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
  {
    // A job confined by a cgroup (Slurm's --mem, a container) is killed at
    // its limit, however much the node has free.
    std::ifstream cgroup_file("/proc/self/cgroup");
    const std::string cgroup((std::istreambuf_iterator<char>(cgroup_file)), std::istreambuf_iterator<char>());
    if (const auto limit = cgroup_memory_limit(cgroup, "/sys/fs/cgroup")) available = std::min(available, *limit);
  }
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
