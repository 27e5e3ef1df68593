#include "soupkit/methods/evaluator.hpp"

#include "soupkit/util/error.hpp"
#include "soupkit/util/log.hpp"
#include "soupkit/util/message_text.hpp"

#include <fcntl.h>
#include <poll.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <vector>

extern char** environ;

namespace soupkit {
namespace {

constexpr const char* kPlaceholder = "{model}";
constexpr std::size_t kTailLines = 20;
// A quoted line longer than this is cut (the message stays readable).
constexpr std::size_t kMaxQuotedLineChars = 1000;
// After forwarding a termination signal, how long the evaluator's group
// gets to exit before it is killed (SIGKILL).
constexpr int kTerminationGraceMs = 5000;
// Only the end of an evaluator's output is used (the score is its last
// line, errors quote its last lines), so only this much of each stream is
// kept however much it prints.
constexpr std::size_t kKeptOutputBytes = 64 << 10;

// Set by the signal handler: the signal received (0: none), and the process
// group of the running evaluator (0: none) that it is forwarded to.
volatile std::sig_atomic_t g_termination_signal = 0;
volatile std::sig_atomic_t g_evaluator_group = 0;

extern "C" void forward_termination(int sig) {
  g_termination_signal = sig;
  if (g_evaluator_group > 0) ::kill(-static_cast<pid_t>(g_evaluator_group), sig);
}

std::string shell_quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

std::string trim(const std::string& s) {
  const auto b = s.find_first_not_of(" \t\r\n");
  if (b == std::string::npos) return "";
  return s.substr(b, s.find_last_not_of(" \t\r\n") - b + 1);
}

// Lines with something on them, trailing blanks removed (leading ones kept:
// they show a traceback's structure).
std::vector<std::string> non_empty_lines(const std::string& text) {
  std::vector<std::string> lines;
  std::size_t start = 0;
  while (start <= text.size()) {
    const auto end = std::min(text.find('\n', start), text.size());
    const std::string line = text.substr(start, end - start);
    if (!trim(line).empty()) lines.push_back(line.substr(0, line.find_last_not_of(" \t\r\n") + 1));
    start = end + 1;
  }
  return lines;
}

std::string quoted_line(const std::string& line) {
  return line.size() > kMaxQuotedLineChars ? excerpt(line, kMaxQuotedLineChars) : line;
}

// The last lines of a stream, indented, for an error message.
std::string tail(const std::string& label, const std::string& text) {
  const auto lines = non_empty_lines(text);
  if (lines.empty()) return fmt::format("\n  {}: (empty)", label);
  std::string out = fmt::format("\n  {}{}:", label, lines.size() > kTailLines ? fmt::format(" (last {} lines)", kTailLines) : "");
  for (std::size_t i = lines.size() > kTailLines ? lines.size() - kTailLines : 0; i < lines.size(); ++i)
    out += "\n    " + quoted_line(lines[i]);
  return out;
}

// The last kKeptOutputBytes (at most twice that while reading) of a stream.
class OutputTail {
 public:
  void append(const char* data, std::size_t n) {
    text_.append(data, n);
    if (text_.size() > 2 * kKeptOutputBytes) keep_last_bytes();
  }
  // The kept text; "..." starts it if the beginning was dropped (so the
  // first line shown may be the end of a longer one).
  std::string finish() {
    if (text_.size() > kKeptOutputBytes) keep_last_bytes();
    return cut_ ? "..." + text_ : text_;
  }
  bool cut() const { return cut_; }

