// Fuzzes the sharded model directory reader: the input is
// model.safetensors.index.json, in a directory that also holds two valid
// shards (the seeds refer to them) for open_checkpoint to find.
#include "fuzz_support.hpp"
#include "soupkit/io/checkpoint.hpp"

namespace {

using namespace soupkit;

void write_shard(const fs::path& path, const std::vector<TensorInfo>& tensors) {
  const SafetensorsLayout layout = layout_safetensors(tensors, {});
  const File out = File::open_write(path, true);
  out.pwrite_all(0, std::as_bytes(std::span(layout.header)));
  out.truncate(layout.file_size);
}

const fs::path& model_dir() {
  static const fs::path dir = [] {
    const fs::path d = fuzz::scratch_dir() / "model";
    fs::create_directories(d);
    write_shard(d / "model-00001-of-00002.safetensors", {{"a", DType::F32, {2, 2}}});
    write_shard(d / "model-00002-of-00002.safetensors", {{"b", DType::BF16, {3}}, {"c", DType::I64, {}}});
    write_text_file(d / "config.json", "{}");
    return d;
  }();
  return dir;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const fs::path& dir = model_dir();
  fuzz::write_input(dir / "model.safetensors.index.json", data, size);
  fuzz::expect_clean_outcome(dir.string(), [&] {
    const auto reader = open_checkpoint(dir);
    for (const auto& t : reader->tensors()) (void)reader->location(t);
    (void)reader->aux_files();
  });
  return 0;
}
