// Fuzzes read_safetensors_header: the input is a whole .safetensors file.
// A header that parses must also survive the writer: laid out again by
// layout_safetensors and read back, it must describe the same tensors (a
// name or shape the writer changes is silently wrong output).
#include "fuzz_support.hpp"
#include "soupkit/io/safetensors.hpp"

#include <map>
#include <tuple>

namespace {

using namespace soupkit;

std::map<std::string, std::tuple<DType, Shape>> described(const SafetensorsHeader& header) {
  std::map<std::string, std::tuple<DType, Shape>> tensors;
  for (const auto& e : header.entries) tensors[e.info.name] = {e.info.dtype, e.info.shape};
  return tensors;
}

void expect_layout_round_trip(const SafetensorsHeader& header, const fs::path& copy) {
  std::vector<TensorInfo> infos;
  for (const auto& e : header.entries) infos.push_back(e.info);
  const SafetensorsLayout layout = layout_safetensors(infos, header.metadata);
  {
    const File out = File::open_write(copy, true);
    out.pwrite_all(0, std::as_bytes(std::span(layout.header)));
    out.truncate(layout.file_size);  // the data: zeros, sparse
  }
  const SafetensorsHeader again = read_safetensors_header(File::open_read(copy));
  if (described(again) != described(header) || again.metadata != header.metadata)
    fuzz::finding("written header differs from the one read", copy.string());
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const fs::path input = fuzz::scratch_dir() / "input.safetensors";
  fuzz::write_input(input, data, size);
  fuzz::expect_clean_outcome(input.filename().string(), [&] {
    const SafetensorsHeader header = read_safetensors_header(File::open_read(input));
    // Errors from here on name the copy, which has the same stem.
    expect_layout_round_trip(header, fuzz::scratch_dir() / "input.safetensors.copy");
  });
  return 0;
}
