// The command registry: `soupkit --help` lists every registered command
// (soup included), every merge_method reaches the command that registered
// it, help prints defaults without float noise, and the merge-method specs
// are well formed.
#include "cli/commands.hpp"
#include "soupkit/methods/method_registry.hpp"
#include "soupkit/util/error.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <regex>
#include <set>
#include <sstream>

namespace soupkit::cli {
namespace {

TEST(Commands, HelpListsEveryRegisteredCommand) {
  const std::string help = usage_text();
  std::set<std::string> names;
  for (const auto& c : commands()) {
    names.insert(c.name);
    EXPECT_FALSE(c.summary.empty()) << c.name;
    EXPECT_TRUE(c.usage.starts_with("soupkit " + c.name)) << c.usage;
    EXPECT_NE(help.find("  " + c.name + " "), std::string::npos) << c.name << " not in:\n" << help;
    EXPECT_NE(help.find(c.summary), std::string::npos) << c.summary;
  }
  // The hand-written help once left `soup` out; the family's methods come from their specs.
  for (const char* expected : {"monosoup", "soup", "task-arithmetic", "transplant", "convert", "inspect", "example", "run"})
    EXPECT_TRUE(names.count(expected)) << expected;
  for (const auto& spec : merge_method_specs()) EXPECT_TRUE(names.count(spec.name)) << spec.name;
  EXPECT_EQ(names.size(), commands().size()) << "two commands of one name";
}

TEST(Commands, LookupByNameAndMergeMethod) {
  EXPECT_EQ(find_command("soup")->name, "soup");
  EXPECT_EQ(find_command("nope"), nullptr);
  EXPECT_EQ(find_merge_method("linear")->name, "linear");
  EXPECT_EQ(find_merge_method("model_soup")->name, "soup");
  EXPECT_EQ(find_merge_method("greedy_soup")->name, "soup");
  EXPECT_EQ(find_merge_method("tokenizer_transplant")->name, "transplant");
  EXPECT_EQ(find_merge_method("task_arithmetic")->name, "task-arithmetic");
  EXPECT_EQ(find_merge_method("frankenmerge"), nullptr);
  const auto names = merge_method_names();
  EXPECT_TRUE(std::is_sorted(names.begin(), names.end()));
  std::size_t registered = 0;
  for (const auto& c : commands()) {
    registered += c.merge_methods.size();
    for (const auto& m : c.merge_methods) EXPECT_EQ(find_merge_method(m), &c) << m;
    // A command a job can reach has a translation and options to check
    // `parameters` against, or (a merge method of the family) a spec that
    // reads the whole mergekit configuration.
    EXPECT_EQ(!c.merge_methods.empty(), c.translate || c.run_merge) << c.name;
    EXPECT_EQ(static_cast<bool>(c.run_merge), c.merge_spec != nullptr) << c.name;
    if (c.translate) {
      EXPECT_TRUE(c.options) << c.name;
    }
  }
  EXPECT_EQ(names.size(), registered);
}

TEST(Commands, HelpPrintsNumbersWithoutFloatNoise) {
  const std::regex noise("[0-9]\\.[0-9]*(0000|9999)[0-9]");
  for (const auto& c : commands()) {
    if (!c.options) continue;
    std::ostringstream help;
    help << c.options();
    EXPECT_FALSE(std::regex_search(help.str(), noise)) << c.name << ":\n" << help.str();
  }
  std::ostringstream monosoup;
  monosoup << find_command("monosoup")->options();
  EXPECT_NE(monosoup.str().find("(=0.8)"), std::string::npos) << monosoup.str();
  EXPECT_NE(monosoup.str().find("(=1e-06)"), std::string::npos) << monosoup.str();
  std::ostringstream task;
  task << find_command("task-arithmetic")->options();
  // (boost wraps long lines: compare with runs of white space as one space)
  const std::string flat = std::regex_replace(task.str(), std::regex("\\s+"), " ");
  EXPECT_NE(flat.find("(required each)"), std::string::npos) << flat;
  EXPECT_NE(flat.find("(default false)"), std::string::npos) << flat;
  EXPECT_NE(flat.find("(default 1)"), std::string::npos) << flat;
}

}  // namespace
}  // namespace soupkit::cli

