#include "soupkit/parallel/communicator.hpp"

#include "soupkit/util/error.hpp"
#include "soupkit/util/log.hpp"

#include <algorithm>
#include <climits>
#include <limits>
#include <cstdlib>
#include <string_view>

namespace soupkit {
namespace {

std::string mpi_failure_text(int code, const char* call) {
  const std::string_view text(call);
  const std::string_view name = text.substr(0, text.find('('));
  char description[MPI_MAX_ERROR_STRING] = {};
  int length = 0;
  if (MPI_Error_string(code, description, &length) != MPI_SUCCESS)
    return fmt::format("{} failed (MPI error code {})", name, code);
  return fmt::format("{} failed: {}", name, std::string_view(description, static_cast<std::size_t>(length)));
}

// For destructors, which must not throw: a failure is reported on this
// rank's stderr and otherwise ignored.
void warn_on_mpi_failure(int code, const char* call) noexcept {
  if (code == MPI_SUCCESS) return;
  try {
    log::write(log::Level::Warning, mpi_failure_text(code, call));
  } catch (...) {
  }
}
#define SOUPKIT_MPI_CALL_NOTHROW(call) warn_on_mpi_failure((call), #call)

template <class T>
MPI_Datatype mpi_type();
template <>
MPI_Datatype mpi_type<int>() {
  return MPI_INT;
}
template <>
MPI_Datatype mpi_type<double>() {
  return MPI_DOUBLE;
}
template <>
MPI_Datatype mpi_type<std::uint64_t>() {
  return MPI_UINT64_T;
}

template <class T>
T allreduce(MPI_Comm comm, T value, MPI_Op op) {
  T result{};
  SOUPKIT_MPI_CALL(MPI_Allreduce(&value, &result, 1, mpi_type<T>(), op, comm));
  return result;
}

// Completes `request` without blocking if it can. On an error MPI leaves
// the request undefined: it is dropped, so nobody waits on it later.
bool test_request(MPI_Request& request) {
  if (request == MPI_REQUEST_NULL) return true;
  int done = 0;
  try {
    SOUPKIT_MPI_CALL(MPI_Test(&request, &done, MPI_STATUS_IGNORE));
  } catch (...) {
    request = MPI_REQUEST_NULL;
    throw;
  }
  return done != 0;
}

}  // namespace

void check_mpi(int code, const char* call) {
  if (code != MPI_SUCCESS) throw MpiError(mpi_failure_text(code, call));
}

MpiSession::MpiSession(int& argc, char**& argv) {
  int provided = 0;
  SOUPKIT_MPI_CALL(MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided));
  SOUPKIT_MPI_CALL(MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN));
}

MpiSession::~MpiSession() { SOUPKIT_MPI_CALL_NOTHROW(MPI_Finalize()); }

PendingBarrier::PendingBarrier(PendingBarrier&& other) noexcept
    : request_(std::exchange(other.request_, MPI_REQUEST_NULL)) {}

PendingBarrier& PendingBarrier::operator=(PendingBarrier&& other) noexcept {
  if (this != &other) {
    if (request_ != MPI_REQUEST_NULL) SOUPKIT_MPI_CALL_NOTHROW(MPI_Wait(&request_, MPI_STATUS_IGNORE));
    request_ = std::exchange(other.request_, MPI_REQUEST_NULL);
  }
  return *this;
}

PendingBarrier::~PendingBarrier() {
  if (request_ != MPI_REQUEST_NULL) SOUPKIT_MPI_CALL_NOTHROW(MPI_Wait(&request_, MPI_STATUS_IGNORE));
}

bool PendingBarrier::test() { return test_request(request_); }

PendingSend::PendingSend(PendingSend&& other) noexcept
    : text_(std::move(other.text_)), request_(std::exchange(other.request_, MPI_REQUEST_NULL)) {}

PendingSend& PendingSend::operator=(PendingSend&& other) noexcept {
  if (this != &other) {
    detach();
    text_ = std::move(other.text_);
    request_ = std::exchange(other.request_, MPI_REQUEST_NULL);
  }
  return *this;
}

PendingSend::~PendingSend() { detach(); }

bool PendingSend::test() { return test_request(request_); }

void PendingSend::wait() {
  if (request_ == MPI_REQUEST_NULL) return;
  try {
    SOUPKIT_MPI_CALL(MPI_Wait(&request_, MPI_STATUS_IGNORE));
  } catch (...) {
    request_ = MPI_REQUEST_NULL;
    throw;
  }
}

