#pragma once
// mergekit's GeneralizedTaskArithmeticMerge (mergekit/merge_methods/
// generalized_task_arithmetic.py): one computation, registered under eight
// names that differ only in four fixed attributes (registry.py):
//
//   method            consensus  sparsification      normalize  rescale
//   task_arithmetic   none       none                false      false
//   ties              sum        magnitude           true       false
//   dare_linear       none       random              false      true
//   dare_ties         sum        random              false      true
//   breadcrumbs       none       magnitude_outliers  false      false
//   breadcrumbs_ties  sum        magnitude_outliers  false      false
//   della_linear      none       della_magprune      false      true
//   della             sum        della_magprune      true       true
//
// Each registered method is one GtaVariant, a row of the table in
// src/methods/gta_methods.cpp (mergekit's registry.py); its parameters
// (weight, density, and gamma or epsilon per model; lambda, normalize,
// rescale, int8_mask global) and their defaults follow from it, as they do
// in mergekit. The definition and soupkit's departures are in
// docs/merge_methods_spec.md; the computation in
// src/methods/generalized_task_arithmetic.cpp.
#include "soupkit/methods/delta_sparsifier.hpp"
#include "soupkit/methods/method_registry.hpp"

#include <memory>
#include <string>

namespace soupkit {

enum class Consensus { None, Sum };

struct GtaVariant {
  std::string command;       // "dare-ties"
  std::string merge_method;  // "dare_ties"
  std::string summary;       // one line for soupkit --help
  Consensus consensus = Consensus::None;
  Sparsification sparsification = Sparsification::None;
  bool default_normalize = false;
  bool default_rescale = false;
};

// The merge of `in` as `variant` defines it (`spec`: its registry entry).
std::unique_ptr<Method> make_gta_method(const GtaVariant& variant, const MergeMethodSpec& spec, const MergeInputs& in);

}  // namespace soupkit
