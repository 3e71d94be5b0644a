// ferry-fault-proxy: a TCP relay between a migration source and destination
// that injects exactly one fault, for the end-to-end failure tests. The
// source connects to the proxy instead of the destination; every accepted
// connection (a migration stream) gets its own connection to the target.
//
// Bytes go through unchanged except where the fault needs them. Only the
// directions a fault looks at are cut into frames (protocol.hh: a 32-byte
// header, then payload_length bytes), and only to find frame boundaries:
// the proxy never validates frames, because the point is to see what the
// real receiver does with what arrives.
//
// Threads: the main thread accepts; each connection has one thread per
// direction on non-blocking sockets, each waiting in poll() on its socket and
// two eventfds, "stop" (the fault ends the session) and the connection's
// "abort" (one of its directions failed). Waking every thread through an
// eventfd instead of shutdown() lets the main thread close the sockets
// itself afterwards with SO_LINGER 0, so a cut is a bare RST: a shutdown()
// would send a FIN first and let a peer read a clean end of stream. Before a
// cut the bytes forwarded so far are waited for until the peer has
// acknowledged them, since a reset discards whatever is still queued here.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <linux/sockios.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <iterator>
#include <list>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <fmt/format.h>

#include "userspace/base/error.hh"
#include "userspace/base/unique_fd.hh"
#include "userspace/base/crc32c.hh"
#include "userspace/migration/payloads.hh"
#include "userspace/migration/protocol.hh"

namespace ferry::fault_proxy {
namespace {

namespace mig = ferry::migration;
using mig::FrameType;
using mig::kHeaderSize;

constexpr std::size_t kBufferSize = 256 * 1024;
// How long a graceful close waits for the destination to close its side.
constexpr auto kDrainTimeout = std::chrono::seconds(5);
// How long a cut waits for the peer to take the bytes forwarded before it.
constexpr auto kDeliverTimeout = std::chrono::seconds(10);

constexpr std::string_view kUsage = R"(usage: ferry-fault-proxy --listen HOST:PORT --to HOST:PORT --fault FAULT [--port-file FILE]

A TCP relay for live-migration failure tests. Every connection accepted on
--listen is relayed to a new connection to --to (connection 0 is the first
accepted), bytes unchanged except for the one fault. Once listening it prints
"listening on HOST:PORT" (port 0 picks a free port) and writes the port to
--port-file. It relays until killed, or until the fault has been injected and
every connection has closed, then exits 0. Bad arguments exit 2.

Faults. TYPE is a frame type name, one of:
  {}.
Frames are counted from 1 across all connections. Types only the destination
sends are looked for in the destination->source direction, every other type
in the source->destination direction. The destination sends HELLO, ABORT and
  {}.
  none                        relay only
  cut-after-bytes:N           after N bytes from the source on connection 0,
                              reset every connection (RST) and stop accepting
  cut-at-frame:TYPE[:K]       forward the first half (header and payload
                              together) of the K-th TYPE frame (default: the
                              1st), then reset every connection and stop
                              accepting
  corrupt-page:K              flip one bit in the first page's data of the
                              K-th PAGES frame that has pages: the frame CRC
                              still passes, the page's checksum does not
  corrupt-frame:TYPE          flip one bit in the first payload byte of the
                              first TYPE frame: its payload CRC fails
  version:MAJOR.MINOR         write this version into every source->destination
                              frame header (header CRC recomputed)
  cpuid-bit:FN:INDEX:REG:BIT  in PRECHECK, set bit BIT (0-31) of REG (eax, ebx,
                              ecx or edx) of the cpuid entry (FN, INDEX), adding
                              the entry if absent; FN and INDEX take 0x hex
  extra-device:KIND:ID        in PRECHECK, add a device (KIND, ID, no config)
                              to the source VM's device list
  delay-at-frame:TYPE:MS      hold the first TYPE frame MS milliseconds before
                              forwarding it (and what follows it on its
                              connection and direction)
  drop-from-dest-after:TYPE   when the destination starts a TYPE frame (one
                              that it sends), forward neither it nor anything
                              after it in either direction; shut down the
                              source's connections, close the destination's
                              gracefully (waits up to 5 s for its close)
)";

// One write() per line, so lines from relay threads never interleave.
template <class... Args>
void log(fmt::format_string<Args...> f, Args&&... args) {
  const std::string line = "fault-proxy: " + fmt::format(f, std::forward<Args>(args)...) + "\n";
  (void)!::write(STDERR_FILENO, line.data(), line.size());
}

template <class T>
T load_le(std::span<const std::byte> b, std::size_t at) {
  T v = 0;
  for (std::size_t i = 0; i < sizeof(T); ++i) v |= static_cast<T>(std::to_integer<T>(b[at + i]) << (8 * i));
  return v;
}

template <class T>
void store_le(std::span<std::byte> b, std::size_t at, T v) {
  for (std::size_t i = 0; i < sizeof(T); ++i) b[at + i] = static_cast<std::byte>(v >> (8 * i));
}

// After changing header fields the header must still pass its CRC, or the
// receiver would report a CRC mismatch instead of the fault under test.
void reseal_header(std::span<std::byte, kHeaderSize> h) {
  store_le<std::uint32_t>(h, mig::kHeaderCrcOffset, ferry::crc32c(h.first(mig::kHeaderCrcOffset)));
}

void append(std::vector<std::byte>& out, std::span<const std::byte> bytes) {
  out.insert(out.end(), bytes.begin(), bytes.end());
}

std::string_view type_name(std::uint16_t type) { return mig::frame_type_name(static_cast<FrameType>(type)); }

// Types only the destination sends, so the only direction to look in. By
// name, so that types appended to the protocol later need only their name
// here.
bool destination_only(FrameType t) {
  constexpr std::array<std::string_view, 4> kNames{"PRECHECK_RESULT", "READY", "CONFIRMED", "QUERY_RESULT"};
  return std::ranges::find(kNames, mig::frame_type_name(t)) != kNames.end();
}
bool destination_sends(FrameType t) {
  return destination_only(t) || t == FrameType::kHello || t == FrameType::kAbort;
}

// ---------------------------------------------------------------------------
// The fault, from --fault.

enum class Kind {
  kNone,
  kCutAfterBytes,
  kCutAtFrame,
  kCorruptPage,
  kCorruptFrame,
  kVersion,
  kCpuidBit,
  kExtraDevice,
  kDropFromDestAfter,
  kDelayAtFrame,
};

struct Fault {
  Kind kind = Kind::kNone;
  std::string text;               // as given, for logs
  std::uint64_t bytes = 0;        // cut-after-bytes
  FrameType type = FrameType::kInvalid;  // cut-at-frame, corrupt-frame, drop-from-dest-after
  std::uint64_t nth = 1;          // cut-at-frame, corrupt-page (from 1)
  std::uint64_t delay_ms = 0;     // delay-at-frame
  std::uint16_t major = 0, minor = 0;
  std::uint32_t function = 0, index = 0;
  std::string reg;  // eax, ebx, ecx, edx
  unsigned bit = 0;
  std::string device_kind, device_id;  // extra-device