void PendingSend::detach() noexcept {
  if (request_ == MPI_REQUEST_NULL) return;
  int done = 0;
  SOUPKIT_MPI_CALL_NOTHROW(MPI_Test(&request_, &done, MPI_STATUS_IGNORE));
  if (done) return;
  SOUPKIT_MPI_CALL_NOTHROW(MPI_Request_free(&request_));
  static_cast<void>(text_.release());  // MPI may still read it
}

Communicator::Communicator(MPI_Comm comm) : comm_(comm) {
  SOUPKIT_MPI_CALL(MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN));
  SOUPKIT_MPI_CALL(MPI_Comm_rank(comm_, &rank_));
  SOUPKIT_MPI_CALL(MPI_Comm_size(comm_, &size_));
}

Communicator Communicator::adopt(MPI_Comm comm) {
  try {
    Communicator c(comm);
    c.owning_ = true;
    return c;
  } catch (...) {
    SOUPKIT_MPI_CALL_NOTHROW(MPI_Comm_free(&comm));
    throw;
  }
}

Communicator::Communicator(Communicator&& other) noexcept
    : comm_(std::exchange(other.comm_, MPI_COMM_NULL)),
      owning_(std::exchange(other.owning_, false)),
      rank_(other.rank_),
      size_(other.size_) {}

Communicator& Communicator::operator=(Communicator&& other) noexcept {
  if (this != &other) {
    if (owning_ && comm_ != MPI_COMM_NULL) SOUPKIT_MPI_CALL_NOTHROW(MPI_Comm_free(&comm_));
    comm_ = std::exchange(other.comm_, MPI_COMM_NULL);
    owning_ = std::exchange(other.owning_, false);
    rank_ = other.rank_;
    size_ = other.size_;
  }
  return *this;
}

Communicator::~Communicator() {
  if (!owning_ || comm_ == MPI_COMM_NULL) return;
  int finalized = 0;
  SOUPKIT_MPI_CALL_NOTHROW(MPI_Finalized(&finalized));
  if (!finalized) SOUPKIT_MPI_CALL_NOTHROW(MPI_Comm_free(&comm_));
}

void Communicator::barrier() const { SOUPKIT_MPI_CALL(MPI_Barrier(comm_)); }

PendingBarrier Communicator::start_barrier() const {
  MPI_Request request = MPI_REQUEST_NULL;
  SOUPKIT_MPI_CALL(MPI_Ibarrier(comm_, &request));
  return PendingBarrier(request);
}

Communicator Communicator::split(int color, int key) const {
  MPI_Comm sub = MPI_COMM_NULL;
  SOUPKIT_MPI_CALL(MPI_Comm_split(comm_, color, key, &sub));
  return adopt(sub);
}

Communicator Communicator::split_shared() const {
  MPI_Comm node = MPI_COMM_NULL;
  SOUPKIT_MPI_CALL(MPI_Comm_split_type(comm_, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &node));
  return adopt(node);
}

SharedWindow Communicator::allocate_shared(std::size_t bytes) const {
  SOUPKIT_ERROR_IF(bytes > static_cast<std::size_t>(std::numeric_limits<MPI_Aint>::max()),
                   "internal: a shared window of {} bytes", bytes);
  // Contiguous, all on rank 0: every rank then addresses the same block.
  void* mine = nullptr;
  MPI_Win window = MPI_WIN_NULL;
  SOUPKIT_MPI_CALL(MPI_Win_allocate_shared(static_cast<MPI_Aint>(rank_ == 0 ? bytes : 0), 1, MPI_INFO_NULL, comm_,
                                           &mine, &window));
  MPI_Aint size = 0;
  int unit = 0;
  void* base = nullptr;
  SharedWindow shared(window, comm_, nullptr, bytes);  // frees the window if a call below fails
  SOUPKIT_MPI_CALL(MPI_Win_shared_query(window, 0, &size, &unit, &base));
  SOUPKIT_ERROR_IF(static_cast<std::size_t>(size) < bytes, "internal: a shared window of {} bytes has {}", bytes,
                   static_cast<std::size_t>(size));
  shared.base_ = static_cast<std::byte*>(base);
  // A passive-target epoch on all ranks for the window's lifetime: loads and
  // stores are then synchronised by MPI_Win_sync (publish()).
  SOUPKIT_MPI_CALL(MPI_Win_lock_all(MPI_MODE_NOCHECK, window));
  shared.locked_ = true;
  return shared;
}

SharedWindow::SharedWindow(SharedWindow&& other) noexcept
    : window_(std::exchange(other.window_, MPI_WIN_NULL)),
      comm_(std::exchange(other.comm_, MPI_COMM_NULL)),
      base_(std::exchange(other.base_, nullptr)),
      size_(std::exchange(other.size_, 0)),
      locked_(std::exchange(other.locked_, false)) {}

