#pragma once
// Progress inside one tensor. A long tensor (a large matrix streamed in
// many row blocks, thousands of OMP batches, the steps of a distributed
// SVD) must show the user it is moving before it finishes: a method calls
// report_tensor_progress from its loops, and the engine carries the
// fraction to the coordinator's progress display.
//
// Rows a method writes through the engine's writer already count (rows
// written / rows of the tensor) for a tensor computed on one rank; a method
// reports explicitly when most of its time is spent before it writes (an
// SVD, a sparse fit) or when it computes on a grid. Once a method reports
// for a tensor, its reports alone count for that tensor, so they should
// cover all of its work (the writes too).
#include <cstdint>

namespace soupkit {

// `done` of `total` units (rows, batches, steps: only the ratio counts) of
// the tensor this rank is computing. Cheap enough for every row block:
// throttled (at most a few messages a second), never blocks, never
// communicates collectively. Outside a tensor's computation, on a thread
// other than the one the engine called compute() on, or on a grid rank
// other than the group's first, it does nothing.
void report_tensor_progress(std::uint64_t done, std::uint64_t total);

}  // namespace soupkit