namespace soupkit {
namespace {

TEST(MethodRegistry, ParameterTextIsShortest) {
  EXPECT_EQ(parameter_text(0.8), "0.8");
  EXPECT_EQ(parameter_text(1.0), "1");
  EXPECT_EQ(parameter_text(-0.1), "-0.1");
  EXPECT_EQ(parameter_text(1e-6), "1e-06");
  EXPECT_EQ(parameter_text(true), "true");
  EXPECT_EQ(parameter_text(false), "false");
  EXPECT_EQ(parameter_text(std::uint64_t{64}), "64");
}

TEST(MethodRegistry, ValuesAreReadByKind) {
  ParameterValues v;
  v.set("lambda", 0.5);
  v.set("normalize", true);
  v.set("k", std::uint64_t{3});
  EXPECT_EQ(v.number("lambda"), 0.5);
  EXPECT_TRUE(v.flag("normalize"));
  EXPECT_EQ(v.size("k"), 3u);
  EXPECT_THROW(v.number("normalize"), Error);  // another kind
  EXPECT_THROW(v.flag("missing"), Error);
}

TEST(MethodRegistry, TaskArithmeticIsRegisteredAsMergekitDefinesIt) {
  const auto& specs = merge_method_specs();
  const auto it = std::find_if(specs.begin(), specs.end(), [](const auto& s) { return s.name == "task-arithmetic"; });
  ASSERT_NE(it, specs.end());
  EXPECT_EQ(it->merge_methods, std::vector<std::string>{"task_arithmetic"});
  EXPECT_EQ(it->base, BaseRole::Required);
  std::map<std::string, const MethodParameter*> by_name;
  for (const auto& p : it->parameters) by_name[p.name] = &p;
  // GeneralizedTaskArithmeticMerge's parameters, density, rescale and
  // int8_mask included (accepted, with no effect without sparsification).
  ASSERT_EQ(by_name.size(), 6u);
  EXPECT_TRUE(by_name.at("weight")->per_model);
  EXPECT_FALSE(by_name.at("weight")->default_value);  // required, as in mergekit
  EXPECT_EQ(by_name.at("weight")->list_option, "weights");
  EXPECT_TRUE(by_name.at("density")->per_model);
  EXPECT_EQ(std::get<double>(*by_name.at("density")->default_value), 1.0);
  EXPECT_EQ(std::get<double>(*by_name.at("lambda")->default_value), 1.0);
  EXPECT_EQ(std::get<bool>(*by_name.at("normalize")->default_value), false);  // mergekit's default for task_arithmetic
  EXPECT_EQ(std::get<bool>(*by_name.at("rescale")->default_value), false);
  EXPECT_EQ(std::get<bool>(*by_name.at("int8_mask")->default_value), false);
}

// registry.py's table: which method has which defaults and extra parameter.
TEST(MethodRegistry, GeneralizedTaskArithmeticFamilyAsMergekitRegistersIt) {
  struct Row {
    const char* merge_method;
    bool normalize, rescale;
    const char* extra;  // gamma, epsilon or none
    bool random;
  };
  const Row rows[] = {{"task_arithmetic", false, false, nullptr, false}, {"ties", true, false, nullptr, false},
                      {"dare_linear", false, true, nullptr, true},       {"dare_ties", false, true, nullptr, true},
                      {"breadcrumbs", false, false, "gamma", false},     {"breadcrumbs_ties", false, false, "gamma", false},
                      {"della_linear", false, true, "epsilon", true},     {"della", true, true, "epsilon", true}};
  for (const auto& row : rows) {
    const auto& specs = merge_method_specs();
    const auto it = std::find_if(specs.begin(), specs.end(),
                                 [&](const auto& s) { return s.merge_methods.front() == row.merge_method; });
    ASSERT_NE(it, specs.end()) << row.merge_method;
    EXPECT_EQ(it->base, BaseRole::Required) << row.merge_method;
    EXPECT_EQ(it->uses_random_seed, row.random) << row.merge_method;
    std::map<std::string, const MethodParameter*> by_name;
    for (const auto& p : it->parameters) by_name[p.name] = &p;
    EXPECT_EQ(by_name.size(), row.extra ? 7u : 6u) << row.merge_method;
    EXPECT_EQ(std::get<bool>(*by_name.at("normalize")->default_value), row.normalize) << row.merge_method;
    EXPECT_EQ(std::get<bool>(*by_name.at("rescale")->default_value), row.rescale) << row.merge_method;
    EXPECT_FALSE(by_name.at("int8_mask")->per_model);
    if (row.extra) {
      EXPECT_TRUE(by_name.at(row.extra)->per_model) << row.merge_method;
      EXPECT_EQ(std::get<double>(*by_name.at(row.extra)->default_value),
                std::string(row.extra) == "gamma" ? 0.01 : 0.15);
    }
  }
  const auto& specs = merge_method_specs();
  const auto sce = std::find_if(specs.begin(), specs.end(), [](const auto& s) { return s.name == "sce"; });
  ASSERT_NE(sce, specs.end());
  ASSERT_EQ(sce->parameters.size(), 2u);  // select_topk, int8_mask: sce.py's signature
  EXPECT_EQ(sce->parameters[0].name, "select_topk");
  EXPECT_EQ(std::get<double>(*sce->parameters[0].default_value), 1.0);
  EXPECT_FALSE(sce->parameters[0].per_model);
}

}  // namespace
}  // namespace soupkit
