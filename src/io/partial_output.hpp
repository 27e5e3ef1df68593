#pragma once
// The output's path life cycle, run on the root rank: data is written under
// "<final>.partial" and renamed to the final path only when complete.
#include "soupkit/io/file.hpp"

namespace soupkit {

class PartialOutput {
 public:
  PartialOutput(fs::path final_path, bool is_directory, bool overwrite);
  const fs::path& final_path() const { return final_; }
  const fs::path& partial_path() const { return partial_; }
  // Checks the final path may be written, clears a stale partial output (the
  // caller proved it soupkit's, see Journal::owns_partial) and
  // creates the parent directory (and the partial directory for directory outputs).
  void prepare() const;
  // For --resume: checks the partial output a previous run left is there
  // (and that the final path may be written), keeping it as it is.
  void prepare_resume() const;
  // Atomically moves the partial output into place (replacing an old output
  // only when overwrite was asked for: swapped with renameat2, or moved
  // into a private mkdtemp directory where that is unsupported, so no
  // other path, like a user's "<final>.old", is ever touched).
  void commit() const;
  void discard() const noexcept;

 private:
  void move_into_place() const;
  void replace_old_output() const;
  fs::path final_;
  fs::path partial_;
  bool is_directory_;
  bool overwrite_;
};

// fsyncs a directory so a rename inside it is durable.
void sync_directory(const fs::path& dir);

}  // namespace soupkit
