#include "soupkit/linalg/counter_random.hpp"

namespace soupkit::linalg {
namespace {

constexpr std::uint64_t kGolden = 0x9E37'79B9'7F4A'7C15ull;  // SplitMix64's increment
constexpr std::uint64_t kFnvOffset = 0xCBF2'9CE4'8422'2325ull;
constexpr std::uint64_t kFnvPrime = 0x0000'0100'0000'01B3ull;
constexpr double kTwoToMinus53 = 1.0 / 9007199254740992.0;

}  // namespace

std::uint64_t splitmix64_mix(std::uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58'476D'1CE4'E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D0'49BB'1331'11EBull;
  return z ^ (z >> 31);
}

std::uint64_t fnv1a64(std::string_view bytes) {
  std::uint64_t h = kFnvOffset;
  for (const char c : bytes) {
    h ^= static_cast<unsigned char>(c);
    h *= kFnvPrime;
  }
  return h;
}

CounterStream::CounterStream(std::uint64_t seed, std::string_view tensor_name, std::uint64_t model_index)
    : key_(splitmix64_mix(splitmix64_mix(splitmix64_mix(seed) ^ fnv1a64(tensor_name)) ^ model_index)) {}

std::uint64_t CounterStream::bits(std::uint64_t index) const { return splitmix64_mix(key_ + (index + 1) * kGolden); }

double CounterStream::uniform(std::uint64_t index) const {
  return static_cast<double>(bits(index) >> 11) * kTwoToMinus53;
}

}  // namespace soupkit::linalg