  // Whether the direction is cut into frames: only where the fault needs it.
  bool parses(bool upstream) const {
    switch (kind) {
      case Kind::kNone:
      case Kind::kCutAfterBytes: return false;
      case Kind::kCorruptPage:
      case Kind::kVersion:
      case Kind::kCpuidBit:
      case Kind::kExtraDevice: return upstream;
      case Kind::kCutAtFrame:
      case Kind::kCorruptFrame:
      case Kind::kDelayAtFrame: return upstream != destination_only(type);
      case Kind::kDropFromDestAfter: return !upstream;
    }
    return false;
  }
};

std::vector<std::string_view> split(std::string_view s, char sep) {
  std::vector<std::string_view> parts;
  for (;;) {
    const auto at = s.find(sep);
    parts.push_back(s.substr(0, at));
    if (at == std::string_view::npos) return parts;
    s.remove_prefix(at + 1);
  }
}

// Decimal, or hex with 0x (cpuid leaves are written in hex everywhere).
Result<std::uint64_t> parse_number(std::string_view s, std::string_view what, std::uint64_t max) {
  int base = 10;
  if (s.starts_with("0x") || s.starts_with("0X")) {
    base = 16;
    s.remove_prefix(2);
  }
  std::uint64_t v = 0;
  const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v, base);
  if (s.empty() || ec != std::errc() || end != s.data() + s.size()) return fail("{}: '{}' is not a number", what, s);
  if (v > max) return fail("{}: {} is larger than {}", what, v, max);
  return v;
}

// "HELLO, PRECHECK, ...": every type, or only those the destination sends.
std::string type_names(bool destination_only_types) {
  std::string names;
  for (auto t = std::uint16_t{1}; t <= static_cast<std::uint16_t>(mig::kLastFrameType); ++t) {
    if (destination_only_types && !destination_only(static_cast<FrameType>(t))) continue;
    names += fmt::format("{}{}", names.empty() ? "" : ", ", type_name(t));
  }
  return names;
}

Result<FrameType> parse_type(std::string_view s) {
  std::string upper(s);
  std::ranges::transform(upper, upper.begin(), [](unsigned char c) { return static_cast<char>(std::toupper(c)); });
  for (auto t = std::uint16_t{1}; t <= static_cast<std::uint16_t>(mig::kLastFrameType); ++t) {
    if (type_name(t) == upper) return static_cast<FrameType>(t);
  }
  return fail("unknown frame type '{}' (one of {})", s, type_names(false));
}

