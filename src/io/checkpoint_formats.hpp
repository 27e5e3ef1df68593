#pragma once
// Format-specific readers and writers behind open_checkpoint() and
// create_checkpoint_writer(); nothing else should name them.
#include "soupkit/io/checkpoint.hpp"

namespace soupkit::detail {

std::unique_ptr<CheckpointReader> open_safetensors_file(const fs::path& path);
// A model directory: safetensors weights if it has them, else PyTorch's
// (pytorch_model.bin, or shards by pytorch_model.bin.index.json).
std::unique_ptr<CheckpointReader> open_model_directory(const fs::path& dir);
// A file torch.save wrote (zip or legacy format).
std::unique_ptr<CheckpointReader> open_torch_checkpoint(const fs::path& path);
std::unique_ptr<CheckpointReader> open_hdf5_checkpoint(const fs::path& path);

std::unique_ptr<CheckpointWriter> create_safetensors_writer(const Communicator& comm, const fs::path& path,
                                                            OutputSpec spec, bool directory, WriterMode mode);
std::unique_ptr<CheckpointWriter> create_hdf5_writer(const Communicator& comm, const fs::path& path, OutputSpec spec,
                                                     WriterMode mode);

// Checks a write_rows request against the tensor and returns its byte offset
// within the tensor; throws Error naming the output and tensor if it is off.
std::uint64_t checked_row_range(const fs::path& out, const TensorInfo& t, std::uint64_t first_row, std::uint64_t rows,
                                std::size_t bytes);

}  // namespace soupkit::detail
