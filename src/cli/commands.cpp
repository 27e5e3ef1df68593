#include "commands.hpp"

#include "soupkit/methods/method_registry.hpp"
#include "soupkit/util/error.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <set>

namespace soupkit::cli {
namespace {

// Names must not collide: a second command or merge_method of one name
// would never be reached. Checked once, when the list is built.
void check_unique(const std::vector<Command>& all) {
  std::set<std::string> names, merge_methods;
  for (const auto& c : all) {
    SOUPKIT_ERROR_IF(!names.insert(c.name).second, "internal: two commands are called '{}'", c.name);
    const bool readable = c.translate || c.run_merge;
    SOUPKIT_ERROR_IF(c.merge_methods.empty() != !readable || (c.translate && !c.options) ||
                         (c.translate && c.run_merge) || (!c.run_merge != !c.merge_spec),
                     "internal: command '{}' needs merge_method names and one way to read a job (a translation "
                     "with its options, or a merge spec) together",
                     c.name);
    for (const auto& m : c.merge_methods)
      SOUPKIT_ERROR_IF(!merge_methods.insert(m).second, "internal: merge_method '{}' names two commands", m);
  }
}

}  // namespace

const std::vector<Command>& commands() {
  static const std::vector<Command> all = [] {
    // The one list of commands, in help order; the merge methods of the
    // family (src/methods/method_registry.cpp) come after the soups.
    std::vector<Command> list = {
        monosoup_command(),
        soup_command(),
    };
    for (const MergeMethodSpec& spec : merge_method_specs()) list.push_back(method_command(spec));
    for (auto command : {
             transplant_command(),
             convert_command(),
             inspect_command(),
             example_command(),
             run_command(),
         })
      list.push_back(std::move(command));
    check_unique(list);
    return list;
  }();
  return all;
}

const Command* find_command(const std::string& name) {
  for (const auto& c : commands())
    if (c.name == name) return &c;
  return nullptr;
}

const Command* find_merge_method(const std::string& merge_method) {
  for (const auto& c : commands())
    if (std::find(c.merge_methods.begin(), c.merge_methods.end(), merge_method) != c.merge_methods.end()) return &c;
  return nullptr;
}

std::vector<std::string> merge_method_names() {
  std::vector<std::string> names;
  for (const auto& c : commands()) names.insert(names.end(), c.merge_methods.begin(), c.merge_methods.end());
  std::sort(names.begin(), names.end());
  return names;
}

std::string usage_text() {
  std::size_t width = 0;
  for (const auto& c : commands()) width = std::max(width, c.name.size());
  std::string text = "usage: soupkit <command> [options]\n\ncommands:\n";
  for (const auto& c : commands()) text += fmt::format("  {:<{}}  {}\n", c.name, width, c.summary);
  text += "\nCheckpoints: a .safetensors file, a Hugging Face model directory (model.safetensors or\n"
          "sharded with model.safetensors.index.json; pytorch_model.bin[.index.json] as inputs), a soupkit\n"
          ".h5 file, or as an input a file torch.save wrote (.pt, .pth, .bin).\n"
          "Run 'soupkit <command> --help' for a command's usage and options, 'soupkit run --help' for the\n"
          "merge_method names of job files. Run under mpirun/srun to use many ranks.\n";
  return text;
}

}  // namespace soupkit::cli
