#include "soupkit/methods/method_registry.hpp"

#include "soupkit/util/error.hpp"

#include <fmt/format.h>

#include <set>

namespace soupkit {

// The methods of the family, one line each: X(name) registers the spec that
// src/methods/<name>.cpp returns from `MergeMethodSpec <name>_spec()`.
// (An explicit list: a static library keeps no object file that nothing
// references, so self-registering methods would silently vanish.)
#define SOUPKIT_MERGE_METHODS(X) \
  X(linear)                      \
  X(passthrough)                 \
  X(task_arithmetic)             \
  X(ties)                        \
  X(slerp)                       \
  X(nuslerp)                     \
  X(multislerp)                  \
  X(karcher)                     \
  X(dare_linear)                 \
  X(dare_ties)                   \
  X(breadcrumbs)                 \
  X(breadcrumbs_ties)            \
  X(della_linear)                \
  X(della)                       \
  X(sce)                         \
  X(model_stock)                 \
  X(nearswap)                    \
  X(arcee_fusion)                \
  /* (end of the list) */

#define SOUPKIT_DECLARE_SPEC(name) MergeMethodSpec name##_spec();
SOUPKIT_MERGE_METHODS(SOUPKIT_DECLARE_SPEC)
#undef SOUPKIT_DECLARE_SPEC

namespace {

std::size_t kind_index(ParameterKind kind) {
  switch (kind) {
    case ParameterKind::Number: return 0;
    case ParameterKind::Bool: return 1;
    case ParameterKind::Size: return 2;
  }
  return 3;
}

bool snake_case(const std::string& name) {
  return !name.empty() && name.find_first_not_of("abcdefghijklmnopqrstuvwxyz0123456789_") == std::string::npos;
}

// A spec is code, not input: a malformed one is a bug, reported at start-up.
void check(const MergeMethodSpec& spec) {
  SOUPKIT_ERROR_IF(spec.name.empty() || spec.merge_methods.empty() || spec.summary.empty() || !spec.build,
                   "internal: merge method spec '{}' lacks a name, merge_method names, summary or factory", spec.name);
  std::set<std::string> names;
  for (const auto& p : spec.parameters) {
    SOUPKIT_ERROR_IF(!snake_case(p.name) || !names.insert(p.name).second,
                     "internal: {}: parameter '{}' is not a new snake_case name", spec.name, p.name);
    SOUPKIT_ERROR_IF(p.default_value && p.default_value->index() != kind_index(p.kind),
                     "internal: {}: the default of '{}' is not of its kind", spec.name, p.name);
    SOUPKIT_ERROR_IF(p.per_model == p.list_option.empty(), "internal: {}: '{}' needs a list option if and only if it "
                     "is per model", spec.name, p.name);
  }
}

}  // namespace

bool same_model(const fs::path& a, const fs::path& b) {
  if (a.lexically_normal() == b.lexically_normal()) return true;
  std::error_code ec;
  return fs::equivalent(a, b, ec);
}

void add_base_model(const fs::path& base, std::string name, MergeInputs& in) {
  for (std::size_t i = 0; i < in.models.size(); ++i)
    if (same_model(in.models[i], base)) {
      in.parameters.base_index = i;
      return;
    }
  in.models.push_back(base);
  in.parameters.per_model.emplace_back();
  in.parameters.model_names.push_back(fmt::format("{} ({})", name, base.string()));
  in.parameters.base_index = in.models.size() - 1;
}

const std::vector<MergeMethodSpec>& merge_method_specs() {
#define SOUPKIT_SPEC(name) name##_spec(),
  static const std::vector<MergeMethodSpec> specs = [] {
    std::vector<MergeMethodSpec> all = {SOUPKIT_MERGE_METHODS(SOUPKIT_SPEC)};
    for (const auto& spec : all) check(spec);
    return all;
  }();
#undef SOUPKIT_SPEC
  return specs;
}

}  // namespace soupkit