Result<Fault> parse_fault(std::string_view text) {
  Fault f;
  f.text = text;
  const auto parts = split(text, ':');
  const std::string_view name = parts[0];
  const std::size_t args = parts.size() - 1;
  auto want = [&](std::size_t lo, std::size_t hi, std::string_view form) -> Status {
    if (args < lo || args > hi) return fail("fault '{}': expected {}", text, form);
    return {};
  };
  auto context = [&](Error e) { return std::unexpected(std::move(e).context(fmt::format("fault '{}'", text))); };
  if (name == "none") {
    if (auto s = want(0, 0, "none"); !s) return std::unexpected(s.error());
    f.kind = Kind::kNone;
  } else if (name == "cut-after-bytes") {
    if (auto s = want(1, 1, "cut-after-bytes:N"); !s) return std::unexpected(s.error());
    auto n = parse_number(parts[1], "N", UINT64_MAX);
    if (!n) return context(n.error());
    f.kind = Kind::kCutAfterBytes;
    f.bytes = *n;
  } else if (name == "cut-at-frame" || name == "corrupt-frame" || name == "drop-from-dest-after") {
    const bool cut = name == "cut-at-frame";
    if (auto s = want(1, cut ? 2 : 1, cut ? "cut-at-frame:TYPE[:K]" : fmt::format("{}:TYPE", name)); !s) {
      return std::unexpected(s.error());
    }
    auto t = parse_type(parts[1]);
    if (!t) return context(t.error());
    f.type = *t;
    if (cut) {
      f.kind = Kind::kCutAtFrame;
      if (args == 2) {
        auto k = parse_number(parts[2], "K", UINT64_MAX);
        if (!k) return context(k.error());
        if (*k == 0) return fail("fault '{}': K counts from 1", text);
        f.nth = *k;
      }
    } else if (name == "corrupt-frame") {
      f.kind = Kind::kCorruptFrame;
    } else {
      f.kind = Kind::kDropFromDestAfter;
      if (!destination_sends(f.type)) {
        return fail("fault '{}': the destination never sends {} (it sends HELLO, ABORT, {})", text,
                    mig::frame_type_name(f.type), type_names(true));
      }
    }
  } else if (name == "delay-at-frame") {
    if (auto s = want(2, 2, "delay-at-frame:TYPE:MS"); !s) return std::unexpected(s.error());
    auto t = parse_type(parts[1]);
    if (!t) return context(t.error());
    auto ms = parse_number(parts[2], "MS", 600000);
    if (!ms) return context(ms.error());
    f.kind = Kind::kDelayAtFrame;
    f.type = *t;
    f.delay_ms = *ms;
  } else if (name == "corrupt-page") {
    if (auto s = want(1, 1, "corrupt-page:K"); !s) return std::unexpected(s.error());
    auto k = parse_number(parts[1], "K", UINT64_MAX);
    if (!k) return context(k.error());
    if (*k == 0) return fail("fault '{}': K counts from 1", text);
    f.kind = Kind::kCorruptPage;
    f.nth = *k;
  } else if (name == "version") {
    if (auto s = want(1, 1, "version:MAJOR.MINOR"); !s) return std::unexpected(s.error());
    const auto v = split(parts[1], '.');
    if (v.size() != 2) return fail("fault '{}': expected version:MAJOR.MINOR", text);
    auto major = parse_number(v[0], "MAJOR", UINT16_MAX);
    if (!major) return context(major.error());
    auto minor = parse_number(v[1], "MINOR", UINT16_MAX);
    if (!minor) return context(minor.error());
    f.kind = Kind::kVersion;
    f.major = static_cast<std::uint16_t>(*major);
    f.minor = static_cast<std::uint16_t>(*minor);
  } else if (name == "cpuid-bit") {
    if (auto s = want(4, 4, "cpuid-bit:FUNCTION:INDEX:REG:BIT"); !s) return std::unexpected(s.error());
    auto fn = parse_number(parts[1], "FUNCTION", UINT32_MAX);
    if (!fn) return context(fn.error());
    auto index = parse_number(parts[2], "INDEX", UINT32_MAX);
    if (!index) return context(index.error());
    const std::string_view reg = parts[3];
    if (reg != "eax" && reg != "ebx" && reg != "ecx" && reg != "edx") {
      return fail("fault '{}': REG '{}' is not eax, ebx, ecx or edx", text, reg);
    }
    auto bit = parse_number(parts[4], "BIT", 31);
    if (!bit) return context(bit.error());
    f.kind = Kind::kCpuidBit;
    f.function = static_cast<std::uint32_t>(*fn);
    f.index = static_cast<std::uint32_t>(*index);
    f.reg = reg;
    f.bit = static_cast<unsigned>(*bit);
  } else if (name == "extra-device") {
    if (auto s = want(2, 2, "extra-device:KIND:ID"); !s) return std::unexpected(s.error());
    f.kind = Kind::kExtraDevice;
    f.device_kind = parts[1];
    f.device_id = parts[2];
  } else {
    return fail("unknown fault '{}' (see --help)", text);
  }
  return f;
}

struct Options {
  std::string listen;
  std::string to;
  std::string port_file;
  Fault fault;
};

// ---------------------------------------------------------------------------
// State shared by the relay threads.

enum class Ending : int { kNone, kCut, kDrop };

void signal_eventfd(int fd) {
  const std::uint64_t one = 1;
  (void)!::write(fd, &one, sizeof one);
}

struct Shared {
  Fault fault;
  UniqueFd stop;    // eventfd, readable once the fault ends the session; never drained
  UniqueFd reaped;  // eventfd: a connection's last relay thread finished
  std::atomic<int> ending{static_cast<int>(Ending::kNone)};
  std::atomic<bool> injected{false};
  // Frames seen per type, across connections, by direction (the fault's
  // "K-th frame of TYPE"). Indexed by the raw type; unknown types share 0.
  static constexpr std::size_t kTypes = static_cast<std::size_t>(mig::kLastFrameType) + 1;
  std::array<std::atomic<std::uint64_t>, kTypes> seen_up{};
  std::array<std::atomic<std::uint64_t>, kTypes> seen_down{};

  // The first fault to end the session decides how it ends.
  void end(Ending e) {
    int none = static_cast<int>(Ending::kNone);
    if (ending.compare_exchange_strong(none, static_cast<int>(e))) {
      injected = true;
      signal_eventfd(stop.get());
    }
  }
  // True once, for the one frame that gets a one-shot fault.
  bool claim() { return !injected.exchange(true); }
};

struct Connection {
  std::uint64_t index = 0;
  UniqueFd source;  // accepted from the source
  UniqueFd dest;    // our connection to the target
  UniqueFd abort;   // eventfd: one direction failed, stop the other one too
  std::atomic<bool> reset{false};  // close both sides with RST, passing the failure on
  std::atomic<int> running{2};
  std::uint64_t up_bytes = 0;    // written by the up thread, read after join
  std::uint64_t down_bytes = 0;  // likewise for the down thread
  std::thread up, down;

  void fail() {
    reset = true;
    signal_eventfd(abort.get());
  }
};

enum class Wait { kReady, kStop };

// Stop wins over data: once the fault ends the session nothing more moves.
Wait wait_for(int fd, short events, const Shared& s, const Connection& c) {
  std::array<pollfd, 3> p{{{fd, events, 0}, {s.stop.get(), POLLIN, 0}, {c.abort.get(), POLLIN, 0}}};
  for (;;) {
    if (::poll(p.data(), p.size(), -1) < 0) {
      if (errno == EINTR) continue;
      return Wait::kStop;
    }
    if (p[1].revents != 0 || p[2].revents != 0) return Wait::kStop;
    // POLLERR and POLLHUP count as ready: the read or send reports them.
    if (p[0].revents != 0) return Wait::kReady;
  }
}

enum class Sent { kOk, kStopped, kFailed };

