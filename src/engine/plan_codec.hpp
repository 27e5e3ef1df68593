#pragma once
// The coordinator's plan as text for the other ranks: the output, each
// task's estimates and placement, and the method's serialised state. (A
// task's sources are for --dry-run on the coordinator and are not sent.)
#include "soupkit/engine/engine.hpp"

#include <string>

namespace soupkit {

std::string encode_plan(const MethodPlan& plan);
MethodPlan decode_plan(const std::string& text);

}  // namespace soupkit
