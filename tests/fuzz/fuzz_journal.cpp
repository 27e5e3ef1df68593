// Fuzzes the resume journal reader: the input is OUT.journal, opened with
// --resume by a job whose fingerprint is "fuzz-fingerprint" (the seeds carry
// it, so mutations get past the header check) and whose output has the
// tensors "a" and "b".
#include "fuzz_support.hpp"
#include "engine/journal.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace soupkit;
  const fs::path out = fuzz::scratch_dir() / "out.safetensors";
  fuzz::write_input(Journal::path_for(out), data, size);
  fuzz::expect_clean_outcome(out.string(), [&] {
    Journal journal(out, "fuzz-fingerprint", /*resume=*/true, {"a", "b"});
    for (const auto& [index, entry] : journal.finished()) (void)entry.record.dump();
  });
  return 0;
}