Sent send_all(int fd, std::span<const std::byte> data, const Shared& s, const Connection& c) {
  while (!data.empty()) {
    const ssize_t n = ::send(fd, data.data(), data.size(), MSG_NOSIGNAL);
    if (n >= 0) {
      data = data.subspan(static_cast<std::size_t>(n));
      continue;
    }
    if (errno == EINTR) continue;
    if (errno != EAGAIN && errno != EWOULDBLOCK) return Sent::kFailed;
    if (wait_for(fd, POLLOUT, s, c) == Wait::kStop) return Sent::kStopped;
  }
  return Sent::kOk;
}

// Waits until the peer has acknowledged everything written to `fd`. A cut
// closes with SO_LINGER 0, which discards what is still queued here, so
// without this the peer would get less than "the first N bytes" whenever
// its receive window was full. Acknowledged bytes are safe: Linux lets the
// peer read its queued data before it reports the reset.
void wait_until_delivered(int fd, const Shared& s, const Connection& c) {
  const auto deadline = std::chrono::steady_clock::now() + kDeliverTimeout;
  std::array<pollfd, 2> p{{{s.stop.get(), POLLIN, 0}, {c.abort.get(), POLLIN, 0}}};
  for (;;) {
    int queued = 0;
    if (::ioctl(fd, SIOCOUTQ, &queued) != 0 || queued == 0) return;
    if (std::chrono::steady_clock::now() > deadline) {
      log("connection {}: the peer has not taken {} forwarded bytes after {} s; cutting anyway", c.index, queued,
          kDeliverTimeout.count());
      return;
    }
    // Polling the queue: there is no event for "everything acknowledged".
    if (::poll(p.data(), p.size(), 1) > 0) return;
  }
}

// ---------------------------------------------------------------------------
// Frame-aware editing of one direction.

enum class After {
  kContinue,
  kCut,   // write what process() returned, then reset everything
  kDrop,  // write what process() returned (nothing of the frame), then end
};

// Follows frame boundaries in one direction and applies the fault. Headers
// are held back until complete, because most faults decide (or rewrite)
// from the header before any of the frame may go out; payloads stream
// through, except PRECHECK under cpuid-bit, which is re-encoded whole.
class FrameEditor {
 public:
  FrameEditor(Shared& s, std::uint64_t connection, bool upstream)
      : s_(s), fault_(s.fault), connection_(connection), upstream_(upstream) {}

  // Puts into `out` the bytes to forward for `in` (which may be modified in
  // place) and says what to do once they are written.
  After process(std::span<std::byte> in, std::vector<std::byte>& out) {
    out.clear();
    while (!in.empty()) {
      if (raw_) {
        append(out, in);
        break;
      }
      if (!in_payload_) {
        const std::size_t n = std::min(in.size(), kHeaderSize - header_fill_);
        std::copy_n(in.begin(), n, header_.begin() + static_cast<std::ptrdiff_t>(header_fill_));
        header_fill_ += n;
        in = in.subspan(n);
        if (header_fill_ < kHeaderSize) break;
        header_fill_ = 0;
        if (const After a = start_frame(out); a != After::kContinue) return a;
        continue;
      }
      const auto n = static_cast<std::size_t>(std::min<std::uint64_t>(in.size(), length_ - pos_));
      const std::span<std::byte> chunk = in.first(n);
      in = in.subspan(n);
      if (const After a = payload(chunk, out); a != After::kContinue) return a;
    }
    return After::kContinue;
  }

  // At the end of the input: whatever is held back, unchanged, so the peer
  // sees the same truncated frame the sender made.
  void flush(std::vector<std::byte>& out) {
    out.clear();
    if (!in_payload_) {
      append(out, std::span(header_).first(header_fill_));
    } else if (action_ == Action::kBuffer) {
      append(out, frame_);
    }
  }

 private:
  enum class Action { kPass, kFlip, kBuffer, kCutMidway };

  std::string where() const {
    return fmt::format("{} frame {} (connection {})", type_name(type_), nth_, connection_);
  }

