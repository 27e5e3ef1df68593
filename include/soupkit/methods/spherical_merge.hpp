#pragma once
// What mergekit's spherical merges (slerp, nuslerp, multislerp, karcher)
// share on top of TensorMerge: they interpolate a few vectors ("operands":
// some models' tensors, or those minus the base's, task vectors), and most
// need whole-tensor statistics first (norms and angles: the operands' Gram
// matrix) before any output row can be written. So a float tensor costs
//   - a statistics pass: every operand's rows read block by block, the Gram
//     matrix accumulated exactly one row at a time (linalg/gram.hpp), so it
//     does not depend on the block size, the memory budget or the rank count;
//   - a writing pass: the rows read again and combined into the output with
//     coefficients computed from the statistics.
// Memory: one row block per operand, the base's and the output's, within the
// engine's chunk size; never a whole tensor.
#include "soupkit/linalg/gram.hpp"
#include "soupkit/methods/tensor_merge.hpp"

#include <functional>

namespace soupkit {

class SphericalMerge : public TensorMerge {
 protected:
  using TensorMerge::TensorMerge;

  // The vectors a method interpolates, for one tensor: the tensors of
  // `models`, each minus the base's when `minus_base`.
  struct Operands {
    std::vector<std::size_t> models;
    bool minus_base = false;
  };
  // Rows [first, first + count) of every operand (v[i], count * row_length
  // float64 each) and, when the operands are task vectors, of the base.
  struct Block {
    std::uint64_t first, count, row_length;
    const std::vector<std::vector<double>>& v;
    const std::vector<double>& base;
  };
  using BlockVisitor = std::function<void(const Block&)>;
  // Fills `values` (count * row_length) with a block's output rows.
  using BlockCombiner = std::function<void(const Block&, std::vector<double>& values)>;

  // One pass over the tensor, block by block in row order.
  void visit_blocks(const Inputs& in, const TensorInfo& out, const Operands& ops, const BlockVisitor& visit);
  // One pass: the operands' Gram matrix over the whole tensor (one piece per
  // row). InputError naming the tensor when an input holds inf or NaN.
  linalg::Gram whole_gram(const Inputs& in, const TensorInfo& out, const Operands& ops);
  // One pass writing output tensor `index` from each block's combination.
  void write_blocks(std::size_t index, const Inputs& in, const TensorInfo& out, const Operands& ops,
                    CheckpointWriter& writer, const BlockCombiner& combine);
  // Writes sum_i c_i v_i (+ the base when the operands are task vectors),
  // accumulated in operand order per element.
  void write_combination(std::size_t index, const Inputs& in, const TensorInfo& out, const Operands& ops,
                         const std::vector<double>& c, CheckpointWriter& writer);
  // Writes model m's tensor unchanged (mergekit returns the input of a
  // tensor that has one; rounded to the configuration's dtype as any input).
  void copy_model(std::size_t index, const Inputs& in, const TensorInfo& out, std::size_t m, CheckpointWriter& writer);

 private:
  std::vector<std::vector<double>> operand_rows_;
  std::vector<double> base_rows_, values_;
};

}  // namespace soupkit
