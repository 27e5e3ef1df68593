#pragma once
// An exclusive lock on an output path, held for a whole job: a POSIX record
// lock (fcntl, which NFS supports; Lustre with -o flock) on a small file
// beside the output. A second job is refused with a message naming the
// holder (host, pid, start time), which the holder writes into the file as
// a JSON line {"owner": {...}}. The resume journal is such a file; a greedy
// soup also locks its output for its whole run.
#include "soupkit/file.hpp"

#include <string>

namespace soupkit {

class OutputLock {
 public:
  // Opens (creating) `lock_file` and locks it. Throws InputError naming
  // `out` and the holder if another process holds it, SystemError if the
  // filesystem cannot lock.
  OutputLock(const fs::path& lock_file, const fs::path& out);
  ~OutputLock();
  OutputLock(const OutputLock&) = delete;
  OutputLock& operator=(const OutputLock&) = delete;

  const fs::path& path() const { return path_; }
  // The locked file's descriptor. Never open the file another way while
  // locked: closing any descriptor of it drops the process's lock (POSIX).
  int fd() const { return fd_; }
  // Appends this process's owner line (host, pid, start time).
  void write_owner();
  // Deletes the file, then releases the lock (a job that locks the deleted
  // file meanwhile notices and locks the new one instead).
  void remove();

 private:
  fs::path path_;
  int fd_ = -1;
};

// Appends `text` at the end of the file behind `fd` (one write per line),
// naming `path` in errors.
void append_to_fd(int fd, const fs::path& path, const std::string& text);

}  // namespace soupkit
