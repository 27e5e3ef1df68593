// The engine's memory policy (engine.hpp): the chunk-size rule and where
// each task goes, against the rule as the documentation states it.
#include "engine/plan_codec.hpp"
#include "soupkit/engine/engine.hpp"
#include "soupkit/util/error.hpp"

#include <gtest/gtest.h>

#include <fstream>
#include <unistd.h>

namespace soupkit {
namespace {

MethodPlan plan_of(std::vector<TaskPlan> tasks) {
  MethodPlan plan;
  for (std::size_t i = 0; i < tasks.size(); ++i)
    plan.output.tensors.push_back({"t" + std::to_string(i), DType::F32, {64, 64}});
  plan.tasks = std::move(tasks);
  return plan;
}

TaskPlan task(double peak, double grid_peak = -1, bool wants_grid = false) {
  TaskPlan t;
  t.seconds = 1;
  t.peak_bytes = peak;
  t.grid_peak_bytes = grid_peak;
  t.wants_grid = wants_grid;
  t.sources = {"model.safetensors"};
  return t;
}

TEST(ChunkRule, AnEighthOfTheBudgetWithinBounds) {
  EXPECT_EQ(chunk_bytes_for(16ull << 20), 2ull << 20);
  EXPECT_EQ(chunk_bytes_for(100'000), 64ull << 10);      // floor
  EXPECT_EQ(chunk_bytes_for(64ull << 30), 64ull << 20);  // ceiling
  EXPECT_EQ(chunk_bytes_for(~0ull), 64ull << 20);
  const PlanContext c = make_plan_context(3, 80ull << 20, "out.h5");
  EXPECT_EQ(c.ranks, 3);
  EXPECT_EQ(c.chunk_bytes, 10ull << 20);
}

TEST(PlaceTasks, FitsOnOneRankStaysThere) {
  MethodPlan plan = plan_of({task(1000, 500), task(1000)});
  place_tasks(plan, make_plan_context(2, 2000, "out"));
  EXPECT_FALSE(plan.tasks[0].on_grid());
  EXPECT_FALSE(plan.tasks[1].on_grid());
  EXPECT_EQ(plan.tasks[0].planned_bytes(), 1000);
}

TEST(PlaceTasks, OverBudgetMovesToTheGridWhenItHasOne) {
  MethodPlan plan = plan_of({task(5000, 1500)});
  place_tasks(plan, make_plan_context(4, 2000, "out"));
  EXPECT_TRUE(plan.tasks[0].on_grid());
  EXPECT_EQ(plan.tasks[0].planned_bytes(), 1500);
}

TEST(PlaceTasks, TheMethodCanAskForTheGrid) {
  MethodPlan plan = plan_of({task(10, 10, true)});
  place_tasks(plan, make_plan_context(2, 2000, "out"));
  EXPECT_TRUE(plan.tasks[0].on_grid());
}

TEST(PlaceTasks, RefusesWhatFitsNowhereNamingTensorAndAdvice) {
  MethodPlan plan = plan_of({task(100), task(5000)});
  plan.tasks[1].advice = "try harder";
  try {
    place_tasks(plan, make_plan_context(1, 2000, "out"));
    FAIL() << "no refusal";
  } catch (const InputError& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("model.safetensors: tensor 't1'"), std::string::npos) << m;
    EXPECT_NE(m.find("on one rank, over the memory budget"), std::string::npos) << m;
    EXPECT_NE(m.find("try harder"), std::string::npos) << m;
  }
  MethodPlan grid = plan_of({task(5000, 3000)});
  try {
    place_tasks(grid, make_plan_context(2, 2000, "out"));
    FAIL() << "no refusal";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("on a 2-rank grid"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("run on more ranks"), std::string::npos) << e.what();
  }
  MethodPlan alone = plan_of({task(5000)});
  try {
    place_tasks(alone, make_plan_context(2, 2000, "out"));
    FAIL() << "no refusal";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("raise --memory-budget (one rank computes this tensor)"), std::string::npos)
        << e.what();
  }
}

TEST(PlaceTasks, AGridRequestWithoutAGridComputationIsABug) {
  MethodPlan plan = plan_of({task(10, -1, true)});
  EXPECT_THROW(place_tasks(plan, make_plan_context(2, 2000, "out")), Error);
  MethodPlan short_plan = plan_of({task(10)});
  short_plan.tasks.clear();
  EXPECT_THROW(place_tasks(short_plan, make_plan_context(2, 2000, "out")), Error);
}

struct ExampleState {
  std::vector<std::string> names;
  int count = 0;
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(ExampleState, names, count)

TEST(PlanCodec, EveryRankGetsPlacementContextAndStateButNotSources) {
  MethodPlan plan = plan_of({task(5000, 1500), task(10)});
  plan.context = make_plan_context(4, 2000, "out.h5");
  place_tasks(plan, plan.context);
  plan.set_state(ExampleState{{"a", "b"}, 7});
  const MethodPlan back = decode_plan(encode_plan(plan));
  ASSERT_EQ(back.tasks.size(), 2u);
  EXPECT_TRUE(back.tasks[0].on_grid());
  EXPECT_FALSE(back.tasks[1].on_grid());
  EXPECT_EQ(back.tasks[0].grid_peak_bytes, 1500);
  EXPECT_TRUE(back.tasks[0].sources.empty());
  EXPECT_EQ(back.context.ranks, 4);
  EXPECT_EQ(back.context.chunk_bytes, plan.context.chunk_bytes);
  EXPECT_EQ(back.context.output, fs::path("out.h5"));
  const auto state = back.get_state<ExampleState>();
  EXPECT_EQ(state.names, (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(state.count, 7);
  EXPECT_EQ(back.output.tensors, plan.output.tensors);
}

// cgroup_memory_limit against hand-made cgroup trees: the definitions are
// the kernel's (cgroup-v2.rst: memory.max, "max" for none; cgroup-v1
// memory.txt: memory.limit_in_bytes, 9223372036854771712 for none).
class CgroupLimitTest : public testing::Test {
 protected:
  void SetUp() override {
    base_ = fs::temp_directory_path() / ("soupkit-cgroup-" + std::to_string(::getpid()));
    fs::remove_all(base_);
    root_ = base_ / "root";
  }
  void TearDown() override { fs::remove_all(base_); }
  void put(const fs::path& relative, const std::string& text) {
    fs::create_directories((root_ / relative).parent_path());
    std::ofstream(root_ / relative) << text << "\n";
  }
  fs::path base_, root_;
};

TEST_F(CgroupLimitTest, V2TakesTheTightestLimitOnThePathToTheRoot) {
  put("memory.max", "max");
  put("job/memory.max", "8589934592");
  put("job/step/memory.max", "max");
  put("job/step/task/memory.max", "17179869184");
  EXPECT_EQ(cgroup_memory_limit("0::/job/step/task\n", root_), 8589934592ull);
  EXPECT_EQ(cgroup_memory_limit("0::/job/step\n", root_), 8589934592ull);
}

TEST_F(CgroupLimitTest, V1ReadsTheMemoryControllersHierarchyAndIgnoresItsNoLimitValue) {
  put("memory/memory.limit_in_bytes", "9223372036854771712");
  put("memory/slurm/uid_0/job_7/memory.limit_in_bytes", "4294967296");
  const std::string text = "9:name=systemd:/\n4:cpuacct,cpu:/other\n3:memory:/slurm/uid_0/job_7\n0::/\n";
  EXPECT_EQ(cgroup_memory_limit(text, root_), 4294967296ull);
  EXPECT_EQ(cgroup_memory_limit("3:memory:/\n", root_), std::nullopt);
}

TEST_F(CgroupLimitTest, NoLimitUnreadableFilesAndEscapingPathsGiveNone) {
  put("memory.max", "max");
  EXPECT_EQ(cgroup_memory_limit("0::/\n", root_), std::nullopt);
  EXPECT_EQ(cgroup_memory_limit("0::/missing/dir\n", root_), std::nullopt);
  EXPECT_EQ(cgroup_memory_limit("garbage\n", root_), std::nullopt);
  put("../outside/memory.max", "1024");
  EXPECT_EQ(cgroup_memory_limit("0::/../outside\n", root_), std::nullopt);
  put("odd/memory.max", "12abc");
  EXPECT_EQ(cgroup_memory_limit("0::/odd\n", root_), std::nullopt);
}

}  // namespace
}  // namespace soupkit