SharedWindow& SharedWindow::operator=(SharedWindow&& other) noexcept {
  if (this != &other) {
    release();
    window_ = std::exchange(other.window_, MPI_WIN_NULL);
    comm_ = std::exchange(other.comm_, MPI_COMM_NULL);
    base_ = std::exchange(other.base_, nullptr);
    size_ = std::exchange(other.size_, 0);
    locked_ = std::exchange(other.locked_, false);
  }
  return *this;
}

SharedWindow::~SharedWindow() { release(); }

void SharedWindow::release() noexcept {
  if (window_ == MPI_WIN_NULL) return;
  if (locked_) SOUPKIT_MPI_CALL_NOTHROW(MPI_Win_unlock_all(window_));
  SOUPKIT_MPI_CALL_NOTHROW(MPI_Win_free(&window_));
  window_ = MPI_WIN_NULL;
}

void SharedWindow::publish() const {
  SOUPKIT_MPI_CALL(MPI_Win_sync(window_));
  SOUPKIT_MPI_CALL(MPI_Barrier(comm_));
  SOUPKIT_MPI_CALL(MPI_Win_sync(window_));
}

Communicator Communicator::duplicate_aborting_on_error() const {
  MPI_Comm copy = MPI_COMM_NULL;
  SOUPKIT_MPI_CALL(MPI_Comm_dup(comm_, &copy));
  Communicator c = adopt(copy);
  SOUPKIT_MPI_CALL(MPI_Comm_set_errhandler(c.comm_, MPI_ERRORS_ARE_FATAL));
  return c;
}

void Communicator::broadcast_bytes(std::span<std::byte> data, int root, std::size_t chunk) const {
  SOUPKIT_ERROR_IF(chunk == 0 || chunk > INT_MAX, "internal: a broadcast in chunks of {} bytes", chunk);
  for (std::size_t at = 0; at < data.size(); at += chunk) {
    const int count = static_cast<int>(std::min(chunk, data.size() - at));
    SOUPKIT_MPI_CALL(MPI_Bcast(data.data() + at, count, MPI_BYTE, root, comm_));
  }
}

std::string Communicator::broadcast(std::string text, int root) const {
  std::uint64_t length = text.size();
  broadcast_bytes(std::as_writable_bytes(std::span(&length, 1)), root);
  text.resize(length);
  broadcast_bytes(std::as_writable_bytes(std::span(text)), root);
  return text;
}

std::vector<std::string> Communicator::gather(const std::string& text, int root) const {
  SOUPKIT_ERROR_IF(text.size() > INT_MAX, "gather: {} bytes is too large for one message", text.size());
  int length = static_cast<int>(text.size());
  std::vector<int> lengths(rank_ == root ? size_ : 0), displs(rank_ == root ? size_ : 0);
  SOUPKIT_MPI_CALL(MPI_Gather(&length, 1, MPI_INT, lengths.data(), 1, MPI_INT, root, comm_));
  std::string all;
  if (rank_ == root) {
    long long total = 0;
    for (int r = 0; r < size_; ++r) {
      displs[r] = static_cast<int>(total);
      total += lengths[r];
    }
    SOUPKIT_ERROR_IF(total > INT_MAX, "gather: {} bytes in total is too large", total);
    all.resize(static_cast<std::size_t>(total));
  }
  SOUPKIT_MPI_CALL(MPI_Gatherv(text.data(), length, MPI_CHAR, all.data(), lengths.data(), displs.data(), MPI_CHAR,
                               root, comm_));
  std::vector<std::string> parts;
  if (rank_ == root)
    for (int r = 0; r < size_; ++r) parts.push_back(all.substr(displs[r], lengths[r]));
  return parts;
}

double Communicator::sum(double value) const { return allreduce(comm_, value, MPI_SUM); }
std::uint64_t Communicator::sum(std::uint64_t value) const { return allreduce(comm_, value, MPI_SUM); }
double Communicator::max(double value) const { return allreduce(comm_, value, MPI_MAX); }
std::uint64_t Communicator::max(std::uint64_t value) const { return allreduce(comm_, value, MPI_MAX); }
void Communicator::sum_in_place(std::span<double> values) const {
  for (std::size_t at = 0; at < values.size(); at += INT_MAX / 8) {
    const int count = static_cast<int>(std::min<std::size_t>(INT_MAX / 8, values.size() - at));
    SOUPKIT_MPI_CALL(MPI_Allreduce(MPI_IN_PLACE, values.data() + at, count, MPI_DOUBLE, MPI_SUM, comm_));
  }
}

