// The communicator's collectives and messages, checked against what every
// rank can compute for itself, and its MPI errors turned into exceptions.
#include "soupkit/parallel/communicator.hpp"
#include "soupkit/util/error.hpp"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <unistd.h>

#include <algorithm>
#include <climits>

namespace soupkit {
namespace {

std::byte pattern_byte(std::size_t k) { return std::byte((k * 151 + 17) & 0xff); }

TEST(Communicator, ReductionsAreExactForEveryType) {
  const Communicator world;
  const auto rank = static_cast<std::uint64_t>(world.rank()), size = static_cast<std::uint64_t>(world.size());
  // Above 2^53: a sum taken through double would lose the low bits.
  const std::uint64_t big = std::uint64_t{1} << 60;
  EXPECT_EQ(world.sum(big + rank), size * big + size * (size - 1) / 2);
  EXPECT_EQ(world.max(big + rank), big + size - 1);
  EXPECT_EQ(world.sum(static_cast<double>(rank) + 0.5), static_cast<double>(size * (size - 1) / 2) + 0.5 * size);
  EXPECT_EQ(world.max(-1.5 * static_cast<double>(rank)), 0.0);
  EXPECT_EQ(world.max(1.5 * static_cast<double>(rank)), 1.5 * static_cast<double>(size - 1));
  const bool last = rank == size - 1;
  EXPECT_TRUE(world.any(last));
  EXPECT_FALSE(world.any(false));
  EXPECT_FALSE(world.all(!last));
  EXPECT_TRUE(world.all(true));
}

TEST(Communicator, BroadcastsBytesInChunksFromAnyRoot) {
  const Communicator world;
  const int root = world.size() - 1;
  for (const std::size_t chunk : {std::size_t{1}, std::size_t{7}, std::size_t{1000}, Communicator::kBroadcastChunk})
    for (const std::size_t bytes : {0, 1, 999, 1000, 1001, 70000}) {
      std::vector<std::byte> data(bytes, std::byte{0xee});
      if (world.rank() == root)
        for (std::size_t k = 0; k < bytes; ++k) data[k] = pattern_byte(k);
      world.broadcast_bytes(data, root, chunk);
      std::size_t wrong = 0;
      for (std::size_t k = 0; k < bytes; ++k) wrong += data[k] != pattern_byte(k);
      EXPECT_EQ(wrong, 0u) << bytes << " bytes in chunks of " << chunk;
    }
  EXPECT_THROW(world.broadcast_bytes({}, 0, 0), Error);
  EXPECT_THROW(world.broadcast_bytes({}, 0, std::size_t{INT_MAX} + 1), Error);
}

TEST(Communicator, ExchangesBytesWithAnyPeerInChunks) {
  // Each rank sends (rank + shift) a message whose size depends on both
  // ends, and receives (rank - shift)'s; chunks of 1 and 7 bytes make
  // several messages per direction, 0 bytes none.
  const Communicator world;
  const int p = world.size(), me = world.rank();
  const auto size_of = [](int from, int to) { return static_cast<std::size_t>(from == to ? 0 : 40 + 13 * from + 3 * to); };
  const auto byte_of = [](int from, std::size_t k) { return std::byte(static_cast<unsigned char>(from * 31 + k * 7)); };
  for (const std::size_t chunk : {std::size_t{1}, std::size_t{7}, Communicator::kBroadcastChunk})
    for (int shift = 0; shift < p; ++shift) {
      const int to = (me + shift) % p, from = (me - shift + p) % p;
      std::vector<std::byte> out(size_of(me, to)), in(size_of(from, me), std::byte{0xee});
      for (std::size_t k = 0; k < out.size(); ++k) out[k] = byte_of(me, k);
      world.exchange_bytes(out, to, in, from, 3, chunk);
      std::size_t wrong = 0;
      for (std::size_t k = 0; k < in.size(); ++k) wrong += in[k] != byte_of(from, k);
      EXPECT_EQ(wrong, 0u) << "from " << from << " in chunks of " << chunk;
    }
}

TEST(Communicator, BroadcastsAStringOfAnyContent) {
  const Communicator world;
  const std::string text = std::string("a\0b", 3) + std::string(100000, 'z');
  const int root = world.size() - 1;
  EXPECT_EQ(world.broadcast(world.rank() == root ? text : "ignored", root), text);
  EXPECT_EQ(world.broadcast(world.is_root() ? "" : "ignored"), "");
}

TEST(Communicator, SplitsByNodeAsTheHostNamesSay) {
  const Communicator world;
  char host[256] = {};
  ASSERT_EQ(gethostname(host, sizeof host - 1), 0);
  const auto hosts = nlohmann::json::parse(world.broadcast(nlohmann::json(world.gather(host)).dump()));
  int same = 0, before = 0;
  for (int r = 0; r < world.size(); ++r)
    if (hosts[r] == host) {
      ++same;
      before += r < world.rank();
    }
  const Communicator node = world.split_shared();
  EXPECT_EQ(node.size(), same);
  EXPECT_EQ(node.rank(), before);  // in world order
}

TEST(SharedWindow, OneCopyPerNodeSeenByEveryRankAfterPublish) {
  const Communicator world;
  const Communicator node = world.split_shared();
  for (const std::size_t bytes : {std::size_t{0}, std::size_t{1}, std::size_t{70001}}) {
    const SharedWindow shared = node.allocate_shared(bytes);
    ASSERT_EQ(shared.bytes().size(), bytes);
    if (node.is_root())
      for (std::size_t k = 0; k < bytes; ++k) shared.bytes()[k] = pattern_byte(k);
    shared.publish();
    std::size_t wrong = 0;
    for (std::size_t k = 0; k < bytes; ++k) wrong += shared.bytes()[k] != pattern_byte(k);
    EXPECT_EQ(wrong, 0u) << bytes << " bytes";
    // One block for the node: every rank's view is the same memory, so a
    // store by the last rank is what the first rank then reads.
    if (bytes > 0) {
      shared.publish();  // everyone has checked before the last byte changes
      if (node.rank() == node.size() - 1) shared.bytes()[bytes - 1] = std::byte{0x5a};
      shared.publish();
      EXPECT_EQ(shared.bytes()[bytes - 1], std::byte{0x5a});
      shared.publish();  // everyone has read before the window is freed
    }
  }
}

TEST(Communicator, APendingBarrierCompletesOnceEveryRankEntered) {
  const Communicator world;
  constexpr int kTag = 31;
  if (world.is_root()) {
    PendingBarrier barrier = world.start_barrier();
    // The other ranks enter only after this rank's message.
    if (world.size() > 1) {
      EXPECT_FALSE(barrier.test());
    }
    for (int r = 1; r < world.size(); ++r) world.send_text("enter", r, kTag).wait();
    while (!barrier.test()) usleep(1000);
    EXPECT_TRUE(barrier.test());
  } else {
    EXPECT_EQ(world.receive_text(0, kTag), "enter");
    PendingBarrier barrier = world.start_barrier();
    while (!barrier.test()) usleep(1000);
  }
}

std::string text_of(int rank, std::size_t bytes) {
  std::string text(bytes, '\0');
  for (std::size_t k = 0; k < bytes; ++k) text[k] = static_cast<char>('a' + (k * 7 + static_cast<std::size_t>(rank)) % 26);
  return text;
}

TEST(Communicator, TextsTravelAroundARing) {
  const Communicator world;
  constexpr int kTag = 32;
  const int next = (world.rank() + 1) % world.size(), prev = (world.rank() + world.size() - 1) % world.size();
  std::vector<PendingSend> sends;
  sends.push_back(world.send_text("", next, kTag));
  sends.push_back(world.send_text(text_of(world.rank(), 10), next, kTag));
  sends.push_back(world.send_text(text_of(world.rank(), 5 << 20), next, kTag));  // beyond eager sends
  while (!world.has_message(prev, kTag)) usleep(1000);
  EXPECT_EQ(world.receive_text(prev, kTag), "");
  EXPECT_EQ(world.receive_text(Communicator::any_source, kTag), text_of(prev, 10));
  EXPECT_EQ(world.receive_text(prev, Communicator::any_tag), text_of(prev, 5 << 20));
  for (auto& s : sends) s.wait();
  for (auto& s : sends) EXPECT_TRUE(s.test());
  world.barrier();
  EXPECT_FALSE(world.has_message(Communicator::any_source, Communicator::any_tag));
}

TEST(Communicator, AFailedCallThrowsNamingItAndTheCommunicatorStillWorks) {
  const Communicator world;
  try {
    world.broadcast("x", world.size());  // no such root, on every rank
    ADD_FAILURE() << "no error";
  } catch (const MpiError& e) {
    EXPECT_TRUE(std::string(e.what()).starts_with("MPI_Bcast failed: ")) << e.what();
    EXPECT_NE(std::string(e.what()).find("root"), std::string::npos) << e.what();
  }
  try {
    world.receive_text(world.size(), 1);
    ADD_FAILURE() << "no error";
  } catch (const MpiError& e) {
    EXPECT_TRUE(std::string(e.what()).starts_with("MPI_Mprobe failed: ")) << e.what();
    EXPECT_NE(std::string(e.what()).find("rank"), std::string::npos) << e.what();
  }
  EXPECT_THROW(world.send_text("x", -7, 1), MpiError);
  EXPECT_EQ(world.sum(std::uint64_t{1}), static_cast<std::uint64_t>(world.size()));
}

TEST(Communicator, AgreesOnTheLowestFailingRank) {
  const Communicator world;
  const int last = world.size() - 1;
  try {
    agree_on_failure(world, world.rank() == last ? "last failed" : "");
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()), last == 0 ? "last failed" : fmt::format("rank {}: last failed", last));
  }
  EXPECT_NO_THROW(agree_on_failure(world, ""));
}

}  // namespace
}  // namespace soupkit
