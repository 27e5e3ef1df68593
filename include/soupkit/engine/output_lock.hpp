#pragma once
// An exclusive lock on an output path, held for a whole job: a POSIX record
// lock (fcntl, which NFS supports; Lustre with -o flock) on a small file
// beside the output. A second job is refused with a message naming the
// holder (host, pid, start time), which the holder writes into the file as
// a JSON line {"owner": {...}}. The resume journal is such a file; a greedy
// soup also locks its output for its whole run.
//
// soupkit only takes over a lock file it can prove it created: a new one is
// created complete (its first line, `header`, already written) under a
// unique name and linked into place, so the path never names a half-made
// file; an existing one is used only if it is a regular file (never
// followed through a symbolic link) whose first line is soupkit's. Anything
// else at the path is the user's: refused, naming it.
#include "soupkit/io/file.hpp"

#include <nlohmann/json.hpp>

#include <string>

namespace soupkit {

class OutputLock {
 public:
  // Opens (creating, starting with `header`, a JSON object whose first key
  // identifies the kind of file) `lock_file` and locks it. Throws
  // InputError naming `out` and the holder if another process holds it, or
  // naming `lock_file` if it is not soupkit's; SystemError if the filesystem
  // cannot lock. If the lock file existed, `header` is not written.
  OutputLock(const fs::path& lock_file, const fs::path& out, const nlohmann::json& header);
  ~OutputLock();
  OutputLock(const OutputLock&) = delete;
  OutputLock& operator=(const OutputLock&) = delete;

  const fs::path& path() const { return path_; }
  // The locked file's descriptor. Never open the file another way while
  // locked: closing any descriptor of it drops the process's lock (POSIX).
  int fd() const { return fd_; }
  // True if this process created the file (it did not exist before).
  bool created() const { return created_; }
  // Appends this process's owner line (host, pid, start time).
  void write_owner();
  // Deletes the file (if the path still names the locked file), then
  // releases the lock (a job that locks the deleted file meanwhile notices
  // and locks the new one instead).
  void remove();

 private:
  bool create_new(const fs::path& out, const nlohmann::json& header);
  bool open_existing(const fs::path& out);
  fs::path path_;
  std::string header_key_;
  int fd_ = -1;
  bool created_ = false;
};

// Is `first_line` the first line of a file soupkit writes with a header
// whose key is `header_key` (or a greedy lock's owner line)?
bool is_soupkit_side_file(const std::string& first_line, const std::string& header_key);

// Appends `text` at the end of the file behind `fd` (one write per line),
// naming `path` in errors.
void append_to_fd(int fd, const fs::path& path, const std::string& text);

// Replaces the whole content of the file behind `fd` with `text`, so that
// the file starts with `text` at every moment (written first, then cut).
void rewrite_fd(int fd, const fs::path& path, const std::string& text);

}  // namespace soupkit
