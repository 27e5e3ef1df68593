#include "soupkit/parallel/communicator.hpp"

#include "soupkit/util/error.hpp"

#include <climits>

namespace soupkit {

Communicator::Communicator(MPI_Comm comm) : comm_(comm) {
  MPI_Comm_rank(comm_, &rank_);
  MPI_Comm_size(comm_, &size_);
}

Communicator Communicator::adopt(MPI_Comm comm) {
  Communicator c(comm);
  c.owning_ = true;
  return c;
}

Communicator::Communicator(Communicator&& other) noexcept
    : comm_(other.comm_), owning_(other.owning_), rank_(other.rank_), size_(other.size_) {
  other.comm_ = MPI_COMM_NULL;
  other.owning_ = false;
}

Communicator& Communicator::operator=(Communicator&& other) noexcept {
  if (this != &other) {
    if (owning_ && comm_ != MPI_COMM_NULL) MPI_Comm_free(&comm_);
    comm_ = other.comm_;
    owning_ = other.owning_;
    rank_ = other.rank_;
    size_ = other.size_;
    other.comm_ = MPI_COMM_NULL;
    other.owning_ = false;
  }
  return *this;
}

Communicator::~Communicator() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (owning_ && comm_ != MPI_COMM_NULL && !finalized) MPI_Comm_free(&comm_);
}

void Communicator::barrier() const { MPI_Barrier(comm_); }

Communicator Communicator::split(int color, int key) const {
  MPI_Comm sub = MPI_COMM_NULL;
  MPI_Comm_split(comm_, color, key, &sub);
  return adopt(sub);
}

std::string Communicator::broadcast(std::string text, int root) const {
  unsigned long long length = text.size();
  MPI_Bcast(&length, 1, MPI_UNSIGNED_LONG_LONG, root, comm_);
  text.resize(length);
  // Chunked: MPI counts are ints and a plan for a huge model may pass 2 GiB.
  for (unsigned long long done = 0; done < length;) {
    const int chunk = static_cast<int>(std::min<unsigned long long>(length - done, INT_MAX / 2));
    MPI_Bcast(text.data() + done, chunk, MPI_CHAR, root, comm_);
    done += static_cast<unsigned long long>(chunk);
  }
  return text;
}

std::vector<std::string> Communicator::gather(const std::string& text, int root) const {
  SOUPKIT_ERROR_IF(text.size() > INT_MAX, "gather: {} bytes is too large for one message", text.size());
  int length = static_cast<int>(text.size());
  std::vector<int> lengths(rank_ == root ? size_ : 0), displs(rank_ == root ? size_ : 0);
  MPI_Gather(&length, 1, MPI_INT, lengths.data(), 1, MPI_INT, root, comm_);
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
  MPI_Gatherv(text.data(), length, MPI_CHAR, all.data(), lengths.data(), displs.data(), MPI_CHAR, root, comm_);
  std::vector<std::string> parts;
  if (rank_ == root)
    for (int r = 0; r < size_; ++r) parts.push_back(all.substr(displs[r], lengths[r]));
  return parts;
}

bool Communicator::any(bool flag) const {
  int local = flag ? 1 : 0, global = 0;
  MPI_Allreduce(&local, &global, 1, MPI_INT, MPI_LOR, comm_);
  return global != 0;
}

double Communicator::max(double value) const {
  double global = 0;
  MPI_Allreduce(&value, &global, 1, MPI_DOUBLE, MPI_MAX, comm_);
  return global;
}

double Communicator::sum(double value) const {
  double global = 0;
  MPI_Allreduce(&value, &global, 1, MPI_DOUBLE, MPI_SUM, comm_);
  return global;
}

void agree_on_failure(const Communicator& comm, const std::string& local_error) {
  int mine = local_error.empty() ? INT_MAX : comm.rank();
  int first = INT_MAX;
  MPI_Allreduce(&mine, &first, 1, MPI_INT, MPI_MIN, comm.get());
  if (first == INT_MAX) return;
  std::string text = comm.broadcast(local_error, first);
  // Say where it happened when that is not the coordinator (say, an input
  // not mounted on one node), unless the message already does.
  if (first != 0 && !text.starts_with("rank ")) text = fmt::format("rank {}: {}", first, text);
  throw Error(text);
}

}  // namespace soupkit
