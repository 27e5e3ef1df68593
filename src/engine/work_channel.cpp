#include "work_channel.hpp"

#include <utility>

namespace soupkit {
namespace {
constexpr int kWorkerTag = 7001;       // to the coordinator: done, failed, finished
constexpr int kCoordinatorTag = 7002;  // to a worker: stop, release
}  // namespace

WorkChannel::WorkChannel(const Communicator& comm, OnDone on_done, OnProgress on_progress)
    : comm_(comm.split(0, comm.rank())), on_done_(std::move(on_done)), on_progress_(std::move(on_progress)) {}

void WorkChannel::tensor_progress(std::size_t index, double fraction) {
  if (comm_.is_root()) {
    progress(index, fraction);
    poll();
  } else if (!finished_) {
    send(0, kWorkerTag, {{"progress", index}, {"fraction", fraction}});
  }
}

void WorkChannel::tensor_done(std::size_t index, std::uint64_t checksum, nlohmann::json record) {
  if (comm_.is_root()) {
    done(index, checksum, std::move(record));
    poll();
  } else {
    send(0, kWorkerTag, {{"done", index}, {"checksum", checksum}, {"record", std::move(record)}});
  }
}

void WorkChannel::failed() {
  if (comm_.is_root())
    stop_everyone();
  else
    send(0, kWorkerTag, {{"failed", true}});
}

bool WorkChannel::stop_requested() {
  if (finished_) return stopping_;
  if (comm_.is_root()) {
    poll();
  } else if (!stopping_ && comm_.has_message(0, kCoordinatorTag)) {
    receive(0, kCoordinatorTag);  // before the release, only a stop comes
    stopping_ = true;
  }
  return stopping_;
}

void WorkChannel::rank_finished() {
  if (comm_.is_root()) {
    while (finished_ranks_ < comm_.size() - 1) handle_one(true);
    for (int r = 1; r < comm_.size(); ++r) send(r, kCoordinatorTag, {{"release", true}});
  } else {
    send(0, kWorkerTag, {{"finished", true}});
    // A stop may come after this rank's last tensor (another rank failed
    // later): it is taken here, not left unreceived.
    while (!receive(0, kCoordinatorTag).contains("release")) stopping_ = true;
  }
  // Every message was received (see the header): these complete.
  for (auto& s : sends_) s.wait();
  sends_.clear();
  finished_ = true;
}

void WorkChannel::send(int to, int tag, const nlohmann::json& message) {
  std::erase_if(sends_, [](PendingSend& s) { return s.test(); });
  sends_.push_back(comm_.send_text(message.dump(), to, tag));
}

nlohmann::json WorkChannel::receive(int from, int tag) { return nlohmann::json::parse(comm_.receive_text(from, tag)); }

void WorkChannel::stop_everyone() {
  if (stopping_) return;
  stopping_ = true;
  for (int r = 1; r < comm_.size(); ++r) send(r, kCoordinatorTag, {{"stop", true}});
}

void WorkChannel::poll() {
  while (handle_one(false)) {
  }
}

bool WorkChannel::handle_one(bool block) {
  if (!block && !comm_.has_message(Communicator::any_source, kWorkerTag)) return false;
  nlohmann::json message = receive(Communicator::any_source, kWorkerTag);
  if (message.contains("finished"))
    ++finished_ranks_;
  else if (message.contains("failed"))
    stop_everyone();
  else if (message.contains("progress"))
    progress(message["progress"].get<std::size_t>(), message["fraction"].get<double>());
  else
    done(message["done"].get<std::size_t>(), message["checksum"].get<std::uint64_t>(), std::move(message["record"]));
  return true;
}

// Never throws: a display that fails is not worth stopping the job for.
void WorkChannel::progress(std::size_t index, double fraction) {
  if (!on_progress_ || !error_.empty()) return;
  try {
    on_progress_(index, fraction);
  } catch (const std::exception&) {
  }
}

// Never throws: the coordinator must keep answering the other ranks.
void WorkChannel::done(std::size_t index, std::uint64_t checksum, nlohmann::json record) {
  if (!error_.empty()) return;
  try {
    on_done_(index, checksum, std::move(record));
  } catch (const std::exception& e) {
    error_ = e.what();
    stop_everyone();
  }
}

}  // namespace soupkit
