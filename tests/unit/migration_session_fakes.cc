// Test doubles for the migration sessions (migration_session_fakes.hh).
#include "tests/unit/migration_session_fakes.hh"

#include <sys/socket.h>
#include <unistd.h>

#include <cstring>

namespace ferry::migration::testing {
namespace {

kvm::GuestRegion make_region(std::uint64_t pages, const char* name) {
  auto r = kvm::GuestRegion::create(0, 0, pages * kPageSize, name);
  if (!r) throw std::runtime_error(r.error().what());
  return std::move(*r);
}

}  // namespace

FakeSourceVm::FakeSourceVm()
    : ram_(make_region(kPages, "fake-source")), log_(std::vector<kvm::TrackedSlot>{{0, 0, kPages}}) {
  for (std::uint64_t p = 0; p < kDataPages; ++p)
    for (std::uint64_t w = 0; w < kPageSize / 8; ++w) {
      const std::uint64_t v = (p << 32) | (w * 2654435761u) | 1;
      std::memcpy(ram_.host() + p * kPageSize + w * 8, &v, 8);
    }
  // Allocated, but zero: the memfd holds these pages.
  for (std::uint64_t p = kDataPages; p < kAllocatedPages; ++p) std::memset(ram_.host() + p * kPageSize, 0, kPageSize);
  thread_ = std::thread([this] { guest(); });
}

FakeSourceVm::~FakeSourceVm() {
  {
    std::lock_guard lock(mu_);
    quit_ = true;
  }
  thread_.join();
}

void FakeSourceVm::guest_write_locked() {
  rng_ = rng_ * 6364136223846793005ull + 1442695040888963407ull;
  const std::uint64_t page = (rng_ >> 33) % kHotPages;
  const std::uint64_t word = (rng_ >> 17) % (kPageSize / 8);
  ++writes_;
  std::memcpy(ram_.host() + page * kPageSize + word * 8, &writes_, 8);
  if (tracking_) {
    log_.find(0)->set(page);
    ++tracked_writes_;
  }
}

void FakeSourceVm::guest() {
  for (;;) {
    {
      std::lock_guard lock(mu_);
      if (quit_) return;
      if (!paused_ && !stopped_) guest_write_locked();
    }
    std::this_thread::sleep_for(std::chrono::microseconds(100));
  }
}

Precheck FakeSourceVm::describe() const {
  Precheck p;
  p.vcpus = 1;
  p.regions.push_back({ram_.slot(), ram_.gpa(), ram_.size()});
  p.guest_kind = static_cast<std::uint32_t>(kvm::GuestKind::kTestGuest);
  p.irqchip = true;
  p.tsc_khz = 2'000'000;
  p.devices.emplace();
  return p;
}

Status FakeSourceVm::start_dirty_tracking() {
  std::lock_guard lock(mu_);
  if (tracking_) return fail("dirty logging is already on");
  tracking_ = true;
  log_.clear();
  return {};
}

Status FakeSourceVm::stop_dirty_tracking() {
  std::lock_guard lock(mu_);
  tracking_ = false;
  return {};
}

Status FakeSourceVm::harvest_dirty(kvm::DirtyLog& out) {
  std::lock_guard lock(mu_);
  if (!tracking_) return fail("harvest: dirty logging is off");
  // The guest writes under every running round (a test relies on it).
  if (!paused_ && !stopped_ && tracked_writes_ == tracked_at_last_harvest_) guest_write_locked();
  tracked_at_last_harvest_ = tracked_writes_;
  out.merge(log_);
  log_.clear();
  return {};
}

Status FakeSourceVm::pause() {
  std::lock_guard lock(mu_);
  if (stopped_) return fail("pause: the VM is stopped");
  paused_ = true;
  return {};
}

Status FakeSourceVm::resume() {
  std::lock_guard lock(mu_);
  if (stopped_) return fail("resume: the VM is stopped");
  paused_ = false;
  return {};
}

Status FakeSourceVm::stop(std::string) {
  std::lock_guard lock(mu_);
  stopped_ = true;
  return {};
}

Result<std::vector<std::byte>> FakeSourceVm::state_image() {
  std::lock_guard lock(mu_);
  if (!paused_) return fail("state_image: the VM is running");
  std::vector<std::byte> image(16);
  std::memcpy(image.data(), "fake-vm:", 8);
  std::memcpy(image.data() + 8, &writes_, 8);
  last_state_ = image;
  return image;
}

bool FakeSourceVm::running() const {
  std::lock_guard lock(mu_);
  return !paused_ && !stopped_;
}
bool FakeSourceVm::stopped() const {
  std::lock_guard lock(mu_);
  return stopped_;
}
bool FakeSourceVm::tracking() const {
  std::lock_guard lock(mu_);
  return tracking_;
}
std::vector<std::byte> FakeSourceVm::last_state() const {
  std::lock_guard lock(mu_);
  return last_state_;
}
std::uint64_t FakeSourceVm::writes_during_migration() const {
  std::lock_guard lock(mu_);
  return tracked_writes_;
}

namespace {

class FakeIncomingVm final : public IncomingVm {
 public:
  explicit FakeIncomingVm(std::shared_ptr<IncomingRecord> r) : r_(std::move(r)) {}
  const kvm::GuestRegion& ram() const override { return *r_->ram; }
  Status load_state(std::span<const std::byte> image) override {
    if (image.size() != 16 || std::memcmp(image.data(), "fake-vm:", 8) != 0) return fail("load_state: not a fake VM's state");
    r_->state.assign(image.begin(), image.end());
    r_->loaded = true;
    return {};
  }
  Status resume() override {
    if (!r_->loaded) return fail("resume: no state loaded");
    if (r_->stopped) return fail("resume: the VM is stopped");
    r_->resumed = true;
    return {};
  }
  Status stop(std::string) override {
    r_->stopped = true;
    return {};
  }
  void set_origin(std::string) override {}
  std::uint64_t first_heartbeat_wall_ns(std::chrono::milliseconds) override { return 0; }

