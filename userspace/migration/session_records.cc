#include "userspace/migration/session_records.hh"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <fmt/format.h>

#include "userspace/base/unique_fd.hh"

namespace ferry::migration {
namespace {

// The record's text: a header line, then key=value lines.
constexpr std::string_view kHeader = "ferry-session-record 1";

Status sync_fd(int fd, const std::string& what) {
  if (::fsync(fd) != 0) return std::unexpected(sys_error(fmt::format("fsync {}", what)));
  return {};
}

}  // namespace

Result<SessionRecords> SessionRecords::open(std::string dir) {
  if (dir.empty()) return fail("session records: no state directory given");
  // Parents as needed (the default, /var/lib/ferry/sessions, may be the
  // first thing Ferry keeps there); the directory itself private.
  std::error_code ec;
  if (std::filesystem::create_directories(dir, ec) && ::chmod(dir.c_str(), 0700) != 0)
    return std::unexpected(sys_error(fmt::format("session records: chmod {}", dir)));
  if (ec && ec != std::errc::file_exists && ec != std::errc::not_a_directory)
    return fail("session records: create {}: {}", dir, ec.message());
  struct stat st {};
  if (::stat(dir.c_str(), &st) != 0) return std::unexpected(sys_error(fmt::format("session records: {}", dir)));
  if (!S_ISDIR(st.st_mode)) return fail("session records: {} is not a directory", dir);
  if (::access(dir.c_str(), W_OK | X_OK) != 0)
    return std::unexpected(sys_error(fmt::format("session records: {} is not writable", dir)));
  return SessionRecords(std::move(dir));
}

std::string SessionRecords::path_of(std::uint64_t session) const {
  return fmt::format("{}/session-{:016x}", dir_, session);
}

Status SessionRecords::write(std::uint64_t session, SessionOutcome outcome, std::string_view source_host) const {
  if (outcome != SessionOutcome::kCommitted && outcome != SessionOutcome::kDiscarded)
    return fail("session records: only committed or discarded is recorded, not {}", session_outcome_name(outcome));
  auto existing = find(session);
  if (!existing) return std::unexpected(existing.error());
  if (*existing) {
    if (**existing == outcome) return {};
    return fail("session {:#018x} is already on record as {}, not {}", session, session_outcome_name(**existing),
                session_outcome_name(outcome));
  }
  std::string host(source_host.substr(0, 255));
  for (char& c : host)
    if (c == '\n' || c == '\r') c = ' ';
  timespec now{};
  ::clock_gettime(CLOCK_REALTIME, &now);
  const std::string text =
      fmt::format("{}\nsession={:#018x}\noutcome={}\nsource={}\nwall_ns={}\n", kHeader, session,
                  session_outcome_name(outcome), host, now.tv_sec * 1000000000LL + now.tv_nsec);
  const std::string final_path = path_of(session);
  const std::string tmp = fmt::format("{}.tmp.{}", final_path, ::getpid());
  {
    UniqueFd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
    if (!fd) return std::unexpected(sys_error(fmt::format("session records: create {}", tmp)));
    std::size_t off = 0;
    while (off < text.size()) {
      const ssize_t n = ::write(fd.get(), text.data() + off, text.size() - off);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        const int e = errno;
        ::unlink(tmp.c_str());
        return std::unexpected(sys_error(fmt::format("session records: write {}", tmp), e));
      }
      off += static_cast<std::size_t>(n);
    }
    if (auto ok = sync_fd(fd.get(), tmp); !ok) {
      ::unlink(tmp.c_str());
      return ok;
    }
  }
  if (::rename(tmp.c_str(), final_path.c_str()) != 0) {
    const int e = errno;
    ::unlink(tmp.c_str());
    return std::unexpected(sys_error(fmt::format("session records: rename to {}", final_path), e));
  }
  // The rename is durable only once the directory is.
  UniqueFd d(::open(dir_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!d) return std::unexpected(sys_error(fmt::format("session records: open {}", dir_)));
  return sync_fd(d.get(), dir_);
}

Result<std::optional<SessionOutcome>> SessionRecords::find(std::uint64_t session) const {
  const std::string path = path_of(session);
  std::ifstream in(path);
  if (!in) {
    if (errno == ENOENT) return std::optional<SessionOutcome>{};
    return std::unexpected(sys_error(fmt::format("session records: read {}", path)));
  }
  std::string line;
  if (!std::getline(in, line) || line != kHeader) return fail("session records: {} is not a session record", path);
  std::optional<std::uint64_t> token;
  std::optional<SessionOutcome> outcome;
  while (std::getline(in, line)) {
    const auto eq = line.find('=');
    if (eq == std::string::npos) continue;
    const std::string key = line.substr(0, eq), value = line.substr(eq + 1);
    if (key == "session") {
      token = std::strtoull(value.c_str(), nullptr, 16);
    } else if (key == "outcome") {
      if (value == session_outcome_name(SessionOutcome::kCommitted)) outcome = SessionOutcome::kCommitted;
      else if (value == session_outcome_name(SessionOutcome::kDiscarded)) outcome = SessionOutcome::kDiscarded;
      else return fail("session records: {} has outcome '{}'", path, value);
    }
  }
  if (!token || *token != session || !outcome) return fail("session records: {} is incomplete or not for this session", path);
  return outcome;
}

}  // namespace ferry::migration
