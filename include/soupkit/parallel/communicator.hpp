#pragma once
// The only door to MPI: a handle on a communicator with the collectives and
// messages soupkit needs, every MPI call checked (an error becomes
// soupkit::MpiError naming the call, instead of aborting the job), and
// helpers that turn an exception on any rank into the same exception on
// every rank (so no rank is left waiting in a collective that the failed
// rank will never enter).
#include <mpi.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <utility>
#include <vector>

namespace soupkit {

// Throws MpiError naming `call` (the text of the call) and MPI's description
// of `code`, unless it is MPI_SUCCESS.
void check_mpi(int code, const char* call);

}  // namespace soupkit

// Checks an MPI call, written inside it: SOUPKIT_MPI_CALL(<the call>). Used in src/parallel
// only (everything else reaches MPI through Communicator).
#define SOUPKIT_MPI_CALL(call) ::soupkit::check_mpi((call), #call)

namespace soupkit {

// MPI_Init_thread (funneled: only the main thread calls MPI, while OpenMP
// threads compute) and MPI_Finalize, once per process. MPI_COMM_WORLD's
// errors return to the caller from here on.
class MpiSession {
 public:
  MpiSession(int& argc, char**& argv);
  MpiSession(const MpiSession&) = delete;
  MpiSession& operator=(const MpiSession&) = delete;
  ~MpiSession();
};

// Completion of a collective barrier started with Communicator::start_barrier.
// Move-only. Every rank must complete it: destroying an unfinished one waits
// for it (MPI cannot cancel a collective).
class PendingBarrier {
 public:
  PendingBarrier(PendingBarrier&& other) noexcept;
  PendingBarrier& operator=(PendingBarrier&& other) noexcept;
  PendingBarrier(const PendingBarrier&) = delete;
  PendingBarrier& operator=(const PendingBarrier&) = delete;
  ~PendingBarrier();
  // Has every rank entered the barrier? Never blocks.
  bool test();

 private:
  friend class Communicator;
  explicit PendingBarrier(MPI_Request request) : request_(request) {}
  MPI_Request request_ = MPI_REQUEST_NULL;
};

// A text being sent with Communicator::send_text; owns the text until MPI is
// done with it. Move-only. Destroying one that is still under way (its
// receiver never came for it, say after an exception) leaves it to MPI and
// leaks the text, which MPI may still be reading: waiting could block
// forever, and MPI cannot reliably cancel a send.
class PendingSend {
 public:
  PendingSend(PendingSend&& other) noexcept;
  PendingSend& operator=(PendingSend&& other) noexcept;
  PendingSend(const PendingSend&) = delete;
  PendingSend& operator=(const PendingSend&) = delete;
  ~PendingSend();
  // Is the send complete (the text may be reused)? Never blocks.
  bool test();
  // Blocks until the send is complete.
  void wait();

 private:
  friend class Communicator;
  PendingSend(std::unique_ptr<std::string> text, MPI_Request request) : text_(std::move(text)), request_(request) {}
  void detach() noexcept;
  std::unique_ptr<std::string> text_;  // on the heap: a moved std::string may move its characters
  MPI_Request request_ = MPI_REQUEST_NULL;
};

// Memory shared by the ranks of one node: an MPI-3 shared-memory window
// (MPI_Win_allocate_shared), all of it placed in the first rank's segment
// and mapped by every rank, so a node holds one copy whatever its rank
// count. Made by Communicator::allocate_shared on a communicator of one
// node (split_shared). Move-only. Every rank may read and write all of it;
// stores become visible to the other ranks at publish(). Freeing it is
// collective (MPI_Win_free): all the node's ranks destroy it together, as
// they do when an exception is agreed on every rank (collectively()).
class SharedWindow {
 public:
  SharedWindow(SharedWindow&& other) noexcept;
  SharedWindow& operator=(SharedWindow&& other) noexcept;
  SharedWindow(const SharedWindow&) = delete;
  SharedWindow& operator=(const SharedWindow&) = delete;
  ~SharedWindow();

  std::span<std::byte> bytes() const { return {base_, size_}; }
  // Collective over the node: every rank's stores so far are seen by every
  // rank's loads after it (MPI_Win_sync, barrier, MPI_Win_sync: the
  // unified memory model's load/store synchronisation).
  void publish() const;