  After start_frame(std::vector<std::byte>& out) {
    const std::span<std::byte, kHeaderSize> h(header_);
    if (const auto magic = load_le<std::uint32_t>(h, 0); magic != mig::kMagic) {
      // Not a frame: nothing to edit any more, but the receiver must still
      // get the bytes to produce its own error.
      log("connection {}: {} frame {} has bad magic {:#010x}; relaying the rest of this direction unparsed",
          connection_, upstream_ ? "source" : "destination", frames_, magic);
      raw_ = true;
      append(out, h);
      return After::kContinue;
    }
    type_ = load_le<std::uint16_t>(h, 8);
    length_ = load_le<std::uint64_t>(h, 16);
    pos_ = 0;
    ++frames_;
    action_ = Action::kPass;
    auto& seen = upstream_ ? s_.seen_up : s_.seen_down;
    nth_ = ++seen[type_ < seen.size() ? type_ : 0];
    const auto type = static_cast<FrameType>(type_);

    switch (fault_.kind) {
      case Kind::kNone:
      case Kind::kCutAfterBytes: break;
      case Kind::kVersion:
        store_le(h, 4, fault_.major);
        store_le(h, 6, fault_.minor);
        reseal_header(h);
        if (!version_logged_) {
          version_logged_ = true;
          s_.injected = true;
          log("injected version:{}.{} in {} and every frame header after it", fault_.major, fault_.minor, where());
        }
        break;
      case Kind::kCutAtFrame:
        if (type == fault_.type && nth_ == fault_.nth) {
          cut_left_ = (kHeaderSize + length_) / 2;
          log("injected cut-at-frame in {}: forwarding {} of its {} bytes, then resetting every connection",
              where(), cut_left_, kHeaderSize + length_);
          const auto n = static_cast<std::size_t>(std::min<std::uint64_t>(cut_left_, kHeaderSize));
          append(out, h.first(n));
          cut_left_ -= n;
          if (cut_left_ == 0) return After::kCut;
          action_ = Action::kCutMidway;
          in_payload_ = true;
          return After::kContinue;
        }
        break;
      case Kind::kCorruptFrame:
        if (type == fault_.type && nth_ == 1 && s_.claim()) {
          if (length_ == 0) {
            // No payload to flip: spoil the stored CRC instead, which fails
            // the same check.
            store_le(h, 24, load_le<std::uint32_t>(h, 24) ^ 1u);
            reseal_header(h);
            log("injected corrupt-frame in {}: empty payload, flipped bit 0 of payload_crc32c", where());
          } else {
            action_ = Action::kFlip;
            flip_at_ = 0;  // the fixed part: CRC-covered for every type, PAGES too
          }
        }
        break;
      case Kind::kCorruptPage:
        if (type == FrameType::kPages && nth_ >= fault_.nth && !s_.injected) {
          const auto covered = mig::crc_covered_length(type, length_);
          if (covered && *covered < length_ && s_.claim()) {
            action_ = Action::kFlip;
            flip_at_ = *covered;  // the first byte after the descriptors
          } else if (covered && *covered == length_ && nth_ == fault_.nth) {
            log("corrupt-page: {} has no pages; corrupting the next PAGES frame that has", where());
          }
        }
        break;
      case Kind::kCpuidBit:
      case Kind::kExtraDevice:
        if (type == FrameType::kPrecheck && length_ <= mig::kMaxPayload) {
          action_ = Action::kBuffer;
          frame_.assign(h.begin(), h.end());
        }
        break;
      case Kind::kDelayAtFrame:
        if (type == fault_.type && nth_ == 1 && s_.claim()) {
          // Holds this direction of this connection back: nothing behind
          // the frame overtakes it.
          log("injected delay-at-frame in {}: holding it {} ms", where(), fault_.delay_ms);
          std::this_thread::sleep_for(std::chrono::milliseconds(fault_.delay_ms));
        }
        break;
      case Kind::kDropFromDestAfter:
        if (type == fault_.type) {
          s_.injected = true;
          log("injected drop-from-dest-after in {}: dropping it and everything after it, "
              "shutting down the source's connections",
              where());
          return After::kDrop;
        }
        break;
    }
    if (action_ != Action::kBuffer) append(out, h);
    in_payload_ = true;
    return length_ == 0 ? end_frame(out) : After::kContinue;
  }

  After payload(std::span<std::byte> chunk, std::vector<std::byte>& out) {
    if (action_ == Action::kCutMidway) {
      // The cut point is always inside the payload: half of header plus
      // payload is less than what follows the header whenever it is past it.
      const auto n = static_cast<std::size_t>(std::min<std::uint64_t>(chunk.size(), cut_left_));
      append(out, chunk.first(n));
      cut_left_ -= n;
      pos_ += n;
      return cut_left_ == 0 ? After::kCut : After::kContinue;
    }
    // The payload's first bytes, for the log line (PAGES: slot and first
    // descriptor, which arrive before any page data).
    for (std::uint64_t i = pos_; i < std::min<std::uint64_t>(pos_ + chunk.size(), prefix_.size()); ++i) {
      prefix_[i] = chunk[i - pos_];
    }
    if (action_ == Action::kFlip && flip_at_ >= pos_ && flip_at_ < pos_ + chunk.size()) {
      chunk[flip_at_ - pos_] ^= std::byte{1};
      action_ = Action::kPass;
      if (fault_.kind == Kind::kCorruptPage) {
        log("injected corrupt-page in {}: flipped bit 0 of the first byte of page {} (slot {}, payload offset {})",
            where(), load_le<std::uint64_t>(prefix_, 12), load_le<std::uint32_t>(prefix_, 0), flip_at_);
      } else {
        log("injected corrupt-frame in {}: flipped bit 0 of payload byte {}", where(), flip_at_);
      }
    }
    if (action_ == Action::kBuffer) {
      append(frame_, chunk);
    } else {
      append(out, chunk);
    }
    pos_ += chunk.size();
    return pos_ == length_ ? end_frame(out) : After::kContinue;
  }

  After end_frame(std::vector<std::byte>& out) {
    if (action_ == Action::kBuffer) rewrite_precheck(out);
    in_payload_ = false;
    action_ = Action::kPass;
    return After::kContinue;
  }

  // cpuid-bit, extra-device: decode, change, re-encode with a new length
  // and both CRCs, so the destination sees a well-formed PRECHECK asking
  // for a CPU feature or a device, and the decision is its own check's, not
  // a decoder's.
  void rewrite_precheck(std::vector<std::byte>& out) {
    const char* name = fault_.kind == Kind::kCpuidBit ? "cpuid-bit" : "extra-device";
    const auto payload = std::span<const std::byte>(frame_).subspan(kHeaderSize);
    auto precheck = mig::decode_precheck(payload);
    if (!precheck) {
      log("{}: cannot decode {} ({}); forwarded unchanged", name, where(), precheck.error());
      append(out, frame_);
      return;
    }
    auto what = fault_.kind == Kind::kCpuidBit ? set_cpuid_bit(*precheck) : add_device(*precheck);
    if (!what) {
      log("{}: {}; forwarded unchanged", name, what.error());
      append(out, frame_);
      return;
    }
    const std::vector<std::byte> encoded = mig::encode(*precheck);
    const auto sequence = load_le<std::uint32_t>(std::span(frame_).first(kHeaderSize), 12);
    append(out, mig::encode_header(FrameType::kPrecheck, sequence, encoded.size(), ferry::crc32c(encoded)));
    append(out, encoded);
    s_.injected = true;
    log("injected {} in {}: {}", name, where(), *what);
  }

