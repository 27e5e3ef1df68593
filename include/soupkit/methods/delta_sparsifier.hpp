#pragma once
// mergekit's sparsifications of one model's task vector (mergekit/sparsify.py,
// docs/merge_methods_spec.md), as keep masks streamed block by block:
//   Magnitude          (`magnitude`, TIES): the k = int(density * N) largest magnitudes;
//   MagnitudeOutliers  (`magnitude_outliers`, breadcrumbs): positions n_bot up to
//                      N - n_top of the ascending magnitude order, as mergekit's
//                      slice indices[n_bot:-n_top] picks them (an empty slice when n_top = 0);
//   Random             (`bernoulli`, DARE): each element with probability density;
//   DellaMagprune      (`della_magprune`, DELLA): each element with a probability rising
//                      linearly with its magnitude rank in its row, from
//                      density - epsilon to density + epsilon.
// The magnitude orders are total: equal magnitudes rank the lower flat index
// as the larger (mergekit's unstable sorts leave it open). The random draws
// are linalg::CounterStream's (seed, tensor, model index, flat index).
// Rescaling (mergekit's `rescale`) is the caller's: it needs the masks only.
#include "soupkit/io/tensor.hpp"
#include "soupkit/linalg/magnitude_select.hpp"

#include <cstdint>
#include <memory>
#include <span>
#include <string>

namespace soupkit {

enum class Sparsification { None, Magnitude, Random, MagnitudeOutliers, DellaMagprune };

// One model's sparsification of one tensor: what mergekit's sparsify() is given.
struct SparsifyRequest {
  Sparsification method = Sparsification::None;
  const TensorInfo* tensor = nullptr;  // name and shape
  std::string model;                   // "models[1] (path)", for messages
  std::uint64_t model_index = 0;       // in the job's model list (the random stream's)
  double density = 1, gamma = 0, epsilon = 0;
  std::uint64_t seed = 0;
};

class DeltaSparsifier {
 public:
  virtual ~DeltaSparsifier() = default;
  // The passes over the task vector needed before any mask (the exact
  // thresholds of the magnitude methods; the ranks of a 1-D tensor for
  // DELLA); `max_bytes` caps what a selection holds.
  virtual void prepare(const linalg::BlockSource& task_vector, std::size_t max_bytes) {
    (void)task_vector;
    (void)max_bytes;
  }
  // A pass over the tensor: begin_pass, then keep_mask for consecutive
  // blocks of whole rows in flat order, then end_pass (which checks the pass
  // saw the tensor the thresholds were found on).
  virtual void begin_pass() {}
  // mask[j] = 1 if element first + j (flat index) is kept; delta holds those
  // elements of the task vector.
  virtual void keep_mask(std::span<const double> delta, std::uint64_t first, std::span<std::uint8_t> mask) = 0;
  virtual void end_pass() {}
  // Whether every mask is all zeros (a task vector dropped whole).
  virtual bool keeps_nothing() const { return false; }
};

// The sparsifier of `r`, or nullptr when it keeps the whole task vector
// (density >= 1, or a selection of every element) and mergekit returns it
// unchanged. Throws InputError naming tensor, model and parameter where
// mergekit stops (a magnitude density keeping nothing; a negative DARE
// density; DELLA's density +/- epsilon outside (0, 1), or rows of one element).
std::unique_ptr<DeltaSparsifier> make_sparsifier(const SparsifyRequest& r);

// Bytes a sparsifier of `method` holds for the whole of `tensor` besides row
// blocks (its selections' cap; a 1-D tensor's DELLA probabilities).
std::uint64_t sparsifier_held_bytes(Sparsification method, const TensorInfo& tensor, std::size_t selection_cap);

// Extra float64 values per element of a row block a sparsifier's keep_mask
// needs (DELLA's rank order).
std::uint64_t sparsifier_block_values(Sparsification method);

}  // namespace soupkit
