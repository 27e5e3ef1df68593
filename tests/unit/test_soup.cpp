// Soup weights and the greedy soup's evaluator contract: the weights are
// normalised by their sum, the model path reaches the evaluator intact
// through the shell, and only a finite number on the last line is a score.
#include "soupkit/util/error.hpp"
#include "soupkit/methods/evaluator.hpp"
#include "soupkit/methods/soup.hpp"

#include <gtest/gtest.h>

#include <cmath>

namespace soupkit {
namespace {

TEST(SoupWeights, UniformWhenNoneGiven) {
  const auto w = normalise_weights({}, 4);
  ASSERT_EQ(w.size(), 4u);
  for (double x : w) EXPECT_EQ(x, 0.25);
}

TEST(SoupWeights, NormalisedBySum) {
  const auto w = normalise_weights({2, 1, 1}, 3);
  EXPECT_EQ(w, (std::vector<double>{0.5, 0.25, 0.25}));
  const auto z = normalise_weights({0, 3}, 2);  // a zero weight leaves an ingredient out
  EXPECT_EQ(z, (std::vector<double>{0, 1}));
}

TEST(SoupWeights, BadWeightsAreInputErrors) {
  EXPECT_THROW(normalise_weights({1, 2}, 3), InputError);
  EXPECT_THROW(normalise_weights({1, -1}, 2), InputError);
  EXPECT_THROW(normalise_weights({0, 0}, 2), InputError);
  EXPECT_THROW(normalise_weights({1, NAN}, 2), InputError);
  EXPECT_THROW(normalise_weights({}, 0), InputError);
}

TEST(Evaluator, ScoreIsTheLastNonEmptyLine) {
  EXPECT_EQ(parse_score("loading\nepoch 3\n  0.8125  \n\n", "", "t"), 0.8125);
  EXPECT_EQ(parse_score("-1e-3", "", "t"), -1e-3);
  for (const char* bad : {"", "\n\n", "0.5 accuracy", "accuracy: 0.5", "nan", "inf", "0.5\nfinished"})
    EXPECT_THROW(parse_score(bad, "", "t"), InputError) << bad;
}

TEST(Evaluator, CommandMustNameTheModel) {
  EXPECT_THROW(check_eval_command("python eval.py"), InputError);
  EXPECT_NO_THROW(check_eval_command("python eval.py --model {model}"));
}

TEST(Evaluator, PathReachesTheShellIntact) {
  const fs::path odd = "/tmp/a b'c\"$HOME";
  // The shell compares the substituted argument with the literal path.
  EXPECT_EQ(run_evaluator("test {model} = '/tmp/a b'\\''c\"$HOME' && echo 2 || echo 0", odd), 2);
  EXPECT_EQ(run_evaluator("echo noise >&2; echo {model} {model} >/dev/null; echo 7.5", odd), 7.5);
}

TEST(Evaluator, FailuresShowTheOutput) {
  try {
    run_evaluator("echo partial; echo 'Traceback: boom' >&2; exit 4 # {model}", "/m");
    FAIL() << "no error";
  } catch (const InputError& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("exit status 4"), std::string::npos) << what;
    EXPECT_NE(what.find("Traceback: boom"), std::string::npos) << what;
    EXPECT_NE(what.find("partial"), std::string::npos) << what;
  }
  try {
    run_evaluator("kill -9 $$ # {model}", "/m");
    FAIL() << "no error";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("signal 9"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace soupkit