  Result<std::string> set_cpuid_bit(mig::Precheck& precheck) const {
    auto it = std::ranges::find_if(precheck.cpuid, [&](const mig::CpuidEntry& e) {
      return e.function == fault_.function && e.index == fault_.index;
    });
    const bool added = it == precheck.cpuid.end();
    if (added) {
      if (precheck.cpuid.size() >= mig::kMaxCpuidEntries)
        return fail("{} already has {} cpuid entries, no room to add one", where(), precheck.cpuid.size());
      precheck.cpuid.push_back({.function = fault_.function, .index = fault_.index});
      it = std::prev(precheck.cpuid.end());
    }
    std::uint32_t& reg = fault_.reg == "eax"   ? it->eax
                         : fault_.reg == "ebx" ? it->ebx
                         : fault_.reg == "ecx" ? it->ecx
                                               : it->edx;
    const std::uint32_t before = reg;
    reg |= std::uint32_t{1} << fault_.bit;
    return fmt::format("cpuid {:#x}.{:#x} {} bit {}: {:#010x} -> {:#010x}{}", fault_.function, fault_.index,
                       fault_.reg, fault_.bit, before, reg, added ? " (entry added)" : "");
  }

  Result<std::string> add_device(mig::Precheck& precheck) const {
    if (!precheck.devices) return fail("{} has no device list (a 1.1 source)", where());
    if (precheck.devices->size() >= mig::kMaxDevices) return fail("{} has no room for another device", where());
    precheck.devices->push_back({fault_.device_kind, fault_.device_id, ""});
    return fmt::format("device {} ({}) added to the {} the source has", fault_.device_id, fault_.device_kind,
                       precheck.devices->size() - 1);
  }

  Shared& s_;
  const Fault& fault_;
  const std::uint64_t connection_;
  const bool upstream_;

  bool raw_ = false;  // lost the frame boundaries: relay unparsed
  std::array<std::byte, kHeaderSize> header_{};
  std::size_t header_fill_ = 0;
  bool in_payload_ = false;
  std::uint16_t type_ = 0;
  std::uint64_t length_ = 0;
  std::uint64_t pos_ = 0;     // payload bytes seen of the current frame
  std::uint64_t frames_ = 0;  // frames started in this direction of this connection
  std::uint64_t nth_ = 0;     // the current frame's number among its type, across connections
  Action action_ = Action::kPass;
  std::uint64_t flip_at_ = 0;
  std::uint64_t cut_left_ = 0;
  std::vector<std::byte> frame_;  // kBuffer: the whole frame so far
  std::array<std::byte, 64> prefix_{};
  bool version_logged_ = false;
};

// ---------------------------------------------------------------------------
// Relaying.

void relay(Shared& s, Connection& c, bool upstream) {
  const int in = upstream ? c.source.get() : c.dest.get();
  const int out = upstream ? c.dest.get() : c.source.get();
  std::uint64_t& total = upstream ? c.up_bytes : c.down_bytes;
  std::optional<FrameEditor> editor;
  if (s.fault.parses(upstream)) editor.emplace(s, c.index, upstream);
  const bool counts_bytes = s.fault.kind == Kind::kCutAfterBytes && upstream && c.index == 0;
  std::vector<std::byte> buffer(kBufferSize);
  std::vector<std::byte> edited;
  edited.reserve(kBufferSize + kHeaderSize);

  After after = counts_bytes && s.fault.bytes == 0 ? After::kCut : After::kContinue;
  while (after == After::kContinue) {
    if (wait_for(in, POLLIN, s, c) == Wait::kStop) break;
    const ssize_t n = ::read(in, buffer.data(), buffer.size());
    if (n < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) continue;
      c.fail();
      break;
    }
    if (n == 0) {
      // A clean end: pass it on as one (FIN), after anything held back.
      if (editor) {
        editor->flush(edited);
        if (send_all(out, edited, s, c) == Sent::kFailed) c.fail();
      }
      ::shutdown(out, SHUT_WR);
      break;
    }
    std::span<std::byte> chunk(buffer.data(), static_cast<std::size_t>(n));
    if (counts_bytes && chunk.size() >= s.fault.bytes - total) {
      chunk = chunk.first(s.fault.bytes - total);
      after = After::kCut;
    }
    std::span<const std::byte> data = chunk;
    if (editor) {
      after = editor->process(chunk, edited);
      data = edited;
    }
    total += chunk.size();
    const Sent sent = send_all(out, data, s, c);
    if (sent == Sent::kFailed) {
      c.fail();
      break;
    }
    if (sent == Sent::kStopped) break;
  }
  if (after == After::kCut) {
    wait_until_delivered(out, s, c);
    if (counts_bytes) log("injected cut-after-bytes after {} bytes from the source (connection 0)", total);
    s.end(Ending::kCut);
  } else if (after == After::kDrop) {
    s.end(Ending::kDrop);
  }
  if (--c.running == 0) signal_eventfd(s.reaped.get());
}

// SO_LINGER 0: close() sends RST and discards what is queued.
void close_with_reset(UniqueFd& fd) {
  if (!fd) return;
  const linger l{.l_onoff = 1, .l_linger = 0};
  ::setsockopt(fd.get(), SOL_SOCKET, SO_LINGER, &l, sizeof l);
  fd.reset();
}

// Reads and discards until every socket reaches end of stream (or the
// timeout), so that closing them sends FIN, not the RST Linux sends when
// unread data is left behind.
void drain_and_close(std::vector<UniqueFd>& fds) {
  const auto deadline = std::chrono::steady_clock::now() + kDrainTimeout;
  std::vector<std::byte> scratch(kBufferSize);
  while (!fds.empty()) {
    const auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) break;
    std::vector<pollfd> p;
    for (const UniqueFd& fd : fds) p.push_back({fd.get(), POLLIN, 0});
    if (::poll(p.data(), p.size(), static_cast<int>(left.count())) < 0 && errno != EINTR) break;
    for (std::size_t i = p.size(); i-- > 0;) {
      if (p[i].revents == 0) continue;
      const ssize_t n = ::read(p[i].fd, scratch.data(), scratch.size());
      if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
        fds.erase(fds.begin() + static_cast<std::ptrdiff_t>(i));
      }
    }
  }
  fds.clear();
}

