#pragma once
// Messages between workers and the coordinator while tensors are computed,
// on a communicator of their own (so nothing left over can reach another
// run), as small JSON texts: each finished tensor with its checksum and
// record (for progress, the journal and the report), the fraction done of a
// tensor under way (progress), a failure, and "this rank is done". When any rank fails, the coordinator tells every rank to
// stop after its current tensor, so a failure stops the job promptly.
//
// The run ends with a handshake, so that every message sent is received:
// each worker says "finished" and then takes the coordinator's messages
// (a stop, maybe) until its "release"; the coordinator releases the workers
// once all have finished. Messages between a pair of ranks on one tag
// arrive in order, so a worker released has received everything sent to it,
// and the coordinator, having every "finished", has everything sent to it.
#include "soupkit/parallel/communicator.hpp"

#include <nlohmann/json.hpp>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace soupkit {

class WorkChannel {
 public:
  // Called on the coordinator for every finished tensor (its own too).
  using OnDone = std::function<void(std::size_t index, std::uint64_t checksum, nlohmann::json record)>;
  // Called on the coordinator when a rank reports the fraction done of a
  // tensor it is computing (its own too).
  using OnProgress = std::function<void(std::size_t index, double fraction)>;

  // Collective over `comm`.
  WorkChannel(const Communicator& comm, OnDone on_done, OnProgress on_progress = {});
  // Never blocks. After rank_finished() every send is complete; before it
  // (an exception escaped) the sends still under way are left to MPI.
  ~WorkChannel() = default;

  // The coordinator's own failure while handling a finished tensor (say,
  // the journal's disk is full): everyone is told to stop, and the engine
  // reports it as this rank's error. Empty if none.
  const std::string& error() const { return error_; }

  // Any rank: tensor `index` is done.
  void tensor_done(std::size_t index, std::uint64_t checksum, nlohmann::json record);
  // Any rank: `fraction` of tensor `index` is done. Never blocks: a
  // worker's goes on the same tag as its "done", so it arrives before it
  // and is taken wherever the coordinator takes messages (between its own
  // tensors, in its own reports, at the handshake); the coordinator's own
  // is handled at once, and it takes the others' waiting then too.
  void tensor_progress(std::size_t index, double fraction);
  // Any rank: this rank failed (and will stop).
  void failed();
  // Should this rank stop before its next tensor? After rank_finished(),
  // every rank's answer is the same: was any rank told to stop.
  bool stop_requested();
  // Any rank, once, after its last tensor: the handshake above. Blocks until
  // the coordinator has heard from every rank.
  void rank_finished();

  // The channel's own communicator (tests check that nothing is left on it).
  const Communicator& communicator() const { return comm_; }

 private:
  void send(int to, int tag, const nlohmann::json& message);
  nlohmann::json receive(int from, int tag);
  void stop_everyone();
  void poll();
  bool handle_one(bool block);
  void done(std::size_t index, std::uint64_t checksum, nlohmann::json record);
  void progress(std::size_t index, double fraction);

  Communicator comm_;
  OnDone on_done_;
  OnProgress on_progress_;
  std::vector<PendingSend> sends_;
  int finished_ranks_ = 0;
  bool stopping_ = false;
  bool finished_ = false;
  std::string error_;
};

}  // namespace soupkit