 private:
  std::shared_ptr<IncomingRecord> r_;
};

}  // namespace

Result<HostResources> FakeHost::resources() {
  HostResources h;
  h.mem_available = 1ull << 30;
  h.max_vcpus = 8;
  return h;
}

Result<std::unique_ptr<IncomingVm>> FakeHost::build(const kvm::MachineShape& shape) {
  if (shape.regions.size() != 1) return fail("fake host: one region only");
  auto region = kvm::GuestRegion::create(shape.regions[0].slot, shape.regions[0].gpa, shape.regions[0].size, "fake-dest");
  if (!region) return std::unexpected(region.error());
  auto r = std::make_shared<IncomingRecord>();
  r->ram = std::make_unique<kvm::GuestRegion>(std::move(*region));
  std::lock_guard lock(mu_);
  records_.push_back(r);
  return std::unique_ptr<IncomingVm>(std::make_unique<FakeIncomingVm>(r));
}

bool FakeHost::built() const {
  std::lock_guard lock(mu_);
  return !records_.empty();
}

std::size_t FakeHost::builds() const {
  std::lock_guard lock(mu_);
  return records_.size();
}

IncomingRecord& FakeHost::last() {
  std::lock_guard lock(mu_);
  if (records_.empty()) throw std::runtime_error("the fake host built no VM");
  return *records_.back();
}

// ---------------------------------------------------------------------------
// Relay

namespace {

// Reads exactly n bytes; 0 on a clean end before the first, -1 otherwise.
ssize_t read_full(int fd, std::byte* out, std::size_t n) {
  std::size_t got = 0;
  while (got < n) {
    const ssize_t r = ::read(fd, out + got, n - got);
    if (r == 0) return got == 0 ? 0 : -1;
    if (r < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    got += static_cast<std::size_t>(r);
  }
  return static_cast<ssize_t>(got);
}

bool write_full(int fd, const std::byte* in, std::size_t n) {
  std::size_t put = 0;
  while (put < n) {
    const ssize_t w = ::send(fd, in + put, n - put, MSG_NOSIGNAL);
    if (w < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    put += static_cast<std::size_t>(w);
  }
  return true;
}

template <class T>
T load_le(const std::byte* b) {
  T v = 0;
  for (std::size_t i = 0; i < sizeof(T); ++i) v |= static_cast<T>(std::to_integer<T>(b[i]) << (8 * i));
  return v;
}

}  // namespace

Relay::~Relay() {
  release();
  {
    std::lock_guard lock(mu_);
    for (auto& fd : fds_) ::shutdown(fd.get(), SHUT_RDWR);
  }
  for (auto& t : threads_) t.join();
}

void Relay::interpose(transport::Connection& dialer_end, transport::Connection& listener_end) {
  (void)dialer_end;
  int pair[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) != 0) throw std::runtime_error("socketpair");
  // `source` carries the dialer's bytes; `dest` is the relay's end towards
  // the listener, whose new end is pair[1].
  UniqueFd source = listener_end.release();
  const int s = source.get(), d = pair[0];
  listener_end = transport::Connection(UniqueFd(pair[1]), "relayed");
  std::lock_guard lock(mu_);
  fds_.push_back(std::move(source));
  fds_.emplace_back(d);
  threads_.emplace_back([this, s, d] { pump(s, d, true); });
  threads_.emplace_back([this, s, d] { pump(d, s, false); });
}

bool Relay::matches(FrameType t) {
  std::lock_guard lock(mu_);
  if (fault_.kind == Fault::kNone || t != fault_.type || fired_) return false;
  if (++seen_ < fault_.nth) return false;
  fired_ = true;
  cv_.notify_all();
  return true;
}

void Relay::pump(int from, int to, bool) {
  std::vector<std::byte> frame;
  for (;;) {
    frame.resize(kHeaderSize);
    const ssize_t h = read_full(from, frame.data(), kHeaderSize);
    if (h <= 0) {
      if (h == 0) ::shutdown(to, SHUT_WR);  // pass a clean end on
      else {
        ::shutdown(from, SHUT_RDWR);
        ::shutdown(to, SHUT_RDWR);
      }
      return;
    }
    const auto type = static_cast<FrameType>(load_le<std::uint16_t>(frame.data() + 8));
    const auto length = load_le<std::uint64_t>(frame.data() + 16);
    if (length > kMaxPayload) {  // not ours to judge: pass the header on, then the bytes as they come
      if (!write_full(to, frame.data(), frame.size())) return;
      continue;
    }
    frame.resize(kHeaderSize + length);
    if (length && read_full(from, frame.data() + kHeaderSize, length) <= 0) {
      ::shutdown(from, SHUT_RDWR);
      ::shutdown(to, SHUT_RDWR);
      return;
    }
    if (matches(type)) {
      switch (fault_.kind) {
        case Fault::kCut:
          ::shutdown(from, SHUT_RDWR);
          ::shutdown(to, SHUT_RDWR);
          return;
        case Fault::kCorrupt:
          if (length) frame[kHeaderSize] ^= std::byte{0x01};
          break;
        case Fault::kDrop: continue;
        case Fault::kHold: {
          std::unique_lock lock(mu_);
          cv_.wait(lock, [&] { return released_; });
          break;
        }
        case Fault::kNone: break;
      }
    }
    if (!write_full(to, frame.data(), frame.size())) {
      // The receiver is gone: stop taking from the sender (its sends now
      // fail), but leave the other direction be, which may still carry the
      // receiver's last word (an ABORT) back to it.
      ::shutdown(from, SHUT_RD);
      return;
    }
  }
}

bool Relay::fired() const {
  std::lock_guard lock(mu_);
  return fired_;
}

bool Relay::wait_fired(std::chrono::milliseconds timeout) {
  std::unique_lock lock(mu_);
  return cv_.wait_for(lock, timeout, [&] { return fired_; });
}

void Relay::release() {
  std::lock_guard lock(mu_);
  released_ = true;
  cv_.notify_all();
}

}  // namespace ferry::migration::testing