// ---------------------------------------------------------------------------
// Addresses and the listening socket.

struct Endpoint {
  sockaddr_storage addr{};
  socklen_t len = 0;
};

Result<Endpoint> resolve(std::string_view spec, bool passive) {
  const auto colon = spec.rfind(':');
  if (colon == std::string_view::npos || colon + 1 == spec.size()) return fail("'{}' is not HOST:PORT", spec);
  std::string host(spec.substr(0, colon));
  const std::string port(spec.substr(colon + 1));
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  if (auto p = parse_number(port, "port", 65535); !p) return std::unexpected(std::move(p.error()).context(spec));
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV | (passive ? AI_PASSIVE : 0);
  addrinfo* res = nullptr;
  if (const int rc = ::getaddrinfo(host.empty() ? nullptr : host.c_str(), port.c_str(), &hints, &res); rc != 0) {
    return fail("{}: {}", spec, ::gai_strerror(rc));
  }
  Endpoint e;
  std::memcpy(&e.addr, res->ai_addr, res->ai_addrlen);
  e.len = res->ai_addrlen;
  ::freeaddrinfo(res);
  return e;
}

std::string describe(const sockaddr_storage& a) {
  std::array<char, INET6_ADDRSTRLEN> host{};
  if (a.ss_family == AF_INET6) {
    const auto& in6 = reinterpret_cast<const sockaddr_in6&>(a);
    ::inet_ntop(AF_INET6, &in6.sin6_addr, host.data(), host.size());
    return fmt::format("[{}]:{}", host.data(), ntohs(in6.sin6_port));
  }
  const auto& in4 = reinterpret_cast<const sockaddr_in&>(a);
  ::inet_ntop(AF_INET, &in4.sin_addr, host.data(), host.size());
  return fmt::format("{}:{}", host.data(), ntohs(in4.sin_port));
}

void tune(int fd) {
  // Small frames (READY, COMMIT) must not wait for Nagle: the tests time
  // the switchover through this proxy.
  const int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK);
}

Result<UniqueFd> connect_to(const Endpoint& target) {
  UniqueFd fd(::socket(target.addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd) return fail_sys("socket");
  while (::connect(fd.get(), reinterpret_cast<const sockaddr*>(&target.addr), target.len) != 0) {
    if (errno != EINTR) return std::unexpected(sys_error(fmt::format("connect to {}", describe(target.addr))));
  }
  return fd;
}

Status write_port_file(const std::string& path, std::uint16_t port) {
  // Written whole and renamed into place: a test polling for the file never
  // reads a half-written port.
  const std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp, std::ios::trunc);
    f << port << "\n";
    if (!f.flush()) return fail("cannot write {}", tmp);
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) return fail_sys(fmt::format("rename {} to {}", tmp, path));
  return {};
}

// ---------------------------------------------------------------------------
// The accept loop.

using Connections = std::list<std::unique_ptr<Connection>>;

void join(Connection& c) {
  if (c.up.joinable()) c.up.join();
  if (c.down.joinable()) c.down.join();
}

// The session ended by the fault: every relay thread is stopping.
void tear_down(Shared& s, Connections& connections) {
  for (auto& c : connections) join(*c);
  if (static_cast<Ending>(s.ending.load()) == Ending::kCut) {
    for (auto& c : connections) {
      close_with_reset(c->source);
      close_with_reset(c->dest);
    }
    log("reset {} connection(s); exiting", connections.size());
  } else {
    // "The confirmation was lost": the source sees its connections end
    // without the frame; the destination, which sent it, sees an orderly
    // close and no error.
    std::vector<UniqueFd> dests;
    for (auto& c : connections) {
      ::shutdown(c->source.get(), SHUT_RDWR);
      c->source.reset();
      ::shutdown(c->dest.get(), SHUT_WR);
      dests.push_back(std::move(c->dest));
    }
    drain_and_close(dests);
    log("closed {} connection(s); exiting", connections.size());
  }
  connections.clear();
}

void reap(Connections& connections) {
  for (auto it = connections.begin(); it != connections.end();) {
    Connection& c = **it;
    if (c.running.load() != 0) {
      ++it;
      continue;
    }
    join(c);
    if (c.reset) {
      close_with_reset(c.source);
      close_with_reset(c.dest);
    }
    log("connection {} closed{} (source sent {} bytes, destination {})", c.index, c.reset ? " after an error" : "",
        c.up_bytes, c.down_bytes);
    it = connections.erase(it);
  }
}

Result<UniqueFd> make_eventfd() {
  UniqueFd fd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!fd) return fail_sys("eventfd");
  return fd;
}