 private:
  friend class Communicator;
  SharedWindow(MPI_Win window, MPI_Comm comm, std::byte* base, std::size_t size)
      : window_(window), comm_(comm), base_(base), size_(size) {}
  void release() noexcept;
  MPI_Win window_ = MPI_WIN_NULL;
  MPI_Comm comm_ = MPI_COMM_NULL;  // not owned: the communicator it was made on outlives it
  std::byte* base_ = nullptr;
  std::size_t size_ = 0;
  bool locked_ = false;  // in its passive-target epoch (MPI_Win_lock_all)
};

class Communicator {
 public:
  static constexpr int any_source = MPI_ANY_SOURCE;
  static constexpr int any_tag = MPI_ANY_TAG;

  // Non-owning view of an existing communicator (MPI_COMM_WORLD by default);
  // its errors return to the caller from here on.
  explicit Communicator(MPI_Comm comm = MPI_COMM_WORLD);
  Communicator(Communicator&& other) noexcept;
  Communicator& operator=(Communicator&& other) noexcept;
  Communicator(const Communicator&) = delete;
  Communicator& operator=(const Communicator&) = delete;
  ~Communicator();

  // For libraries that take an MPI communicator (HDF5's MPI-IO, BLACS).
  MPI_Comm get() const { return comm_; }
  int rank() const { return rank_; }
  int size() const { return size_; }
  bool is_root() const { return rank_ == 0; }

  // Collectives: every rank of the communicator calls them, in the same order.
  void barrier() const;
  // Starts a barrier and returns at once (a rank can sleep until it completes).
  PendingBarrier start_barrier() const;
  // A new owning communicator of the ranks passing the same color, ordered by key.
  Communicator split(int color, int key) const;
  // A new owning communicator of the ranks that share this rank's memory (its node).
  Communicator split_shared() const;
  // Collective over a communicator whose ranks share memory (split_shared):
  // `bytes` of node-shared memory, in this communicator's rank 0's segment,
  // aligned for any scalar type (MPI's allocation). Uninitialised.
  SharedWindow allocate_shared(std::size_t bytes) const;
  // A new owning copy whose MPI errors abort the job, for libraries that
  // never check MPI's return codes (BLACS, ScaLAPACK): a failure in them
  // must not go unnoticed.
  Communicator duplicate_aborting_on_error() const;
  // Root's bytes on every rank (`data` has the same size everywhere), in
  // chunks of at most `chunk` bytes: MPI counts are ints, a buffer may pass 2 GiB.
  void broadcast_bytes(std::span<std::byte> data, int root = 0, std::size_t chunk = kBroadcastChunk) const;
  // Returns root's string on every rank.
  std::string broadcast(std::string text, int root = 0) const;
  // Every rank's string, in rank order, on root (empty elsewhere).
  std::vector<std::string> gather(const std::string& text, int root = 0) const;
  // Reductions over all ranks; every rank gets the result.
  double sum(double value) const;
  std::uint64_t sum(std::uint64_t value) const;
  double max(double value) const;
  std::uint64_t max(std::uint64_t value) const;
  bool any(bool flag) const;
  bool all(bool flag) const;
  // Element-wise sum over all ranks, in place, on every rank (same size everywhere).
  void sum_in_place(std::span<double> values) const;
  // Element-wise sum over all ranks of `send`, whose first counts[0] values
  // go to rank 0, the next counts[1] to rank 1, ...; this rank receives its
  // part of the sum in `receive` (counts[rank()] values). For a given rank
  // count and counts the summation order is fixed: the same bits every run.
  void reduce_scatter_sum(std::span<const double> send, std::span<double> receive, std::span<const int> counts) const;

  // Point to point.
  // Sends `send` to rank `to` while receiving `receive` from rank `from`
  // (MPI_Sendrecv, in chunks of at most `chunk` bytes: MPI counts are ints).
  // The peer `to` must receive exactly send.size() bytes from this rank, and
  // `from` send receive.size(): both sides size their buffers from the same
  // agreed plan. Either side may be empty (to/from may be this rank).
  void exchange_bytes(std::span<const std::byte> send, int to, std::span<std::byte> receive, int from, int tag,
                      std::size_t chunk = kBroadcastChunk) const;
  PendingSend send_text(std::string text, int to, int tag) const;
  // Is a message from `from` (or any_source) with `tag` (or any_tag) waiting? Never blocks.
  bool has_message(int from, int tag) const;
  // Blocks until a message from `from` (or any_source) with `tag` (or any_tag) arrives; its text.
  std::string receive_text(int from, int tag) const;

  // Ends every process of the job at once, with `status` (for a failure that
  // the other ranks cannot be told about: they may wait in a collective).
  [[noreturn]] void abort_job(int status) const;

  static constexpr std::size_t kBroadcastChunk = std::size_t{1} << 30;

 private:
  static Communicator adopt(MPI_Comm comm);

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
