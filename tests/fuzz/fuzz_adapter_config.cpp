// Fuzzes the LoRA adapter reader through its config: the input is
// adapter_config.json of an adapter directory whose adapter_model.safetensors
// holds rank-2 factors of two modules (one square, one not, so fan_in_fan_out
// changes which shapes fit) and a whole tensor, on a fixed base. An adapter
// that opens is then read: every tensor's update and its first row.
#include "fuzz_support.hpp"
#include "soupkit/io/checkpoint.hpp"

namespace {

using namespace soupkit;

void write_zero_tensors(const fs::path& path, const std::vector<TensorInfo>& tensors) {
  const SafetensorsLayout layout = layout_safetensors(tensors, {});
  const File out = File::open_write(path, true);
  out.pwrite_all(0, std::as_bytes(std::span(layout.header)));
  out.truncate(layout.file_size);  // zeros: finite factors, any scale
}

struct Dirs {
  fs::path base, adapter, reference;
};

const Dirs& dirs() {
  static const Dirs d = [] {
    Dirs made{fuzz::scratch_dir() / "base", fuzz::scratch_dir() / "adapter", {}};
    fs::create_directories(made.base);
    fs::create_directories(made.adapter);
    write_zero_tensors(made.base / "model.safetensors", {{"model.q.weight", DType::F32, {3, 3}},
                                                         {"model.up.weight", DType::BF16, {4, 3}},
                                                         {"model.norm.weight", DType::F32, {3}}});
    write_zero_tensors(made.adapter / "adapter_model.safetensors",
                       {{"base_model.model.model.q.lora_A.weight", DType::F32, {2, 3}},
                        {"base_model.model.model.q.lora_B.weight", DType::F32, {3, 2}},
                        {"base_model.model.model.up.lora_A.weight", DType::F32, {2, 3}},
                        {"base_model.model.model.up.lora_B.weight", DType::F32, {4, 2}},
                        {"base_model.model.model.norm.weight", DType::F32, {3}}});
    made.reference = made.base.string() + "+" + made.adapter.string();
    return made;
  }();
  return d;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const Dirs& d = dirs();
  fuzz::write_input(d.adapter / "adapter_config.json", data, size);
  fuzz::expect_clean_outcome(d.adapter.string(), [&] {
    const auto reader = open_checkpoint(d.reference);
    for (const auto& t : reader->tensors()) {
      (void)reader->location(t);
      if (const auto update = reader->low_rank_update(t)) {
        if (update->left.size() != update->m * update->r || update->right.size() != update->r * update->n)
          fuzz::finding("update factors of the wrong size", t.name);
      }
      std::vector<std::byte> row(t.nbytes() / std::max<std::uint64_t>(1, t.shape.empty() ? 1 : t.shape[0]));
      reader->read_rows(t, 0, 1, row);
    }
  });
  return 0;
}