int run(Options o) {
  ::signal(SIGPIPE, SIG_IGN);  // a peer's reset is reported by send(), not fatal
  auto listen_at = resolve(o.listen, true);
  if (!listen_at) {
    std::fputs(fmt::format("ferry-fault-proxy: --listen: {}\n", listen_at.error()).c_str(), stderr);
    return 2;
  }
  auto target = resolve(o.to, false);
  if (!target) {
    std::fputs(fmt::format("ferry-fault-proxy: --to: {}\n", target.error()).c_str(), stderr);
    return 2;
  }
  auto die = [](const Error& e) {
    log("{}", e);
    return 1;
  };

  UniqueFd listener(::socket(listen_at->addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!listener) return die(sys_error("socket"));
  const int one = 1;
  ::setsockopt(listener.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (::bind(listener.get(), reinterpret_cast<const sockaddr*>(&listen_at->addr), listen_at->len) != 0) {
    return die(sys_error(fmt::format("bind {}", o.listen)));
  }
  if (::listen(listener.get(), 64) != 0) return die(sys_error("listen"));
  sockaddr_storage bound{};
  socklen_t bound_len = sizeof bound;
  if (::getsockname(listener.get(), reinterpret_cast<sockaddr*>(&bound), &bound_len) != 0) {
    return die(sys_error("getsockname"));
  }
  if (!o.port_file.empty()) {
    const auto port = ntohs(bound.ss_family == AF_INET6 ? reinterpret_cast<const sockaddr_in6&>(bound).sin6_port
                                                        : reinterpret_cast<const sockaddr_in&>(bound).sin_port);
    if (auto st = write_port_file(o.port_file, port); !st) return die(st.error());
  }
  fmt::print("listening on {}\n", describe(bound));
  std::fflush(stdout);

  Shared s;
  s.fault = std::move(o.fault);
  auto stop = make_eventfd();
  auto reaped = make_eventfd();
  if (!stop) return die(stop.error());
  if (!reaped) return die(reaped.error());
  s.stop = std::move(*stop);
  s.reaped = std::move(*reaped);
  log("relaying to {} with fault {}", describe(target->addr), s.fault.text);

  Connections connections;
  std::uint64_t next_index = 0;
  for (;;) {
    std::array<pollfd, 3> p{{{listener.get(), POLLIN, 0}, {s.stop.get(), POLLIN, 0}, {s.reaped.get(), POLLIN, 0}}};
    if (::poll(p.data(), p.size(), -1) < 0) {
      if (errno == EINTR) continue;
      const Error e = sys_error("poll");
      s.end(Ending::kCut);
      listener.reset();
      tear_down(s, connections);
      return die(e);
    }
    if (p[1].revents != 0) {
      listener.reset();  // stop accepting: a queued connection gets a reset
      tear_down(s, connections);
      return 0;
    }
    if (p[2].revents != 0) {
      std::uint64_t count = 0;
      (void)!::read(s.reaped.get(), &count, sizeof count);
      reap(connections);
      if (s.injected && connections.empty()) {
        log("fault injected and every connection closed; exiting");
        return 0;
      }
      // Says why a test that expected the fault is still waiting.
      if (connections.empty()) log("every connection closed, fault {} not injected yet; still listening", s.fault.text);
    }
    if (p[0].revents == 0) continue;
    UniqueFd source(::accept4(listener.get(), nullptr, nullptr, SOCK_CLOEXEC));
    if (!source) {
      if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR && errno != ECONNABORTED) {
        log("{}", sys_error("accept"));
      }
      continue;
    }
    const std::uint64_t index = next_index++;
    auto dest = connect_to(*target);
    if (!dest) {
      // The source sees the refusal as a reset, as it would connecting
      // directly.
      log("connection {}: {}", index, dest.error());
      close_with_reset(source);
      continue;
    }
    auto abort = make_eventfd();
    if (!abort) {
      log("connection {}: {}", index, abort.error());
      close_with_reset(source);
      continue;
    }
    tune(source.get());
    tune(dest->get());
    auto c = std::make_unique<Connection>();
    c->index = index;
    c->source = std::move(source);
    c->dest = std::move(*dest);
    c->abort = std::move(*abort);
    log("connection {} accepted", index);
    c->up = std::thread(relay, std::ref(s), std::ref(*c), true);
    c->down = std::thread(relay, std::ref(s), std::ref(*c), false);
    connections.push_back(std::move(c));
  }
}

Result<Options> parse_args(std::span<char*> args) {
  Options o;
  bool have_fault = false;
  for (std::size_t i = 0; i < args.size(); ++i) {
    std::string_view arg = args[i];
    std::optional<std::string_view> value;
    if (const auto eq = arg.find('='); arg.starts_with("--") && eq != std::string_view::npos) {
      value = arg.substr(eq + 1);
      arg = arg.substr(0, eq);
    }
    auto take = [&]() -> Result<std::string> {
      if (value) return std::string(*value);
      if (i + 1 >= args.size()) return fail("{} needs a value", arg);
      return std::string(args[++i]);
    };
    Result<std::string> v;
    if (arg == "--listen") {
      if (!(v = take())) return std::unexpected(v.error());
      o.listen = *v;
    } else if (arg == "--to") {
      if (!(v = take())) return std::unexpected(v.error());
      o.to = *v;
    } else if (arg == "--port-file") {
      if (!(v = take())) return std::unexpected(v.error());
      o.port_file = *v;
    } else if (arg == "--fault") {
      if (!(v = take())) return std::unexpected(v.error());
      auto f = parse_fault(*v);
      if (!f) return std::unexpected(f.error());
      o.fault = std::move(*f);
      have_fault = true;
    } else {
      return fail("unknown argument '{}'", args[i]);
    }
  }
  if (o.listen.empty()) return fail("--listen HOST:PORT is required");
  if (o.to.empty()) return fail("--to HOST:PORT is required");
  if (!have_fault) return fail("--fault is required (--fault none to relay only)");
  return o;
}

}  // namespace
}  // namespace ferry::fault_proxy

int main(int argc, char** argv) {
  using namespace ferry::fault_proxy;
  const std::span<char*> args(argv + (argc > 0 ? 1 : 0), static_cast<std::size_t>(argc > 0 ? argc - 1 : 0));
  const auto is_help = [](std::string_view a) { return a == "--help" || a == "-h"; };
  if (std::ranges::any_of(args, is_help)) {
    std::fputs(fmt::format(fmt::runtime(kUsage), type_names(false), type_names(true)).c_str(), stdout);
    return 0;
  }
  auto options = parse_args(args);
  if (!options) {
    std::fputs(fmt::format("ferry-fault-proxy: {}\nTry 'ferry-fault-proxy --help'.\n", options.error()).c_str(),
               stderr);
    return 2;
  }
  return run(std::move(*options));
}
