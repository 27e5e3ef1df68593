#include "commands.hpp"

#include <map>

namespace soupkit::cli {

const CommandFunction* find_command(const std::string& name) {
  static const std::map<std::string, CommandFunction> commands = {
      {"convert", cmd_convert}, {"inspect", cmd_inspect}, {"example", cmd_example},
      {"monosoup", cmd_monosoup}, {"soup", cmd_soup}, {"transplant", cmd_transplant}, {"run", cmd_run},
  };
  const auto it = commands.find(name);
  return it == commands.end() ? nullptr : &it->second;
}

}  // namespace soupkit::cli
