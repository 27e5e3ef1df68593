// Job files (mergekit-style YAML) become exactly the command lines a user
// would type; every example in jobs/ translates; bad files name the problem.
#include "cli/job_file.hpp"
#include "cli/yaml_input.hpp"
#include "soupkit/methods/method_registry.hpp"
#include "soupkit/util/error.hpp"
#include "soupkit/io/file.hpp"

#include <gtest/gtest.h>

#include <random>

#include <unistd.h>

namespace soupkit::cli {
namespace {

using Strings = std::vector<std::string>;

// The message parse_job refuses `yaml` with ("" and a failure if it does not).
std::string job_error(const std::string& yaml) {
  try {
    parse_job(yaml, "bad.yaml");
    ADD_FAILURE() << "no error for: " << yaml;
  } catch (const InputError& e) {
    return e.what();
  }
  return "";
}

void expect_error(const std::string& yaml, const std::string& fragment) {
  const std::string what = job_error(yaml);
  EXPECT_NE(what.find("bad.yaml"), std::string::npos) << what;
  EXPECT_NE(what.find(fragment), std::string::npos) << what;
}

TEST(JobFile, MonosoupExample) {
  const auto job = read_job_file(SOUPKIT_SOURCE_DIR "/jobs/monosoup.yaml");
  EXPECT_EQ(job.command, "monosoup");
  EXPECT_EQ(job.args(), (Strings{"--base", "demo/base", "--finetuned", "demo/finetuned", "--out", "demo/monosoup.h5",
                               "--mode", "effective-rank", "--min-rel-update", "1.0e-6", "--report",
                               "demo/monosoup-report.json"}));
}

// A model reference that exists is a local path, even one shaped like a
// Hugging Face id (demo/base); this runs where the example's models are.
TEST(JobFile, WiseFtIsMergekitLinear) {
  const fs::path dir = fs::temp_directory_path() / ("soupkit-wise-ft-" + std::to_string(::getpid()));
  fs::create_directories(dir / "demo" / "base");
  fs::create_directories(dir / "demo" / "finetuned");
  const fs::path before = fs::current_path();
  fs::current_path(dir);
  const auto job = read_job_file(SOUPKIT_SOURCE_DIR "/jobs/wise-ft.yaml");
  fs::current_path(before);
  fs::remove_all(dir);
  EXPECT_EQ(job.command, "linear");
  ASSERT_TRUE(job.merge);
  EXPECT_EQ(job.merge->models, (std::vector<fs::path>{"demo/finetuned", "demo/base"}));
  EXPECT_FALSE(job.merge->base());
  EXPECT_EQ(job.merge->out_dtype, DType::BF16);
  EXPECT_EQ(job.merge->output, "demo/wise-ft");
}

TEST(JobFile, EveryExampleTranslates) {
  EXPECT_EQ(read_job_file(SOUPKIT_SOURCE_DIR "/jobs/uniform-soup.yaml").args(),
            (Strings{"uniform", "runs/ft-lr1e-5-seed0", "runs/ft-lr1e-5-seed1", "runs/ft-lr3e-5-seed0",
                     "runs/ft-lr3e-5-seed1", "--out", "soups/uniform", "--accumulate", "F64", "--shard-size", "5GB"}));
  const auto greedy = read_job_file(SOUPKIT_SOURCE_DIR "/jobs/greedy-soup.yaml");
  const auto greedy_args = greedy.args();
  EXPECT_EQ(greedy_args[0], "greedy");
  EXPECT_NE(std::find(greedy_args.begin(), greedy_args.end(), "python3 evaluate.py --split val {model}"),
            greedy_args.end());
  const auto transplant = read_job_file(SOUPKIT_SOURCE_DIR "/jobs/transplant.yaml");
  EXPECT_EQ(transplant.command, "transplant");
  EXPECT_EQ(transplant.args(), (Strings{"--base", "models/base-llama", "--donor", "models/donor-qwen", "--out",
                                      "transplanted/base-with-donor-tokenizer", "--k", "64", "--report",
                                      "transplanted/report.json"}));
  EXPECT_EQ(read_job_file(SOUPKIT_SOURCE_DIR "/jobs/convert.yaml").args(),
            (Strings{"demo/monosoup.h5", "demo/monosoup-bf16", "--dtype", "BF16"}));
}

TEST(JobFile, FlagsAndLists) {
  const auto job = parse_job(
      "merge_method: monosoup\nbase_model: a\nmodels: [b]\nparameters: {strict: true, overwrite: false}\n",
      "j.yaml");
  EXPECT_EQ(job.args(), (Strings{"--base", "a", "--finetuned", "b", "--strict"}));
  const auto soup = parse_job("merge_method: model_soup\nmodels: [a, b]\nparameters: {weights: [1, 2]}\n", "j.yaml");
  EXPECT_EQ(soup.args(), (Strings{"uniform", "a", "b", "--weights", "1,2"}));
}

const MergeMethodSpec& spec_named(const std::string& name) {
  for (const auto& spec : merge_method_specs())
    if (spec.name == name) return spec;
  throw Error("no spec " + name);
}

// A merge method of the family reads the whole mergekit configuration: the
// base appended to the models as mergekit's normalize_config does, each
// model's settings, the global ones (a per-model parameter there is every
// model's fallback), and dtypes.
TEST(JobFile, MergekitConfigOfTheFamily) {
  const auto job = parse_job(
      "merge_method: task_arithmetic\nbase_model: b\nout_path: o\ndtype: float16\nout_dtype: bfloat16\nmodels:\n"
      "  - {model: m1, parameters: {weight: 0.5}}\n  - m2\n  - {model: m3, parameters: {weight: [0, 1]}}\n"
      "parameters: {lambda: 0.7, normalize: no, weight: 2}\n",
      "j.yaml");
  EXPECT_EQ(job.command, "task-arithmetic");
  ASSERT_TRUE(job.merge);
  const MergeInputs& in = *job.merge;
  EXPECT_EQ(in.models, (std::vector<fs::path>{"m1", "m2", "m3", "b"}));
  EXPECT_EQ(in.base(), std::optional<std::size_t>{3});
  EXPECT_EQ(in.output, "o");
  EXPECT_EQ(in.compute_dtype, DType::F16);
  EXPECT_EQ(in.out_dtype, DType::BF16);
  const auto p = resolve_parameters(spec_named("task-arithmetic").parameters, in.parameters, "h.0.w", 0.25);
  EXPECT_EQ(p.per_model[0].number("weight"), 0.5);
  EXPECT_EQ(p.per_model[1].number("weight"), 2.0);   // the global fallback
  EXPECT_EQ(p.per_model[2].number("weight"), 0.25);  // the gradient at t = 0.25
  EXPECT_EQ(p.per_model[3].number("weight"), 2.0);   // the base (unused by task arithmetic)
  EXPECT_EQ(p.global.number("lambda"), 0.7);
  EXPECT_FALSE(p.global.flag("normalize"));
  // The base listed among the models is that model, not a second one.
  const auto listed = parse_job("merge_method: ties\nbase_model: b\nmodels: [b, {model: m, parameters: {weight: 1}}]\n",
                                "j.yaml");
  EXPECT_EQ(listed.merge->models, (std::vector<fs::path>{"b", "m"}));
  EXPECT_EQ(listed.merge->base(), std::optional<std::size_t>{0});
}

// mergekit's filters: the first condition that matches wins; a list with no
// match falls back to the global setting, then to the default.
TEST(JobFile, MergekitFiltersAndGradients) {
  const auto job = parse_job(
      "merge_method: ties\nbase_model: b\nmodels:\n"
      "  - model: m\n    parameters:\n      weight: [{filter: mlp, value: 3}, {filter: mlp.up, value: 4}, {value: [1, 2, 4]}]\n"
      "      density: [{filter: attn, value: 0.5}]\n"
      "parameters: {density: 0.25}\n",
      "j.yaml");
  const auto& spec = spec_named("ties");
  const auto at = [&](const char* tensor, double t) { return resolve_parameters(spec.parameters, job.merge->parameters, tensor, t); };
  EXPECT_EQ(at("l.mlp.up.w", 0).per_model[0].number("weight"), 3.0);
  EXPECT_EQ(at("l.attn.w", 0.75).per_model[0].number("weight"), 3.0);  // t (len - 1) = 1.5: halfway from 2 to 4
  EXPECT_EQ(at("l.attn.w", 0).per_model[0].number("density"), 0.5);
  EXPECT_EQ(at("l.mlp.w", 0).per_model[0].number("density"), 0.25);  // no filter matches: the global one
  EXPECT_TRUE(at("l.mlp.w", 0).global.flag("normalize"));            // ties' default
}

// Every key and parameter of a job is either used or refused by name:
// nothing is dropped, not even a `false` flag.
TEST(JobFile, NothingIsSilentlyDropped) {
  const std::string monosoup = "merge_method: monosoup\nbase_model: a\nmodels: [b]\n";
  expect_error(monosoup + "parameters: {x_y: [1, 2]}\n", "parameters.x_y: soupkit monosoup has no option --x-y");
  expect_error(monosoup + "parameters: {normalize: false}\n", "parameters.normalize: soupkit monosoup has no option");
  expect_error("merge_method: task_arithmetic\nbase_model: a\nmodels: [b]\nparameters: {rescal: false}\n",
               "parameters.rescal: merge_method task_arithmetic has no parameter 'rescal'");
  expect_error(monosoup + "parameters: {strict: 3}\n", "parameters.strict: --strict is a flag: true or false");
  expect_error(monosoup + "parameters: {help: true}\n", "parameters.help: soupkit monosoup has no option --help");
  expect_error(monosoup + "out_path: o\nparameters: {out: p}\n", "parameters.out: --out is already set");
  expect_error(monosoup + "tokenizer_source: c\n", "tokenizer_source: merge_method monosoup does not take it (line 4)");
  expect_error("merge_method: monosoup\nbase_model: a\nmodels:\n  - model: b\n    parameters: {weight: 1}\n",
               "models[0].parameters.weight: merge_method monosoup takes no per-model 'weight' (line 5)");
  expect_error("merge_method: convert\nbase_model: a\nmodels: [b]\n", "base_model: merge_method convert does not take it");
  expect_error("merge_method: transplant\nbase_model: a\ntokenizer_source: d\nmodels: [b]\n",
               "models: merge_method transplant does not take it (line 4)");
  expect_error("merge_method: transplant\nbase_model: a\ntokenizer_source: d\nout_dtype: bf16\n",
               "out_dtype: merge_method transplant does not take it");
  expect_error("merge_method: linear\nmodels:\n  - model: a\n    weight: 1\n", "models[0].weight: unknown key");
  expect_error("merge_method: task_arithmetic\nbase_model: a\nmodels:\n  - model: b\n    parameters: {gamma: 1}\n",
               "models[0].parameters.gamma: merge_method task_arithmetic has no parameter 'gamma'");
  expect_error("merge_method: dare_ties\nbase_model: a\nmodels:\n  - model: b\n    parameters: {epsilon: 1}\n",
               "models[0].parameters.epsilon: merge_method dare_ties has no parameter 'epsilon'");
  expect_error("merge_method: sce\nbase_model: a\nmodels:\n  - model: b\n    parameters: {weight: 1}\n",
               "models[0].parameters.weight: merge_method sce has no parameter 'weight'");
  expect_error("merge_method: task_arithmetic\nbase_model: a\nmodels:\n  - model: b\n    parameters: {lambda: 1}\n",
               "models[0].parameters.lambda: 'lambda' is a global parameter of task_arithmetic: mergekit ignores it");
  expect_error("merge_method: task_arithmetic\nbase_model: a\nmodels:\n  - model: b\n    parameters: {weight: '1,2'}\n",
               "models[0].parameters.weight: '1,2' is not a finite number");
  expect_error("merge_method: ties\nbase_model: a\nmodels: [b]\nparameters: {normalize: [true, false]}\n",
               "parameters.normalize: 'normalize' is true or false: a gradient");
  expect_error("merge_method: ties\nbase_model: a\nmodels: [b]\nparameters: {weight: {filter: x, value: 1}}\n",
               "parameters.weight: a single {filter, value} must be an entry of a list");
  expect_error("merge_method: ties\nbase_model: a\nmodels: [b]\nparameters: {weight: [{filter: x, valu: 1}]}\n",
               "parameters.weight[0].valu: unknown key");
  expect_error("merge_method: ties\nbase_model: a\nmodels: [b, b]\n", "models[1]: b is listed twice");
  expect_error("merge_method: task_arithmetic\nmodels: [b]\n", "base_model: merge_method task_arithmetic needs a base_model");
  expect_error("merge_method: task_arithmetic\nbase_model: a\n", "merge_method task_arithmetic needs models");
  expect_error("merge_method: ties\nbase_model: a\nmodels: [b]\nslices: []\n", "slices: give models or slices, not both");
  expect_error("merge_method: ties\nbase_model: a\nmodels: [b]\ntokenizer_source: union\n",
               "tokenizer_source: a union vocabulary is built by 'soupkit transplant'");
  expect_error("merge_method: ties\nbase_model: a\nmodels: [b]\nchat_template: chatml\n", "chat_template:");
  expect_error("merge_method: ties\nbase_model: a\nmodels: [b]\ncolor: red\n", "color: unknown key");
  expect_error("merge_method: linear\nmodels: [mistralai/Mistral-7B-v0.1]\n",
               "'mistralai/Mistral-7B-v0.1' does not exist here and looks like a Hugging Face hub id");
}

TEST(JobFile, UnknownMergeMethodListsTheKnownOnes) {
  const std::string what = job_error("merge_method: frankenmerge\nmodels: [a]\n");
  EXPECT_NE(what.find("bad.yaml: merge_method 'frankenmerge' is not one soupkit runs"), std::string::npos) << what;
  for (const char* known : {"convert", "greedy_soup", "linear", "model_soup", "monosoup", "task_arithmetic",
                            "ties", "tokenizer_transplant", "transplant", "uniform_soup"})
    EXPECT_NE(what.find(known), std::string::npos) << known << " not in: " << what;
}

TEST(JobFile, YamlBooleansAndOverrides) {
  const auto job = parse_job(
      "merge_method: monosoup\nbase_model: a\nmodels: [b]\nout_path: o.h5\n"
      "parameters: {overwrite: True, strict: no, memory_budget: 1GB, resume: yes}\n",
      "j.yaml");
  EXPECT_EQ(job.args(), (Strings{"--base", "a", "--finetuned", "b", "--out", "o.h5", "--overwrite", "--memory-budget",
                                 "1GB", "--resume"}));
  // Later options win over the job's: the job's own --memory-budget and --resume give way.
  EXPECT_EQ(job.args({"--memory-budget", "2GB", "--resume", "--out=x.h5"}),
            (Strings{"--base", "a", "--finetuned", "b", "--overwrite", "--memory-budget", "2GB", "--resume",
                     "--out=x.h5"}));
}

TEST(JobFile, BadJobsNameTheProblem) {
  expect_error("merge_method: [", "not valid YAML");
  expect_error("- a\n- b\n", "YAML mapping");
  expect_error("models: [a]\n", "merge_method is missing");
  expect_error("merge_method: frankenmerge\nmodels: [a]\n", "merge_method 'frankenmerge'");
  expect_error("merge_method: monosoup\nbase_model: a\nmodels: [b, c]\n", "exactly one entry");
  expect_error("merge_method: monosoup\nbase_model: a\nmodels: [b]\nslices: []\n", "unknown key 'slices'");
  expect_error("merge_method: linear\nmodels:\n  - model: a\n    parameters: {density: 1}\n", "no parameter 'density'");
  expect_error("merge_method: model_soup\nmodels: [a]\nout_dtype: int8\n", "not a dtype");
  expect_error("merge_method: model_soup\nmodels: [a]\ndtype: bfloat16\n", "float32 or float64");
  expect_error("merge_method: transplant\nbase_model: a\n", "tokenizer_source");
  expect_error("merge_method: monosoup\nbase_model: a\nmodels: [b]\ntokenizer_source: c\n", "does not take it");
}

// Hostile job files (issue 10): refused before yaml-cpp recurses or
// expands, naming the file and the line.
TEST(JobFile, DeepNestingIsRefusedBeforeParsing) {
  const std::string deep(100000, '[');
  expect_error("merge_method: monosoup\nparameters: " + deep + std::string(100000, ']') + "\n", "nested deeper");
  std::string block = "merge_method: monosoup\nparameters:\n";
  for (int i = 0; i < 100; ++i) block += std::string(static_cast<std::size_t>(i), ' ') + "- \n";
  expect_error(block, "nested deeper");
  std::string compact = "merge_method: monosoup\nmodels:\n";
  for (int i = 0; i < 100; ++i) compact += "- ";
  expect_error(compact + "x\n", "nested deeper");
}

// Nesting depth of a parsed (small) document.
int yaml_depth(const YAML::Node& node) {
  if (!node.IsSequence() && !node.IsMap()) return 0;
  int deepest = 0;
  for (auto it = node.begin(); it != node.end(); ++it) {
    if (node.IsMap())
      deepest = std::max({deepest, yaml_depth(it->first), yaml_depth(it->second)});
    else
      deepest = std::max(deepest, yaml_depth(*it));
  }
  return deepest + 1;
}

TEST(JobFile, DepthBoundNeverUnderCounts) {
  // Shapes a random search found under-counted by an earlier scan (a map and
  // a sequence at one indentation, implicit maps in flow, complex keys).
  for (const std::string text :
       {"a: b\n", "a: [[[x]]]\n", "a:\n  - - - x\n", "- - a: b\n", "x:\n- - : ? :x: \n", "\n    [: : \n  ]{ ]",
        ": \n: ? x: ", "a: ']]]]'\nb: \"]]]]\"\nc: [[x]]\n", "a: it's [x]\n# ]]]\nb: [[y]]\n"}) {
    const YAML::Node node = YAML::Load(text);
    EXPECT_GE(yaml_depth_bound(text), yaml_depth(node)) << text;
  }
  // A closing bracket inside quotes closes nothing, in either quote style.
  EXPECT_GT(yaml_depth_bound("a: ']]]]'\nb: \"]]]]\"\nc: [[[[x]]]]\n"), yaml_depth_bound("c: [x]\n"));
  // Real job files stay far below the limit.
  for (const char* job : {"monosoup", "wise-ft", "uniform-soup", "greedy-soup", "transplant", "convert",
                          "task-arithmetic"}) {
    const std::string path = fmt::format("{}/jobs/{}.yaml", SOUPKIT_SOURCE_DIR, job);
    EXPECT_LE(yaml_depth_bound(read_text_file(path)), kMaxYamlDepth / 2) << path;
  }
}

// Random documents built from YAML's structural pieces: wherever yaml-cpp
// reads one, its depth is within the bound.
TEST(JobFile, DepthBoundHoldsOnRandomDocuments) {
  const std::vector<std::string> pieces = {"[", "]", "{", "}", ",", ":", " ", "- ", "\n", "  ", "'", "\"", "a", "#",
                                           "? ", "\\", "|", ">", ": ", "\n  ", "\n    ", "x: ", "- - ", "it's ",
                                           "'q'", "''", "\t", "!!str ", "\n- ", "[[", "]]", "{a: ", "- a: "};
  std::mt19937 rng(2026);
  int parsed = 0;
  for (int i = 0; i < 40000; ++i) {
    std::string text;
    for (auto n = rng() % 40; n > 0; --n) text += pieces[rng() % pieces.size()];
    YAML::Node node;
    try {
      node = YAML::Load(text);
    } catch (const YAML::Exception&) {
      continue;
    }
    ++parsed;
    ASSERT_GE(yaml_depth_bound(text), yaml_depth(node)) << text;
  }
  EXPECT_GT(parsed, 5000);  // the search reaches documents yaml-cpp accepts
}

TEST(JobFile, AliasesAndSecondDocumentsAreRefused) {
  expect_error("merge_method: model_soup\nout_path: &o x\nmodels:\n  - *o\n", "line 4: YAML aliases");
  expect_error("merge_method: model_soup\nmodels: [a]\n---\nmerge_method: convert\n", "second YAML document");
}

TEST(JobFile, OversizedTextIsRefused) {
  expect_error("merge_method: monosoup\n#" + std::string(kMaxYamlBytes, 'x') + "\n", "too large");
}

TEST(JobFile, ValuesYamlCppCannotConvertNameTheKeyAndLine) {
  expect_error("? [a]\n: b\nmerge_method: monosoup\n", "line 1");
  expect_error("merge_method: monosoup\nbase_model: a\nmodels: [b]\nparameters: {? {x: 1}: 2}\n",
               "parameters: a key that is not a name (line 4)");
  expect_error("merge_method: linear\nmodels:\n  - model: a\n    parameters: [1]\n", "models[0].parameters");
  expect_error("merge_method: linear\nmodels: [a]\nmodels: [b]\n", "models: given twice (line 3)");
  expect_error("merge_method: monosoup\nbase_model: a\nmodels: [b]\nparameters: {k: 1, k: 2}\n",
               "parameters.k: given twice");
  expect_error("merge_method: [\n", "line 2");
  expect_error("merge_method: monosoup\nbase_model: a\nmodels: [b]\nparameters: {out=x: 1}\n", "not an option name");
}

// yaml-cpp keeps both pairs of a key given twice and lookups find the first:
// every mapping, at every level, must refuse it (here: inside models).
TEST(JobFile, KeysGivenTwiceAreRefusedAtEveryLevel) {
  const std::string soup = "merge_method: model_soup\nout_path: o\nmodels:\n";
  expect_error(soup + "  - model: a\n    parameters: {weight: 1, weight: 3}\n",
               "models[0].parameters.weight: given twice (line 5); first given on line 5");
  expect_error(soup + "  - model: a\n    parameters:\n      weight: 1\n      weight: 3\n",
               "models[0].parameters.weight: given twice (line 7); first given on line 6");
  expect_error(soup + "  - model: a\n    parameters: {weight: 1}\n  - model: m1\n    model: m2\n",
               "models[1].model: given twice (line 7); first given on line 6");
  expect_error(soup + "  - {model: m1, \"model\": m2}\n", "models[0].model: given twice (line 4)");
  // Distinct keys are not duplicates, in any entry.
  EXPECT_EQ(parse_job(soup + "  - {model: a, parameters: {weight: 1}}\n  - {model: b, parameters: {weight: 3}}\n",
                      "j.yaml").args(),
            (Strings{"uniform", "a", "b", "--weights", "1,3", "--out", "o"}));
}

TEST(JobFile, EmptyOutPathNamesTheKey) {
  expect_error("merge_method: linear\nmodels: [a]\nout_path: ''\n", "out_path: the output path is empty (line 3)");
  expect_error("merge_method: convert\nmodels: [a]\nout_path: \"\"\n", "out_path: the output path is empty");
}

TEST(JobFile, PathsStartingWithADashStayPaths) {
  const auto job = parse_job("merge_method: convert\nmodels: [-in]\nout_path: -out.h5\n", "j.yaml");
  EXPECT_EQ(job.args(), (Strings{"./-in", "./-out.h5"}));
}

TEST(JobFile, MissingFile) {
  EXPECT_THROW(read_job_file("/nonexistent/job.yaml"), InputError);
}

}  // namespace
}  // namespace soupkit::cli
