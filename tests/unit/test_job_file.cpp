// Job files (mergekit-style YAML) become exactly the command lines a user
// would type; every example in jobs/ translates; bad files name the problem.
#include "cli/job_file.hpp"
#include "cli/yaml_input.hpp"
#include "soupkit/util/error.hpp"
#include "soupkit/io/file.hpp"

#include <gtest/gtest.h>

#include <random>

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

TEST(JobFile, WeightedSoupIsMergekitLinear) {
  const auto job = read_job_file(SOUPKIT_SOURCE_DIR "/jobs/wise-ft.yaml");
  EXPECT_EQ(job.command, "soup");
  EXPECT_EQ(job.args(), (Strings{"uniform", "demo/finetuned", "demo/base", "--weights", "0.5,0.5", "--out",
                               "demo/wise-ft", "--out-dtype", "BF16"}));
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

TEST(JobFile, TaskArithmeticFromTheSpec) {
  EXPECT_EQ(read_job_file(SOUPKIT_SOURCE_DIR "/jobs/task-arithmetic.yaml").args(),
            (Strings{"demo/finetuned", "--base", "demo/base", "--weights", "1.0", "--out", "demo/task-arithmetic",
                     "--lambda", "0.5", "--normalize", "false"}));
  // A model without a weight gets the default (1); a false boolean is passed on, not dropped.
  const auto job = parse_job(
      "merge_method: task_arithmetic\nbase_model: b\nout_path: o\nout_dtype: bfloat16\nmodels:\n"
      "  - {model: m1, parameters: {weight: 0.5}}\n  - m2\n  - {model: m3, parameters: {weight: -2}}\n"
      "parameters: {lambda: 0.7, normalize: no}\n",
      "j.yaml");
  EXPECT_EQ(job.command, "task-arithmetic");
  EXPECT_EQ(job.args(), (Strings{"m1", "m2", "m3", "--base", "b", "--weights", "0.5,1,-2", "--out", "o", "--out-dtype",
                                 "BF16", "--lambda", "0.7", "--normalize", "no"}));
  // No per-model parameter given: no list at all (the command's defaults apply).
  EXPECT_EQ(parse_job("merge_method: task_arithmetic\nbase_model: b\nmodels: [m]\n", "j.yaml").args(),
            (Strings{"m", "--base", "b"}));
}

// Every key and parameter of a job is either used or refused by name:
// nothing is dropped, not even a `false` flag.
TEST(JobFile, NothingIsSilentlyDropped) {
  const std::string monosoup = "merge_method: monosoup\nbase_model: a\nmodels: [b]\n";
  expect_error(monosoup + "parameters: {x_y: [1, 2]}\n", "parameters.x_y: soupkit monosoup has no option --x-y");
  expect_error(monosoup + "parameters: {normalize: false}\n", "parameters.normalize: soupkit monosoup has no option");
  expect_error("merge_method: linear\nmodels: [a, b]\nparameters: {normalize: false}\n",
               "parameters.normalize: soupkit soup has no option --normalize");
  expect_error("merge_method: task_arithmetic\nbase_model: a\nmodels: [b]\nparameters: {rescale: false}\n",
               "parameters.rescale: soupkit task-arithmetic has no option --rescale");
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
  expect_error("merge_method: linear\nmodels:\n  - model: a\n    weight: 1\n", "models[0].weight: unknown key (line 4)");
  expect_error("merge_method: task_arithmetic\nbase_model: a\nmodels:\n  - model: b\n    parameters: {density: 1}\n",
               "models[0].parameters.density: merge_method task_arithmetic takes no per-model 'density'");
  expect_error("merge_method: task_arithmetic\nbase_model: a\nmodels:\n  - model: b\n    parameters: {weight: '1,2'}\n",
               "models[0].parameters.weight: one value per model, not a list");
  expect_error("merge_method: task_arithmetic\nmodels: [b]\n", "merge_method task_arithmetic needs base_model");
  expect_error("merge_method: task_arithmetic\nbase_model: a\n", "merge_method task_arithmetic needs models");
}

TEST(JobFile, UnknownMergeMethodListsTheKnownOnes) {
  const std::string what = job_error("merge_method: dare_ties\nmodels: [a]\n");
  EXPECT_NE(what.find("bad.yaml: merge_method 'dare_ties' is not one soupkit runs"), std::string::npos) << what;
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
  expect_error("merge_method: dare_ties\nmodels: [a]\n", "merge_method 'dare_ties'");
  expect_error("merge_method: monosoup\nbase_model: a\nmodels: [b, c]\n", "exactly one entry");
  expect_error("merge_method: monosoup\nbase_model: a\nmodels: [b]\nslices: []\n", "unknown key 'slices'");
  expect_error("merge_method: linear\nmodels:\n  - model: a\n    parameters: {weight: 1}\n  - model: b\n",
               "every model needs a weight");
  expect_error("merge_method: linear\nmodels:\n  - model: a\n    parameters: {density: 1}\n", "per-model 'density'");
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
  const std::string soup = "merge_method: linear\nout_path: o\nmodels:\n";
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
