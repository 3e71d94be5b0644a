#pragma once
// Test doubles for the migration sessions' unit tests
// (migration_session_test.cc): a fake source VM and a fake receiving host
// behind the engine's VM interface (userspace/migration/vm.hh), and a
// frame-aware relay that injects one fault into the in-process transport.
// The fakes stand in for kvm::Machine only; memory is a real memfd region
// and the connections are real sockets.
#include <atomic>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "userspace/migration/protocol.hh"
#include "userspace/migration/vm.hh"
#include "userspace/transport/connection.hh"

namespace ferry::migration::testing {

// A running VM: 4 MiB of RAM (two 2 MiB stream chunks), kDataPages of a
// pattern, kZeroPages written with zeros (allocated: sent as markers), the
// rest never touched (holes: not sent). Its "guest" is a thread that, while
// the VM runs, keeps rewriting words in the first 64 pages, and marks them
// dirty when tracking is on: at least once per harvest, so every pre-copy
// round has pages dirtied under it.
class FakeSourceVm final : public SourceVm {
 public:
  static constexpr std::uint64_t kPages = 1024;
  static constexpr std::uint64_t kDataPages = 200;
  static constexpr std::uint64_t kZeroPages = 40;
  static constexpr std::uint64_t kAllocatedPages = kDataPages + kZeroPages;
  static constexpr std::uint64_t kHotPages = 64;

  FakeSourceVm();
  ~FakeSourceVm() override;

  Precheck describe() const override;
  const kvm::GuestRegion& ram() const override { return ram_; }
  std::uint64_t memory_bytes() const override { return ram_.size(); }
  std::uint32_t vcpu_count() const override { return 1; }
  kvm::DirtyBackend dirty_backend() const override { return kvm::DirtyBackend::kBitmap; }
  Status start_dirty_tracking() override;
  Status stop_dirty_tracking() override;
  Status harvest_dirty(kvm::DirtyLog& out) override;
  std::vector<std::uint64_t> dirtied_per_vcpu() const override { return {}; }
  void set_throttle(const std::vector<double>&) override {}
  std::vector<std::chrono::nanoseconds> throttled_time() const override { return {std::chrono::nanoseconds(0)}; }
  Status pause() override;
  Status resume() override;
  Status stop(std::string reason) override;
  Result<std::vector<std::byte>> state_image() override;
  std::uint64_t last_heartbeat_wall_ns() const override { return 0; }
  std::optional<std::chrono::nanoseconds> take_guest_stall() override { return std::nullopt; }

  bool running() const;
  bool stopped() const;
  bool tracking() const;
  std::vector<std::byte> last_state() const;
  std::uint64_t writes_during_migration() const;

 private:
  void guest_write_locked();
  void guest();
  mutable std::mutex mu_;
  kvm::GuestRegion ram_;
  kvm::DirtyLog log_;
  bool paused_ = false, stopped_ = false, tracking_ = false, quit_ = false;
  std::uint64_t writes_ = 0, tracked_writes_ = 0, tracked_at_last_harvest_ = 0;
  std::uint64_t rng_ = 0x9e3779b97f4a7c15ull;
  std::vector<std::byte> last_state_;
  std::thread thread_;
};

// What happened to a VM the fake host built; outlives the VM, so a test can
// look after the session dropped it.
struct IncomingRecord {
  std::unique_ptr<kvm::GuestRegion> ram;
  std::atomic<bool> loaded{false}, resumed{false}, stopped{false};
  std::vector<std::byte> state;  // written before `loaded`
};

class FakeHost final : public IncomingHost {
 public:
  Result<HostResources> resources() override;
  Result<std::unique_ptr<IncomingVm>> build(const kvm::MachineShape& shape) override;
  bool built() const;
  std::size_t builds() const;
  IncomingRecord& last();

 private:
  mutable std::mutex mu_;
  std::vector<std::shared_ptr<IncomingRecord>> records_;
};

// One fault on the frames crossing the link, at the nth frame of `type`
// (counted over every connection): kCut shuts that connection down in both
// directions instead of forwarding it; kCorrupt flips a bit of its first
// payload byte (its payload CRC then fails); kDrop does not forward it (and
// forwards everything else); kHold forwards it only after release().
struct Fault {
  enum Kind { kNone, kCut, kCorrupt, kDrop, kHold };
  Kind kind = kNone;
  FrameType type = FrameType::kInvalid;
  int nth = 1;
};

class Relay {
 public:
  explicit Relay(Fault f) : fault_(f) {}
  ~Relay();
  // Puts the relay between the two ends of a new connection.
  void interpose(transport::Connection& dialer_end, transport::Connection& listener_end);
  bool fired() const;
  bool wait_fired(std::chrono::milliseconds timeout);
  void release();

 private:
  struct Pipe;
  void pump(int from, int to, bool to_destination);
  // Whether this frame is the faulty one (counts it).
  bool matches(FrameType t);
  Fault fault_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  int seen_ = 0;
  bool fired_ = false, released_ = false;
  std::vector<UniqueFd> fds_;
  std::vector<std::thread> threads_;
};

}  // namespace ferry::migration::testing
