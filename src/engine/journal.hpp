#pragma once
// The resume journal "<out>.journal", kept by the coordinator while a job
// writes <out>.partial. It is also the job's lock on the output: the
// coordinator holds a POSIX record lock on it for the whole run, so a second
// job writing the same output is refused (fcntl locks work on NFS and on
// Lustre mounted with -o flock).
//
// Format: JSON lines. The first names the job:
//   {"soupkit_journal": 1, "fingerprint": "<hash of the output spec>"}
// then the identity of the partial output the job created
// ({"partial": {"dev", "ino"}}: only a partial output a journal names is
// ever removed or resumed), one line per run holding the lock ({"owner":
// {"host", "pid", "started"}}) and one per finished tensor ({"tensor": i,
// "name": ..., "checksum": "<16 hex digits>", "record": {...}}).
//
// A journal is input: every field of every line is checked (index in
// range, the name of the tensor at that index, the checksum's form, the
// record an object); a line that fails is a damaged entry and its tensor is
// recomputed. A torn last line (a kill mid-write) is such a line. At most
// kMaxJournalBytes(tensor count) bytes are read.
#include "soupkit/io/file.hpp"
#include "soupkit/engine/output_lock.hpp"

#include <nlohmann/json.hpp>

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace soupkit {

struct JournalEntry {
  std::uint64_t checksum = 0;
  nlohmann::json record;
};

// What of a journal is read, for a job of `tensors` tensors: a fixed
// allowance plus a generous line per tensor.
std::size_t max_journal_bytes(std::size_t tensors);

class Journal {
 public:
  // Opens and locks the journal of output `out` (whose tensors are named
  // `tensor_names`, in order). With `resume`, reads the tensors a previous
  // run finished, provided it ran the same job (`fingerprint`); otherwise
  // starts a new journal. Throws InputError if another job holds the lock,
  // the file at the journal's path is not soupkit's, or the journal belongs
  // to another job. A journal this constructor created is removed if it throws.
  Journal(const fs::path& out, const std::string& fingerprint, bool resume, std::vector<std::string> tensor_names);

  static fs::path path_for(const fs::path& out);
  const fs::path& path() const { return lock_.path(); }
  // Tensors finished so far, by earlier runs (when resuming) and this one.
  const std::map<std::size_t, JournalEntry>& finished() const { return finished_; }
  void record(std::size_t index, const std::string& name, std::uint64_t checksum, const nlohmann::json& record);
  // Is `partial` (not followed if a symbolic link) the partial output this
  // journal's job created?
  bool owns_partial(const fs::path& partial) const;
  // Records `partial`, just created (or resumed) by this job, as its own.
  void record_partial(const fs::path& partial);
  // Starts the journal over (the previous run's partial output is gone).
  void restart(const std::string& fingerprint);
  // Drops tensors from finished() (they failed verification).
  void forget(std::size_t index) { finished_.erase(index); }
  // The job is complete: delete the journal, then release the lock.
  void remove();

 private:
  struct PartialIdentity {
    std::uint64_t dev = 0, ino = 0;
  };
  void load(const std::string& fingerprint, bool resume);
  std::optional<std::pair<std::size_t, JournalEntry>> parse_entry(const nlohmann::json& line) const;
  void append(const nlohmann::json& line);
  std::string read_bounded() const;
  OutputLock lock_;
  std::vector<std::string> names_;
  bool continuing_ = false;  // resuming a journal of this job
  std::optional<PartialIdentity> partial_;
  std::map<std::size_t, JournalEntry> finished_;
};

// A short stable hash of a JSON document (hex), for journal fingerprints.
std::string fingerprint_of(const nlohmann::json& j);

}  // namespace soupkit
