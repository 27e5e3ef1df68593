#pragma once
// One function per `soupkit` sub-command. Each parses its own options and
// returns the process exit status.
#include "soupkit/parallel/communicator.hpp"

#include <string>
#include <vector>

namespace soupkit::cli {

using Args = std::vector<std::string>;

int cmd_convert(const Communicator& comm, const Args& args);
int cmd_inspect(const Communicator& comm, const Args& args);
int cmd_example(const Communicator& comm, const Args& args);
int cmd_monosoup(const Communicator& comm, const Args& args);
int cmd_soup(const Communicator& comm, const Args& args);
int cmd_run(const Communicator& comm, const Args& args);

using CommandFunction = int (*)(const Communicator&, const Args&);
// The sub-command called `name`, or nullptr.
const CommandFunction* find_command(const std::string& name);
int cmd_transplant(const Communicator& comm, const Args& args);

}  // namespace soupkit::cli
