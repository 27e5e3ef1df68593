// --dry-run lists tensors in natural order: runs of digits compare as numbers.
#include "engine/plan_table.hpp"

#include <gtest/gtest.h>

namespace soupkit {
namespace {

TEST(PlanTable, NaturalOrderComparesDigitRunsAsNumbers) {
  std::vector<TensorInfo> tensors;
  for (const char* name : {"h.10.w", "h.2.w", "h.1.w", "h.02.x", "a", "h.2.b", "h.100", "h.9", "lm_head"})
    tensors.push_back({name, DType::F32, {1}});
  std::vector<std::string> got;
  for (const std::size_t i : natural_order(tensors)) got.push_back(tensors[i].name);
  // (h.02.x and h.2.* are the same number; then '.x' after '.w' and '.b' by the text that follows)
  EXPECT_EQ(got, (std::vector<std::string>{"a", "h.1.w", "h.2.b", "h.2.w", "h.02.x", "h.9", "h.10.w", "h.100",
                                            "lm_head"}));
}

}  // namespace
}  // namespace soupkit
