#pragma once
// What a torch.save pickle holds, as a checkpoint: the state dict's tensors
// (name, dtype, shape and the strided view of a storage each shows) and the
// storages they use. The file formats (zip, legacy) say where a storage's
// bytes are.
#include "strided_read.hpp"
#include "torch_pickle.hpp"

#include "soupkit/io/tensor.hpp"

#include <string>
#include <vector>

namespace soupkit::detail {

struct TorchTensor {
  TensorInfo info;
  std::size_t storage = 0;  // index into TorchStateDict::storages
  StridedLayout layout;
};

struct TorchStateDict {
  std::vector<TorchStorageRef> storages;  // only those the tensors use
  std::vector<TorchTensor> tensors;       // in the dict's order
};

// Picks the state dict in the pickle's top-level dict and checks every
// tensor in it against its storage's declared size. The rule for nested
// checkpoints: a top-level dict holding at least one tensor is the state
// dict; one holding none is a training checkpoint, whose state dict is the
// one of its values under "state_dict", "model" or "module" that is a dict
// holding tensors, if exactly one is (anything else is refused, listing the
// keys). Values of the state dict that are not tensors (ints, strings,
// nested dicts, ...) are skipped, with one debug line listing them.
// `where` names the file in messages.
TorchStateDict torch_state_dict(const TorchPickle& pickle, const std::string& where);

}  // namespace soupkit::detail