void Communicator::reduce_scatter_sum(std::span<const double> send, std::span<double> receive,
                                      std::span<const int> counts) const {
  SOUPKIT_ERROR_IF(counts.size() != static_cast<std::size_t>(size_), "internal: {} counts for {} ranks", counts.size(),
                   size_);
  std::size_t total = 0;
  for (int c : counts) total += static_cast<std::size_t>(c);
  SOUPKIT_ERROR_IF(total != send.size() || receive.size() != static_cast<std::size_t>(counts[rank_]),
                   "internal: a reduce-scatter of {} values into parts of {} (this rank {}, its buffer {})",
                   send.size(), total, counts[rank_], receive.size());
  SOUPKIT_MPI_CALL(MPI_Reduce_scatter(send.data(), receive.data(), counts.data(), MPI_DOUBLE, MPI_SUM, comm_));
}

void Communicator::exchange_bytes(std::span<const std::byte> send, int to, std::span<std::byte> receive, int from,
                                  int tag, std::size_t chunk) const {
  SOUPKIT_ERROR_IF(chunk == 0 || chunk > INT_MAX, "internal: an exchange in chunks of {} bytes", chunk);
  SOUPKIT_ERROR_IF(to < 0 || to >= size_ || from < 0 || from >= size_, "internal: an exchange with ranks {} and {} of {}",
                   to, from, size_);
  // Each direction is its own stream of ceil(size / chunk) messages, which
  // the peer cuts the same way from the same size; all are posted at once,
  // so neither side waits for the other's order.
  std::vector<MPI_Request> requests;
  requests.reserve((send.size() + chunk - 1) / chunk + (receive.size() + chunk - 1) / chunk);
  for (std::size_t at = 0; at < receive.size(); at += chunk) {
    const int count = static_cast<int>(std::min(chunk, receive.size() - at));
    SOUPKIT_MPI_CALL(MPI_Irecv(receive.data() + at, count, MPI_BYTE, from, tag, comm_, &requests.emplace_back()));
  }
  for (std::size_t at = 0; at < send.size(); at += chunk) {
    const int count = static_cast<int>(std::min(chunk, send.size() - at));
    SOUPKIT_MPI_CALL(MPI_Isend(send.data() + at, count, MPI_BYTE, to, tag, comm_, &requests.emplace_back()));
  }
  SOUPKIT_MPI_CALL(MPI_Waitall(static_cast<int>(requests.size()), requests.data(), MPI_STATUSES_IGNORE));
}

bool Communicator::any(bool flag) const { return allreduce(comm_, flag ? 1 : 0, MPI_LOR) != 0; }
bool Communicator::all(bool flag) const { return allreduce(comm_, flag ? 1 : 0, MPI_LAND) != 0; }

PendingSend Communicator::send_text(std::string text, int to, int tag) const {
  SOUPKIT_ERROR_IF(text.size() > INT_MAX, "internal: a message of {} bytes is too large", text.size());
  auto owned = std::make_unique<std::string>(std::move(text));
  MPI_Request request = MPI_REQUEST_NULL;
  SOUPKIT_MPI_CALL(MPI_Isend(owned->data(), static_cast<int>(owned->size()), MPI_CHAR, to, tag, comm_, &request));
  return PendingSend(std::move(owned), request);
}

bool Communicator::has_message(int from, int tag) const {
  int flag = 0;
  SOUPKIT_MPI_CALL(MPI_Iprobe(from, tag, comm_, &flag, MPI_STATUS_IGNORE));
  return flag != 0;
}

std::string Communicator::receive_text(int from, int tag) const {
  // A matched probe: the message sized is the message received.
  MPI_Message message = MPI_MESSAGE_NULL;
  MPI_Status status;
  SOUPKIT_MPI_CALL(MPI_Mprobe(from, tag, comm_, &message, &status));
  int count = 0;
  SOUPKIT_MPI_CALL(MPI_Get_count(&status, MPI_CHAR, &count));
  std::string text(static_cast<std::size_t>(count), '\0');
  SOUPKIT_MPI_CALL(MPI_Mrecv(text.data(), count, MPI_CHAR, &message, MPI_STATUS_IGNORE));
  return text;
}

void Communicator::abort_job(int status) const {
  SOUPKIT_MPI_CALL_NOTHROW(MPI_Abort(comm_, status));
  std::abort();  // MPI_Abort does not return
}

void agree_on_failure(const Communicator& comm, const std::string& local_error) {
  const int first = allreduce(comm.get(), local_error.empty() ? INT_MAX : comm.rank(), MPI_MIN);
  if (first == INT_MAX) return;
  std::string text = comm.broadcast(local_error, first);
  // Say where it happened when that is not the coordinator (say, an input
  // not mounted on one node), unless the message already does.
  if (first != 0 && !text.starts_with("rank ")) text = fmt::format("rank {}: {}", first, text);
  throw Error(text);
}

}  // namespace soupkit
