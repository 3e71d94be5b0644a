#include "kvm/test_guest.hh"

#include <linux/kvm.h>
#include <sys/ioctl.h>

#include <cerrno>
#include <cstring>

#include "kvm/dirty_tracker.hh"
#include "kvm/long_mode.hh"

extern "C" const unsigned char ferry_guest_image[];
extern "C" const unsigned char ferry_guest_image_end[];

namespace ferry::kvm {
namespace {

static_assert(sizeof(fg_params) == 88, "guest ABI drifted");
static_assert(sizeof(fg_status) == 64, "guest ABI drifted");
static_assert(sizeof(fg_page_header) == 32, "guest ABI drifted");

constexpr std::uint64_t kTwoMiB = 2ull << 20;
// Code at selector 0x08, data at 0x10, identity map of 0..4 GiB.
constexpr LongModeLayout kLayout{FG_GDT_GPA, 0x08, 0x10, FG_PML4_GPA, FG_PDPT_GPA, FG_PD_GPA};
constexpr std::uint64_t align_up(std::uint64_t v, std::uint64_t a) { return (v + a - 1) / a * a; }

std::uint64_t ws_pages(const TestGuestOptions& o) { return o.working_set_mib * 256; }
std::uint64_t ws_gpa(const TestGuestOptions& o) { return align_up(FG_DATA_GPA + ws_pages(o) * 4, kTwoMiB); }

template <class T>
void put(GuestRegion& ram, std::uint64_t gpa, const T& v, DirtyTracker* tracker) {
  std::memcpy(ram.host_at(gpa), &v, sizeof v);
  if (tracker) tracker->mark_vmm_write(gpa, sizeof v);
}

}  // namespace

std::span<const std::byte> test_guest_image() {
  return {reinterpret_cast<const std::byte*>(ferry_guest_image),
          static_cast<std::size_t>(ferry_guest_image_end - ferry_guest_image)};
}

std::uint64_t test_guest_min_memory(const TestGuestOptions& o) { return ws_gpa(o) + ws_pages(o) * kPageSize; }

Result<std::uint32_t> vcpu_tsc_khz(const Vcpu& vcpu) {
  const int khz = ::ioctl(vcpu.fd(), KVM_GET_TSC_KHZ, 0);
  if (khz <= 0) return fail_sys("KVM_GET_TSC_KHZ");
  return static_cast<std::uint32_t>(khz);
}

Status load_test_guest(GuestRegion& ram, const TestGuestOptions& o, std::uint32_t tsc_khz, DirtyTracker* tracker) {
  if (ram.gpa() != 0) return fail("test guest: RAM must start at gpa 0 (got {:#x})", ram.gpa());
  if (o.vcpus == 0 || o.vcpus > FG_MAX_VCPUS) return fail("test guest: 1..{} vCPUs, not {}", FG_MAX_VCPUS, o.vcpus);
  if (ram.size() < test_guest_min_memory(o))
    return fail("test guest: {} MiB working set needs {} MiB of RAM, VM has {} MiB", o.working_set_mib,
                test_guest_min_memory(o) >> 20, ram.size() >> 20);
  if (ram.size() > (4ull << 30)) return fail("test guest: at most 4 GiB of RAM (identity map), got {} MiB", ram.size() >> 20);
  if (tsc_khz == 0) return fail("test guest: TSC frequency unknown");
  const auto image = test_guest_image();
  if (image.size() > FG_CODE_MAX) return fail("test guest: image of {} bytes exceeds {}", image.size(), FG_CODE_MAX);

  write_long_mode_tables(ram, kLayout, tracker);

  fg_params p{};
  p.magic = FG_MAGIC;
  p.vcpus = o.vcpus;
  p.workload = o.workload;
  p.pattern = o.pattern;
  p.hot_percent = o.hot_percent;
  p.gen_table_gpa = FG_DATA_GPA;
  p.ws_gpa = ws_gpa(o);
  p.ws_pages = ws_pages(o);
  const double tsc_hz = tsc_khz * 1000.0;
  const double pages_per_s_per_vcpu = o.rate_mib_s * 256.0 / o.vcpus;
  p.ticks_per_page = o.rate_mib_s > 0 ? static_cast<std::uint64_t>(tsc_hz / pages_per_s_per_vcpu) : 0;
  p.heartbeat_ticks = tsc_khz;  // 1 ms
  p.max_rewrites = o.max_rewrites;
  p.seed = o.seed;
  p.poweroff_when_done = o.poweroff_when_done ? 1 : 0;
  put(ram, FG_PARAMS_GPA, p, tracker);
  const fg_status zero[FG_MAX_VCPUS] = {};
  put(ram, FG_STATUS_GPA, zero, tracker);
  std::memcpy(ram.host_at(FG_CODE_GPA), image.data(), image.size());
  if (tracker) tracker->mark_vmm_write(FG_CODE_GPA, image.size());
  return {};
}

Status enter_test_guest(Vcpu& vcpu, std::uint32_t cpu) {
  kvm_regs regs{};
  regs.rip = FG_CODE_GPA;
  regs.rsp = FG_STACKS_GPA + (cpu + 1) * FG_STACK_BYTES - 8;  // 16-byte aligned after the entry's call
  regs.rdi = cpu;
  regs.rflags = 0x2;
  return enter_long_mode(vcpu, kLayout, regs);
}

fg_status read_test_guest_status(const GuestRegion& ram, std::uint32_t cpu) {
  fg_status s{};
  std::memcpy(&s, ram.host_at(FG_STATUS_GPA + cpu * sizeof(fg_status)), sizeof s);
  return s;
}

Result<ExitAction> TestGuestMonitor::on_exit(Vcpu& vcpu) {
  const kvm_run& run = vcpu.run();
  if (run.exit_reason == KVM_EXIT_SHUTDOWN) return fail("test guest on vCPU {} crashed (triple fault)", vcpu.id());
  if (run.exit_reason == KVM_EXIT_HLT) return ExitAction::kStop;  // the guest's terminal halt
  if (run.exit_reason == KVM_EXIT_IO && run.io.port >= kCom1Base && run.io.port < kCom1Base + 8 && run.io.size == 1) {
    auto* data = reinterpret_cast<std::uint8_t*>(const_cast<kvm_run*>(&run)) + run.io.data_offset;
    const auto offset = static_cast<std::uint16_t>(run.io.port - kCom1Base);
    for (std::uint32_t i = 0; i < run.io.count; ++i) {
      // No UART attached: like an empty ISA slot, reads float to 0xff
      // (which also reads as "transmitter ready") and writes vanish.
      if (run.io.direction == KVM_EXIT_IO_OUT) {
        if (serial_) serial_->write(offset, data[i]);
      } else {
        data[i] = serial_ ? serial_->read(offset) : 0xff;
      }
    }
    return ExitAction::kContinue;
  }
  if (run.exit_reason != KVM_EXIT_IO || run.io.direction != KVM_EXIT_IO_OUT || run.io.size != 4)
    return fail("test guest: unexpected exit {} on vCPU {}", run.exit_reason, vcpu.id());
  std::uint32_t value = 0;
  std::memcpy(&value, reinterpret_cast<const std::byte*>(&run) + run.io.data_offset, sizeof value);
  std::lock_guard lock(mu_);
  switch (run.io.port) {
    case FG_PORT_HEARTBEAT: {
      const auto now = std::chrono::steady_clock::now();
      if (f_.heartbeats > 0) {
        f_.max_gap = std::max<std::chrono::nanoseconds>(f_.max_gap, now - last_beat_);
        window_gap_ = std::max<std::chrono::nanoseconds>(window_gap_, now - last_beat_);
      }
      last_beat_ = now;
      f_.last_beat_wall = std::chrono::system_clock::now();
      if (f_.heartbeats == 0) f_.first_beat_wall = f_.last_beat_wall;
      ++f_.heartbeats;
      f_.last_sequence = value;
      return ExitAction::kContinue;
    }
    case FG_PORT_READY:
      ++f_.ready;
      return ExitAction::kContinue;
    case FG_PORT_DONE:
      // Keep running: the guest may still power off, then halts for good
      // (the HLT exit stops this vCPU).
      ++f_.done;
      return ExitAction::kContinue;
    case FG_PORT_POWEROFF:
      f_.powered_off = true;
      if (on_poweroff_) on_poweroff_();
      return ExitAction::kStop;
    case FG_PORT_FAIL: {
      if (value >= FG_MAX_VCPUS) return fail("test guest reported a failure for vCPU {}, which does not exist", value);
      const auto s = read_test_guest_status(ram_, value);
      static constexpr const char* kKinds[] = {"?", "wrong page index", "wrong generation", "bad checksum", "wrong content"};
      return fail("test guest vCPU {} found working-set page {} corrupt: {} (expected generation {}, header says {})",
                  value, s.fail_page, kKinds[s.fail_kind < 5 ? s.fail_kind : 0], s.fail_expected_gen, s.fail_found_gen);
    }
    default:
      return fail("test guest wrote {:#x} to unknown port {:#x}", value, run.io.port);
  }
}

std::chrono::nanoseconds TestGuestMonitor::take_window_gap() {
  std::lock_guard lock(mu_);
  auto gap = window_gap_;
  if (f_.heartbeats > 0) gap = std::max<std::chrono::nanoseconds>(gap, std::chrono::steady_clock::now() - last_beat_);
  window_gap_ = {};
  return gap;
}

TestGuestMonitor::Figures TestGuestMonitor::figures() const {
  std::lock_guard lock(mu_);
  return f_;
}

void TestGuestMonitor::reset_gap() {
  std::lock_guard lock(mu_);
  f_.max_gap = {};
  f_.heartbeats = f_.heartbeats ? 1 : 0;
  last_beat_ = f_.heartbeats ? last_beat_ : std::chrono::steady_clock::time_point{};
}

}  // namespace ferry::kvm
