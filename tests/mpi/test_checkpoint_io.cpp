// Writers and readers across ranks: every rank writes the tensors it owns,
// the result reads back identical on every rank, failures stop every rank.
#include "soupkit/io/checkpoint.hpp"
#include "soupkit/engine/engine.hpp"
#include "soupkit/util/error.hpp"

#include <gtest/gtest.h>

#include <numeric>

namespace soupkit {
namespace {

// A directory shared by all ranks (chosen by rank 0), removed at the end.
class SharedTempDir {
 public:
  explicit SharedTempDir(const Communicator& comm) : comm_(comm) {
    std::string path;
    if (comm.is_root()) {
      char tmpl[] = "/tmp/soupkit-mpi-XXXXXX";
      path = ::mkdtemp(tmpl);
    }
    path_ = comm.broadcast(path);
  }
  ~SharedTempDir() {
    comm_.barrier();
    if (comm_.is_root()) fs::remove_all(path_);
  }
  fs::path operator/(const std::string& name) const { return path_ / name; }

 private:
  const Communicator& comm_;
  fs::path path_;
};

// Deterministic bytes for tensor i.
std::vector<std::byte> pattern(const TensorInfo& t, std::size_t i) {
  std::vector<std::byte> data(t.nbytes());
  for (std::size_t k = 0; k < data.size(); ++k) data[k] = std::byte((k * 131 + i * 7 + 3) & 0xff);
  return data;
}

OutputSpec test_spec() {
  OutputSpec spec;
  spec.tensors = {{"a.weight", DType::BF16, {64, 32}}, {"b.weight", DType::F32, {700, 1600}},
                  {"c", DType::F16, {3}},             {"scalar", DType::F64, {}},
                  {"ids", DType::I64, {10}},          {"mask", DType::BOOL, {2, 2, 2}},
                  {"empty", DType::F32, {0, 5}},      {"with/slash", DType::U8, {9}}};
  spec.metadata = {{"format", "pt"}};
  spec.aux_files = {{"config.json", 7}};
  spec.shard_size = 100'000;
  return spec;
}

class CheckpointIo : public testing::TestWithParam<std::string> {};

TEST_P(CheckpointIo, EveryRankWritesItsTensorsAndAllReadThemBack) {
  Communicator comm;
  SharedTempDir dir(comm);
  const fs::path out = dir / GetParam();
  const OutputSpec spec = test_spec();
  std::vector<double> costs;
  for (const auto& t : spec.tensors) costs.push_back(static_cast<double>(t.nbytes()));
  const auto owner = assign_owners(costs, comm.size());
  {
    auto writer = create_checkpoint_writer(comm, out, spec);
    for (std::size_t i = 0; i < spec.tensors.size(); ++i) {
      if (owner[i] != comm.rank()) continue;
      const auto data = pattern(spec.tensors[i], i);
      const std::uint64_t rows = row_count(spec.tensors[i]);
      // Write in two row ranges to exercise partial writes.
      const std::uint64_t half = rows / 2, rb = row_bytes(spec.tensors[i]);
      writer->write_rows(i, 0, half, std::span(data).first(half * rb));
      writer->write_rows(i, half, rows - half, std::span(data).subspan(half * rb));
    }
    if (comm.is_root()) writer->write_aux(0, "{\"a\":1}");
    writer->commit();
  }
  EXPECT_TRUE(fs::exists(out));
  EXPECT_FALSE(fs::exists(fs::path(out.string() + ".partial")));
  const auto reader = open_checkpoint(out);
  ASSERT_EQ(reader->tensors().size(), spec.tensors.size());
  for (std::size_t i = 0; i < spec.tensors.size(); ++i) {
    const TensorInfo* t = reader->find(spec.tensors[i].name);
    ASSERT_NE(t, nullptr) << spec.tensors[i].name;
    EXPECT_EQ(*t, spec.tensors[i]);
    EXPECT_EQ(reader->read(*t), pattern(spec.tensors[i], i)) << t->name;
    if (row_count(*t) >= 3) {  // a middle row range reads only those rows
      std::vector<std::byte> rows(row_bytes(*t));
      reader->read_rows(*t, 1, 1, rows);
      const auto all = pattern(spec.tensors[i], i);
      EXPECT_TRUE(std::equal(rows.begin(), rows.end(), all.begin() + static_cast<long>(row_bytes(*t))));
    }
  }
  if (GetParam() != "one.safetensors") {
    ASSERT_EQ(reader->aux_files().size(), 1u);
    EXPECT_EQ(reader->read_aux("config.json"), "{\"a\":1}");
  }
  if (GetParam() == "dir") {
    EXPECT_EQ(reader->metadata().at("format"), "pt");
  }
}

INSTANTIATE_TEST_SUITE_P(Formats, CheckpointIo, testing::Values("out.h5", "dir", "one.safetensors"));

TEST(CheckpointIoFailure, DiscardLeavesNothingAtTheFinalPath) {
  Communicator comm;
  SharedTempDir dir(comm);
  for (const std::string name : {"x.h5", "xdir", "x.safetensors"}) {
    const fs::path out = dir / name;
    {
      auto writer = create_checkpoint_writer(comm, out, test_spec());
      writer->discard();
    }
    EXPECT_FALSE(fs::exists(out)) << name;
    EXPECT_FALSE(fs::exists(fs::path(out.string() + ".partial"))) << name;
  }
}

TEST(CheckpointIoFailure, ExistingOutputIsRefusedOnEveryRankWithoutOverwrite) {
  Communicator comm;
  SharedTempDir dir(comm);
  const fs::path out = dir / "exists.h5";
  if (comm.is_root()) write_text_file(out, "keep me");
  comm.barrier();
  bool threw = false;
  try {
    create_checkpoint_writer(comm, out, test_spec());
  } catch (const Error& e) {
    threw = true;
    EXPECT_NE(std::string(e.what()).find("already exists"), std::string::npos) << e.what();
  }
  EXPECT_TRUE(threw);
  EXPECT_EQ(read_text_file(out), "keep me");
}

// The HDF5 writer lays out every dataset in its constructor: when that fails
// (here: a second dataset of the same name), no destructor runs, yet the
// partial file it created must go, on every rank's say.
TEST(CheckpointIoFailure, Hdf5WriterThatFailsToLayOutLeavesNoPartialFile) {
  Communicator comm;
  SharedTempDir dir(comm);
  const fs::path out = dir / "dup.h5";
  OutputSpec spec = test_spec();
  spec.tensors.push_back(spec.tensors.front());
  std::string message;
  try {
    create_checkpoint_writer(comm, out, spec);
  } catch (const Error& e) {
    message = e.what();
  }
  EXPECT_NE(message.find("a.weight"), std::string::npos) << message;
  comm.barrier();
  EXPECT_FALSE(fs::exists(out));
  EXPECT_FALSE(fs::exists(partial_output_path(out)));
}

// Carried-file names an output would write outside itself or over its own
// weights are refused before anything is created.
TEST(CheckpointIoFailure, BadCarriedFileNamesAreRefusedBeforeAnythingIsCreated) {
  Communicator comm;
  SharedTempDir dir(comm);
  for (const std::string& bad : std::vector<std::string>{"../x", "/tmp/x", "model.safetensors", "model-00001-of-00002.safetensors", "..", "",
                                "model.safetensors.index.json", std::string("a\0b", 3)}) {
    for (const std::string name : {"bad.h5", "baddir"}) {
      OutputSpec spec = test_spec();
      spec.aux_files = {{bad, 1}};
      const fs::path out = dir / name;
      EXPECT_THROW(create_checkpoint_writer(comm, out, spec), InputError) << printable(bad);
      EXPECT_FALSE(fs::exists(partial_output_path(out))) << printable(bad);
    }
  }
  OutputSpec twice = test_spec();
  twice.aux_files = {{"config.json", 1}, {"config.json", 1}};
  EXPECT_THROW(create_checkpoint_writer(comm, dir / "twice", twice), InputError);
}

TEST(Collective, AFailureOnOneRankIsRaisedOnAllWithItsMessage) {
  Communicator comm;
  const int failing = comm.size() - 1;
  std::string message;
  try {
    collectively(comm, [&] {
      if (comm.rank() == failing) throw InputError("tensor 'x' is broken");
    });
  } catch (const Error& e) {
    message = e.what();
  }
  // The rank is named when it is not the coordinator.
  EXPECT_EQ(message, failing == 0 ? std::string("tensor 'x' is broken")
                                  : fmt::format("rank {}: tensor 'x' is broken", failing));
}

}  // namespace
}  // namespace soupkit
