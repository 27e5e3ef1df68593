// soupkit: merges neural-network checkpoints at cluster scale.
// Runs alone or under mpirun/srun; every rank runs the same command.
#include "commands.hpp"
#include "soupkit/util/error.hpp"
#include "soupkit/io/hdf5.hpp"
#include "soupkit/util/log.hpp"
#include "soupkit/util/message_text.hpp"

#include <malloc.h>

#include <cstdio>
#include <new>

namespace {

constexpr const char* kUsage = R"(usage: soupkit <command> [options]

commands:
  monosoup --base W0 --finetuned W1 --out OUT
                      MonoSoup: reweight a fine-tuned model's update by its singular spectrum
  transplant --base BASE --donor DONOR --out OUT
                      give BASE the DONOR's tokenizer (new embedding rows by OMP)
  convert IN OUT      convert a checkpoint between safetensors, model directories and HDF5
  inspect PATH        list a checkpoint's tensors
  example DIR         write the built-in example model pair (DIR/base, DIR/finetuned)
  run JOB.yaml        run the merge a job file describes (mergekit-style keys; see jobs/)

Checkpoints: a .safetensors file, a Hugging Face model directory (model.safetensors or
sharded with model.safetensors.index.json), or a soupkit .h5 file.
Run 'soupkit <command> --help' for a command's options. Run under mpirun/srun to use many ranks.
)";

// "soupkit convert", for messages that have nothing better to name.
std::string command_name(int argc, char** argv) {
  return argc < 2 ? std::string("soupkit") : "soupkit " + soupkit::excerpt(argv[1]);
}

int dispatch(const soupkit::Communicator& comm, int argc, char** argv) {
  if (argc < 2 || std::string(argv[1]) == "--help" || std::string(argv[1]) == "-h") {
    if (comm.is_root()) std::fputs(kUsage, argc < 2 ? stderr : stdout);
    return argc < 2 ? 1 : 0;
  }
  if (std::string(argv[1]) == "--version") {
    if (comm.is_root()) std::printf("soupkit %s\n", SOUPKIT_VERSION);
    return 0;
  }
  const auto* command = soupkit::cli::find_command(argv[1]);
  if (!command) throw soupkit::InputError(fmt::format("unknown command '{}' (see 'soupkit --help')", argv[1]));
  return (*command)(comm, soupkit::cli::Args(argv + 2, argv + argc));
}

}  // namespace

int main(int argc, char** argv) {
  // Keep freed memory for reuse instead of returning every large block to
  // the kernel: tensor buffers of similar sizes are allocated over and over,
  // and fresh pages cost a fault and a zeroing each (measured: ~20% of a
  // GPT-2-sized MonoSoup run; docs/benchmarks.md). Peak memory is unchanged.
  mallopt(M_MMAP_MAX, 0);
  mallopt(M_TRIM_THRESHOLD, -1);
  const soupkit::MpiSession mpi(argc, argv);
  soupkit::h5::silence_library_errors();
  int status = 1;
  {
    soupkit::Communicator world;
    soupkit::log::configure(world.rank(), soupkit::log::Level::Info);
    // Failures reach here on every rank (the engine agrees on them), so
    // rank 0 alone reports.
    auto report = [&](const std::string& message) {
      if (world.is_root()) std::fprintf(stderr, "soupkit: error: %s\n", message.c_str());
      status = 1;
    };
    try {
      status = dispatch(world, argc, argv);
    } catch (const soupkit::MpiError& e) {
      // Not agreed over the ranks (agreeing turns it into a plain Error):
      // the others may be waiting for this rank in a collective.
      std::fprintf(stderr, "soupkit: error: rank %d: %s\n", world.rank(), e.what());
      world.abort_job(1);
    } catch (const soupkit::Error& e) {
      report(e.what());
    } catch (const std::bad_alloc&) {
      report(fmt::format("{}: out of memory: an input declared more than it holds and soupkit did not check it "
                         "first (a bug in soupkit; please report it with the input)", command_name(argc, argv)));
    } catch (const std::exception& e) {
      report(fmt::format("{}: unexpected internal error: {} (a bug in soupkit; please report it with the input)",
                         command_name(argc, argv), soupkit::excerpt(e.what(), 3 * soupkit::kMaxQuotedChars)));
    }
  }
  return status;
}
