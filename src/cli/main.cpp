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

// "soupkit convert", for messages that have nothing better to name.
std::string command_name(int argc, char** argv) {
  return argc < 2 ? std::string("soupkit") : "soupkit " + soupkit::excerpt(argv[1]);
}

int dispatch(const soupkit::Communicator& comm, int argc, char** argv) {
  if (argc < 2 || std::string(argv[1]) == "--help" || std::string(argv[1]) == "-h") {
    if (comm.is_root()) std::fputs(soupkit::cli::usage_text().c_str(), argc < 2 ? stderr : stdout);
    return argc < 2 ? 1 : 0;
  }
  if (std::string(argv[1]) == "--version") {
    if (comm.is_root()) std::printf("soupkit %s\n", SOUPKIT_VERSION);
    return 0;
  }
  const std::string name = argv[1];
  const auto* command = soupkit::cli::find_command(name);
  if (!command) {
    // A merge_method name is a job file's word for a command: say which.
    const auto* runs = soupkit::cli::find_merge_method(name);
    throw soupkit::InputError(
        runs ? fmt::format("unknown command '{}': it is a job file's merge_method; the command is 'soupkit {}'",
                           soupkit::excerpt(name), runs->name)
             : fmt::format("unknown command '{}' (see 'soupkit --help')", soupkit::excerpt(name)));
  }
  return command->run(comm, soupkit::cli::Args(argv + 2, argv + argc));
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
