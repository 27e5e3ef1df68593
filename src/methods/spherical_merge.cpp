#include "soupkit/methods/spherical_merge.hpp"

#include "soupkit/util/error.hpp"

namespace soupkit {

void SphericalMerge::visit_blocks(const Inputs& in, const TensorInfo& out, const Operands& ops,
                                  const BlockVisitor& visit) {
  const std::uint64_t rows = row_count(out), step = block_rows(out, in), length = row_elements(out);
  operand_rows_.resize(ops.models.size());
  for (std::uint64_t first = 0; first < rows; first += step) {
    const std::uint64_t count = std::min(step, rows - first);
    if (ops.minus_base) read_rows(*base_index(), in, first, count, base_rows_);
    for (std::size_t i = 0; i < ops.models.size(); ++i) {
      std::vector<double>& v = operand_rows_[i];
      read_rows(ops.models[i], in, first, count, v);
      if (ops.minus_base)
        for (std::size_t j = 0; j < v.size(); ++j) v[j] -= base_rows_[j];
    }
    visit(Block{first, count, length, operand_rows_, base_rows_});
  }
}

linalg::Gram SphericalMerge::whole_gram(const Inputs& in, const TensorInfo& out, const Operands& ops) {
  linalg::GramAccumulator acc(ops.models.size());
  std::vector<const double*> pieces(ops.models.size());
  visit_blocks(in, out, ops, [&](const Block& b) {
    for (std::uint64_t r = 0; r < b.count; ++r) {
      for (std::size_t i = 0; i < pieces.size(); ++i) pieces[i] = b.v[i].data() + r * b.row_length;
      acc.add(pieces.data(), b.row_length);
    }
  });
  linalg::Gram g = acc.result();
  SOUPKIT_INPUT_ERROR_IF(!g.finite(), "tensor '{}': its norms are not finite numbers (a model holds inf or NaN, or "
                         "values too large to square in float64); mergekit would write NaN",
                         out.name);
  return g;
}

void SphericalMerge::write_blocks(std::size_t index, const Inputs& in, const TensorInfo& out, const Operands& ops,
                                  CheckpointWriter& writer, const BlockCombiner& combine) {
  visit_blocks(in, out, ops, [&](const Block& b) {
    values_.resize(b.count * b.row_length);
    combine(b, values_);
    write_rows(index, out, b.first, b.count, values_, writer);
  });
}

void SphericalMerge::write_combination(std::size_t index, const Inputs& in, const TensorInfo& out,
                                       const Operands& ops, const std::vector<double>& c, CheckpointWriter& writer) {
  SOUPKIT_ERROR_IF(c.size() != ops.models.size() || c.empty(), "internal: {} coefficients for {} operands", c.size(),
                   ops.models.size());
  write_blocks(index, in, out, ops, writer, [&](const Block& b, std::vector<double>& values) {
    for (std::size_t j = 0; j < values.size(); ++j) {
      double acc = c[0] * b.v[0][j];
      for (std::size_t i = 1; i < c.size(); ++i) acc += c[i] * b.v[i][j];
      values[j] = ops.minus_base ? b.base[j] + acc : acc;
    }
  });
}

void SphericalMerge::copy_model(std::size_t index, const Inputs& in, const TensorInfo& out, std::size_t m,
                                CheckpointWriter& writer) {
  write_blocks(index, in, out, Operands{{m}, false}, writer,
               [](const Block& b, std::vector<double>& values) { values = b.v[0]; });
}

}  // namespace soupkit
