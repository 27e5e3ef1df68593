#pragma once
// The resume journal "<out>.journal", kept by the coordinator while a job
// writes <out>.partial. It is also the job's lock on the output: the
// coordinator holds a POSIX record lock on it for the whole run, so a second
// job writing the same output is refused (fcntl locks work on NFS and on
// Lustre mounted with -o flock).
//
// Format: JSON lines. The first names the job:
//   {"soupkit_journal": 1, "fingerprint": "<hash of the output spec>"}
// then one line per run holding the lock ({"owner": {"host", "pid", "started"}})
// and one per finished tensor ({"tensor": i, "name": ..., "checksum": "<hex>",
// "record": {...}}). A torn last line (a kill mid-write) is ignored.
#include "soupkit/file.hpp"
#include "soupkit/output_lock.hpp"

#include <nlohmann/json.hpp>

#include <cstdint>
#include <map>
#include <string>

namespace soupkit {

struct JournalEntry {
  std::uint64_t checksum = 0;
  nlohmann::json record;
};

class Journal {
 public:
  // Opens and locks the journal of output `out`. With `resume`, reads the
  // tensors a previous run finished, provided it ran the same job
  // (`fingerprint`); otherwise starts a new journal. Throws InputError if
  // another job holds the lock or the journal belongs to another job.
  Journal(const fs::path& out, const std::string& fingerprint, bool resume);

  static fs::path path_for(const fs::path& out);
  const fs::path& path() const { return lock_.path(); }
  // Tensors finished so far, by earlier runs (when resuming) and this one.
  const std::map<std::size_t, JournalEntry>& finished() const { return finished_; }
  void record(std::size_t index, const std::string& name, std::uint64_t checksum, const nlohmann::json& record);
  // Starts the journal over (the previous run's partial output is gone).
  void restart(const std::string& fingerprint);
  // Drops tensors from finished() (they failed verification).
  void forget(std::size_t index) { finished_.erase(index); }
  // The job is complete: delete the journal, then release the lock.
  void remove();

 private:
  void load(const std::string& fingerprint);
  void append(const nlohmann::json& line);
  std::string read_all() const;
  OutputLock lock_;
  bool continuing_ = false;  // resuming a journal of this job
  std::map<std::size_t, JournalEntry> finished_;
};

// A short stable hash of a JSON document (hex), for journal fingerprints.
std::string fingerprint_of(const nlohmann::json& j);

}  // namespace soupkit