 private:
  void keep_last_bytes() {
    text_.erase(0, text_.size() - kKeptOutputBytes);
    cut_ = true;
  }
  std::string text_;
  bool cut_ = false;
};

// Does the last non-empty line of `text` start after a line break (so all
// of it is there, when the text's beginning was dropped)?
bool last_line_complete(const std::string& text) {
  const auto last = text.find_last_not_of(" \t\r\n");
  return last != std::string::npos && text.rfind('\n', last) != std::string::npos;
}

// Reads both pipes to their end without letting either fill up and block
// the child. Once soupkit is told to terminate, the evaluator's process
// group `group` gets kTerminationGraceMs to exit (and close the pipes),
// then is killed.
void drain(int out_fd, int err_fd, pid_t group, OutputTail& out, OutputTail& err) {
  pollfd fds[2] = {{out_fd, POLLIN, 0}, {err_fd, POLLIN, 0}};
  OutputTail* sinks[2] = {&out, &err};
  int open = 2;
  char buf[65536];
  int grace_left_ms = kTerminationGraceMs;
  constexpr int kTickMs = 100;
  while (open > 0) {
    const int ready = poll(fds, 2, g_termination_signal ? kTickMs : -1);
    if (g_termination_signal && ready == 0 && (grace_left_ms -= kTickMs) <= 0) ::kill(-group, SIGKILL);
    if (ready <= 0) {
      if (ready == 0 || errno == EINTR) continue;
      throw SystemError(fmt::format("evaluator: poll failed: {}", std::strerror(errno)));
    }
    for (int k = 0; k < 2; ++k) {
      if (fds[k].fd < 0 || !(fds[k].revents & (POLLIN | POLLHUP | POLLERR))) continue;
      const ssize_t n = read(fds[k].fd, buf, sizeof buf);
      if (n > 0) {
        sinks[k]->append(buf, static_cast<std::size_t>(n));
      } else if (n == 0 || errno != EINTR) {
        close(fds[k].fd);
        fds[k].fd = -1;
        --open;
      }
    }
  }
}

// soupkit's environment minus what its MPI launcher set for this rank
// (Open MPI/PMIx, MPICH/Hydra, Slurm's PMI): with those, an evaluator that
// itself uses MPI (mpirun, mpi4py, torch.distributed) would take itself for
// a rank of soupkit's job and fail or hang in MPI_Init. Users' settings
// (OMPI_MCA_btl..., SLURM_*, I_MPI_*) are kept.
std::vector<std::string> evaluator_environment() {
  static const char* const launcher_prefixes[] = {
      "PMIX_", "PMI_", "OMPI_COMM_WORLD_", "OMPI_MCA_orte_", "OMPI_MCA_ess", "OMPI_MCA_pmix", "OMPI_APP_CTX_",
      "OMPI_NUM_APP_CTX", "OMPI_COMMAND", "OMPI_ARGV", "OMPI_FILE_LOCATION", "OMPI_FIRST_RANKS", "OMPI_UNIVERSE_SIZE",
      "OMPI_MCA_initial_wdir", "OMPI_MCA_shmem_RUNTIME_QUERY_hint", "MPI_LOCALRANKID", "MPI_LOCALNRANKS"};
  std::vector<std::string> env;
  for (char** e = environ; *e; ++e) {
    const std::string_view var(*e);
    bool launcher = false;
    for (const char* prefix : launcher_prefixes) launcher = launcher || var.starts_with(prefix);
    if (!launcher) env.emplace_back(var);
  }
  return env;
}

}  // namespace

void check_eval_command(const std::string& command) {
  SOUPKIT_INPUT_ERROR_IF(command.find(kPlaceholder) == std::string::npos,
                         "--eval-cmd '{}' does not contain {{model}} (where the candidate checkpoint's path goes)", command);
}

bool placeholder_inside_quotes(const std::string& command) {
  char quote = 0;  // the open quote character, as /bin/sh reads the command
  for (std::size_t i = 0; i < command.size(); ++i) {
    const char c = command[i];
    if (quote != '\'' && c == '\\') {
      ++i;  // an escaped character (outside single quotes)
    } else if (quote == 0 && (c == '\'' || c == '"')) {
      quote = c;
    } else if (quote != 0 && c == quote) {
      quote = 0;
    } else if (quote != 0 && command.compare(i, std::strlen(kPlaceholder), kPlaceholder) == 0) {
      return true;
    }
  }
  return false;
}

void warn_if_placeholder_quoted(const std::string& command) {
  if (placeholder_inside_quotes(command))
    log::warn("--eval-cmd '{}': {{model}} is inside quotes; soupkit already quotes the path it puts there, so quoting "
              "it again lets a crafted path run commands: write {{model}} without quotes",
              command);
}

TerminationGuard::TerminationGuard() {
  g_termination_signal = 0;
  struct sigaction action {};
  action.sa_handler = forward_termination;
  sigemptyset(&action.sa_mask);
  sigaction(SIGTERM, &action, &previous_term_);
  sigaction(SIGINT, &action, &previous_int_);
}

TerminationGuard::~TerminationGuard() {
  sigaction(SIGTERM, &previous_term_, nullptr);
  sigaction(SIGINT, &previous_int_, nullptr);
}

std::string termination_message(const std::string& during) {
  const int sig = g_termination_signal;
  if (sig == 0) return {};
  return fmt::format("interrupted by signal {} (SIG{}) {}", sig, sigabbrev_np(sig) ? sigabbrev_np(sig) : "?", during);
}

void throw_if_terminated(const std::string& during) {
  if (std::string message = termination_message(during); !message.empty()) throw Error(message);
}

std::string substitute_model(const std::string& command, const fs::path& model) {
  std::string out;
  const std::string quoted = shell_quote(model.string());
  std::size_t start = 0;
  for (auto at = command.find(kPlaceholder); at != std::string::npos; at = command.find(kPlaceholder, start)) {
    out += command.substr(start, at - start) + quoted;
    start = at + std::strlen(kPlaceholder);
  }
  return out + command.substr(start);
}

double parse_score(const std::string& stdout_text, const std::string& stderr_text, const std::string& describe) {
  const auto lines = non_empty_lines(stdout_text);
  const std::string last = lines.empty() ? "" : trim(lines.back());
  char* end = nullptr;
  const double score = last.empty() ? NAN : std::strtod(last.c_str(), &end);
  SOUPKIT_INPUT_ERROR_IF(last.empty() || end != last.c_str() + last.size() || !std::isfinite(score),
                         "evaluator {}: the last line of its output is not a score (a finite number, higher is "
                         "better): '{}'{}{}",
                         describe, quoted_line(last), tail("stdout", stdout_text), tail("stderr", stderr_text));
  return score;
}

double run_evaluator(const std::string& command, const fs::path& model) {
  const std::string line = substitute_model(command, model);
  int out_pipe[2], err_pipe[2];
  SOUPKIT_THROW_IF(pipe2(out_pipe, O_CLOEXEC) != 0, SystemError, "evaluator: cannot create pipes: {}",
                   std::strerror(errno));
  if (pipe2(err_pipe, O_CLOEXEC) != 0) {
    const int err = errno;
    close(out_pipe[0]);
    close(out_pipe[1]);
    throw SystemError(fmt::format("evaluator: cannot create pipes: {}", std::strerror(err)));
  }
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, out_pipe[1], STDOUT_FILENO);
  posix_spawn_file_actions_adddup2(&actions, err_pipe[1], STDERR_FILENO);
  posix_spawn_file_actions_addopen(&actions, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
  const char* argv[] = {"/bin/sh", "-c", line.c_str(), nullptr};
  const auto env = evaluator_environment();
  std::vector<char*> envp;
  for (const auto& var : env) envp.push_back(const_cast<char*>(var.c_str()));
  envp.push_back(nullptr);
  // Its own process group, so a termination can be forwarded to it and to
  // every process it starts.
  posix_spawnattr_t attributes;
  posix_spawnattr_init(&attributes);
  posix_spawnattr_setflags(&attributes, POSIX_SPAWN_SETPGROUP);
  posix_spawnattr_setpgroup(&attributes, 0);
  pid_t pid = 0;
  const int rc = posix_spawn(&pid, "/bin/sh", &actions, &attributes, const_cast<char* const*>(argv), envp.data());
  posix_spawnattr_destroy(&attributes);
  posix_spawn_file_actions_destroy(&actions);
  if (rc == 0) {
    g_evaluator_group = pid;
    if (g_termination_signal) ::kill(-pid, g_termination_signal);  // arrived while it was being started
  }
  close(out_pipe[1]);
  close(err_pipe[1]);
  if (rc != 0) {
    close(out_pipe[0]);
    close(err_pipe[0]);
    throw SystemError(fmt::format("evaluator: cannot start /bin/sh: {}", std::strerror(rc)));
  }
  OutputTail out_tail, err_tail;
  int status = 0;
  auto reap = [&] {
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
  };
  try {
    drain(out_pipe[0], err_pipe[0], pid, out_tail, err_tail);
  } catch (...) {
    kill(-pid, SIGKILL);  // no zombie left behind
    reap();
    g_evaluator_group = 0;
    throw;
  }
  reap();
  g_evaluator_group = 0;
  const std::string out = out_tail.finish(), err = err_tail.finish();
  log::debug("evaluator `{}` output:\n{}{}", line, out, err);
  const std::string describe = fmt::format("`{}`", line);
  if (g_termination_signal) ::kill(-pid, SIGKILL);  // any of its processes still there (they ignored the signal)
  throw_if_terminated(fmt::format("while the evaluator {} ran; it and the processes it started were stopped", describe));
  SOUPKIT_INPUT_ERROR_IF(WIFSIGNALED(status), "evaluator {} was killed by signal {}{}{}", describe, WTERMSIG(status),
                         tail("stdout", out), tail("stderr", err));
  SOUPKIT_INPUT_ERROR_IF(WEXITSTATUS(status) != 0, "evaluator {} failed with exit status {}{}{}", describe,
                         WEXITSTATUS(status), tail("stdout", out), tail("stderr", err));
  SOUPKIT_INPUT_ERROR_IF(out_tail.cut() && !last_line_complete(out),
                         "evaluator {}: the last line of its output does not fit in the {} KiB of it soupkit keeps, so it "
                         "is not a score{}{}",
                         describe, kKeptOutputBytes >> 10, tail("stdout", out), tail("stderr", err));
  return parse_score(out, err, describe);
}

}  // namespace soupkit
