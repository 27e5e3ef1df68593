// Fuzzes the tokenizer decoder: the input is tokenizer.json of a model
// directory (with a one-tensor model.safetensors); a tokenizer that reads is
// then matched against itself, as a transplant would.
#include "fuzz_support.hpp"
#include "soupkit/io/checkpoint.hpp"
#include "soupkit/io/tokenizer.hpp"
#include "soupkit/methods/token_matching.hpp"

namespace {

using namespace soupkit;

const fs::path& model_dir() {
  static const fs::path dir = [] {
    const fs::path d = fuzz::scratch_dir() / "model";
    fs::create_directories(d);
    const SafetensorsLayout layout = layout_safetensors({{"embed", DType::F32, {4, 2}}}, {});
    const File out = File::open_write(d / "model.safetensors", true);
    out.pwrite_all(0, std::as_bytes(std::span(layout.header)));
    out.truncate(layout.file_size);
    return d;
  }();
  return dir;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const fs::path& dir = model_dir();
  fuzz::write_input(dir / "tokenizer.json", data, size);
  fuzz::expect_clean_outcome(dir.string(), [&] {
    const auto model = open_checkpoint(dir);
    const Tokenizer tokenizer = read_tokenizer(*model);
    (void)match_tokens(tokenizer, tokenizer);
  });
  return 0;
}
