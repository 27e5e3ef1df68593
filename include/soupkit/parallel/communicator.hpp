#pragma once
// A thin handle on an MPI communicator, and helpers that turn an exception on
// any rank into the same exception on every rank (so no rank is left waiting
// in a collective that the failed rank will never enter).
#include <mpi.h>

#include <string>
#include <utility>
#include <vector>

namespace soupkit {

class Communicator {
 public:
  // Non-owning view of an existing communicator (MPI_COMM_WORLD by default).
  explicit Communicator(MPI_Comm comm = MPI_COMM_WORLD);
  // Owning: frees the communicator on destruction.
  static Communicator adopt(MPI_Comm comm);
  Communicator(Communicator&& other) noexcept;
  Communicator& operator=(Communicator&& other) noexcept;
  Communicator(const Communicator&) = delete;
  Communicator& operator=(const Communicator&) = delete;
  ~Communicator();

  MPI_Comm get() const { return comm_; }
  int rank() const { return rank_; }
  int size() const { return size_; }
  bool is_root() const { return rank_ == 0; }

  void barrier() const;
  // Collective: a new owning communicator of the ranks passing the same color.
  Communicator split(int color, int key) const;
  // Returns root's string on every rank.
  std::string broadcast(std::string text, int root = 0) const;
  // Every rank's string, in rank order, on root (empty elsewhere).
  std::vector<std::string> gather(const std::string& text, int root = 0) const;
  bool any(bool flag) const;
  double max(double value) const;
  double sum(double value) const;

 private:
  MPI_Comm comm_ = MPI_COMM_NULL;
  bool owning_ = false;
  int rank_ = 0;
  int size_ = 1;
};

// Agrees on failure: every rank passes the error text it hit (empty if none);
// if any rank failed, all ranks throw soupkit::Error carrying the text of the
// lowest failing rank (prefixed "rank N: " when that is not rank 0).
void agree_on_failure(const Communicator& comm, const std::string& local_error);

// Runs `body` on every rank and agrees on failure (see above).
template <class Body>
void collectively(const Communicator& comm, Body&& body) {
  std::string error;
  try {
    std::forward<Body>(body)();
  } catch (const std::exception& e) {
    error = e.what();
    if (error.empty()) error = "unknown error";
  }
  agree_on_failure(comm, error);
}

// Runs `body` on rank 0 only; a failure there is raised on every rank.
template <class Body>
void on_root(const Communicator& comm, Body&& body) {
  collectively(comm, [&] {
    if (comm.is_root()) std::forward<Body>(body)();
  });
}

}  // namespace soupkit
