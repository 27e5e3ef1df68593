// The worker channel's end of run: whichever rank fails, even after the
// others have finished, every message sent is received (nothing is left on
// the channel's communicator), the coordinator journals every finished
// tensor, and every rank learns that the run was stopped. An unfinished
// channel is destroyed without waiting for its receiver.
#include "engine/work_channel.hpp"
#include "soupkit/util/error.hpp"

#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <numeric>

namespace soupkit {
namespace {

constexpr std::size_t kTensorsPerRank = 3;
constexpr int kTestTag = 41;  // on the world communicator, to order the ranks

enum class Failure { None, Coordinator, LastRank, Journal };

std::string failure_name(const testing::TestParamInfo<Failure>& info) {
  switch (info.param) {
    case Failure::None: return "NoFailure";
    case Failure::Coordinator: return "CoordinatorFails";
    case Failure::LastRank: return "LastRankFails";
    case Failure::Journal: return "CoordinatorCannotJournal";
  }
  return "?";
}

// After a barrier (anything sent before it has been sent), does nothing wait on `comm`?
bool nothing_left(const Communicator& world, const Communicator& comm) {
  world.barrier();
  for (int probe = 0; probe < 50; ++probe, usleep(1000))
    if (comm.has_message(Communicator::any_source, Communicator::any_tag)) return false;
  return true;
}

class WorkChannelEnd : public testing::TestWithParam<Failure> {};

TEST_P(WorkChannelEnd, EveryMessageIsReceivedAndEveryRankLearnsOfAStop) {
  const Communicator world;
  const Failure failure = GetParam();
  // The rank that goes last: it starts its tensors only once every other
  // worker has said it is about to finish (and a little later, so that it
  // has), then fails. The coordinator's journal fails on its first tensor.
  const int last = failure == Failure::LastRank ? world.size() - 1 : failure == Failure::None ? -1 : 0;
  std::vector<std::size_t> journaled;
  WorkChannel channel(world, [&](std::size_t i, std::uint64_t checksum, nlohmann::json record) {
    if (failure == Failure::Journal) throw Error("disk full");
    EXPECT_EQ(checksum, 1000 + i);
    EXPECT_EQ(record.at("tensor"), i);
    journaled.push_back(i);
  });
  const bool signals = world.rank() != 0 && world.rank() != last && last >= 0;
  if (world.rank() == last) {
    for (int r = 1; r < world.size(); ++r) {
      if (r != last) {
        EXPECT_EQ(world.receive_text(r, kTestTag), "finishing");
      }
    }
    usleep(100000);
  }
  const std::size_t first = static_cast<std::size_t>(world.rank()) * kTensorsPerRank;
  for (std::size_t i = first; i < first + kTensorsPerRank; ++i) channel.tensor_done(i, 1000 + i, {{"tensor", i}});
  if (world.rank() == last && failure != Failure::Journal) channel.failed();
  if (signals) world.send_text("finishing", last, kTestTag).wait();
  channel.rank_finished();

  EXPECT_EQ(channel.stop_requested(), failure != Failure::None);
  if (world.is_root()) {
    std::vector<std::size_t> all(static_cast<std::size_t>(world.size()) * kTensorsPerRank);
    std::iota(all.begin(), all.end(), 0);
    std::sort(journaled.begin(), journaled.end());
    EXPECT_EQ(journaled, failure == Failure::Journal ? std::vector<std::size_t>{} : all);
    EXPECT_EQ(channel.error(), failure == Failure::Journal ? "disk full" : "");
  }
  EXPECT_TRUE(nothing_left(world, channel.communicator()));
  EXPECT_TRUE(nothing_left(world, world));
}

INSTANTIATE_TEST_SUITE_P(Failures, WorkChannelEnd,
                         testing::Values(Failure::None, Failure::Coordinator, Failure::LastRank, Failure::Journal),
                         failure_name);

// Progress inside a tensor: every rank's reports reach the coordinator, in
// order and each before the tensor's "done" (same tag), taken while the
// coordinator waits at the handshake; nothing is left on the channel.
TEST(WorkChannel, ProgressReportsArriveBeforeTheirTensorsDone) {
  const Communicator world;
  constexpr int kReports = 5;
  std::vector<std::vector<double>> heard(static_cast<std::size_t>(world.size()));
  std::vector<bool> done(static_cast<std::size_t>(world.size()), false);
  WorkChannel channel(
      world,
      [&](std::size_t i, std::uint64_t, nlohmann::json) { done.at(i) = true; },
      [&](std::size_t i, double fraction) {
        EXPECT_FALSE(done.at(i)) << "a report of tensor " << i << " after its done";
        heard.at(i).push_back(fraction);
      });
  const auto mine = static_cast<std::size_t>(world.rank());
  for (int k = 1; k <= kReports; ++k) channel.tensor_progress(mine, k / (kReports + 1.0));
  channel.tensor_done(mine, 0, nullptr);
  channel.rank_finished();
  if (world.is_root()) {
    std::vector<double> expected;
    for (int k = 1; k <= kReports; ++k) expected.push_back(k / (kReports + 1.0));
    for (std::size_t r = 0; r < heard.size(); ++r) {
      EXPECT_EQ(heard[r], expected) << "rank " << r;
      EXPECT_TRUE(done[r]);
    }
  }
  EXPECT_TRUE(nothing_left(world, channel.communicator()));
}

TEST(WorkChannel, AnUnfinishedChannelIsDestroyedWithoutWaitingForItsReceiver) {
  const Communicator world;
  constexpr std::size_t kPadding = std::size_t{4} << 20;
  // A destructor that waited would never return: end the test with a signal instead.
  alarm(120);
  auto channel = std::make_unique<WorkChannel>(world, [](std::size_t, std::uint64_t, nlohmann::json) {});
  if (world.is_root()) {
    for (int r = 1; r < world.size(); ++r) EXPECT_EQ(world.receive_text(r, kTestTag), "gone");
    // The sends left to MPI still complete: take them, so nothing stale is left.
    for (int r = 1; r < world.size(); ++r) {
      const auto message = nlohmann::json::parse(channel->communicator().receive_text(r, Communicator::any_tag));
      EXPECT_EQ(message.at("record").at("padding").get<std::string>().size(), kPadding);
    }
  } else {
    // Too large to be sent before the receiver asks for it; nobody asks
    // until this rank's channel is gone (an exception escaped, say).
    channel->tensor_done(0, 0, {{"padding", std::string(kPadding, 'x')}});
    channel.reset();
    world.send_text("gone", 0, kTestTag).wait();
  }
  channel.reset();
  world.barrier();
  alarm(0);
}

}  // namespace
}  // namespace soupkit
