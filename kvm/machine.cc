#include "kvm/machine.hh"

#include <linux/kvm.h>
#include <sys/ioctl.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "userspace/base/bytes.hh"
#include "kvm/state/format.hh"
#include "kvm/devices/acpi_pm/acpi_pm.hh"
#include "kvm/devices/reset/reset.hh"
#include "kvm/devices/net/virtio_net.hh"
#include "kvm/devices/virtio/mmio.hh"

namespace ferry::kvm {
namespace {

using state::SectionType;

// The test guest's RAM is one slot at gpa 0 and must stay below the 32-bit
// MMIO hole, where the in-kernel IOAPIC (0xfec00000) and LAPICs
// (0xfee00000) live: RAM mapped over them would shadow the devices.
constexpr std::uint64_t kMaxLowRam = 3ull << 30;
constexpr std::uint64_t kTwoMiB = 2ull << 20;
// Per vCPU: 4096 entries. A full ring stops its vCPU until harvested, so
// bigger is smoother; every x86 host accepts this size (see Vm).
constexpr std::uint32_t kDirtyRingBytes = 64u << 10;

Status set_mp_state(Vcpu& v, std::uint32_t state) {
  kvm_mp_state mp{state};
  if (::ioctl(v.fd(), KVM_SET_MP_STATE, &mp) < 0) {
    const int e = errno;
    return std::unexpected(sys_error(fmt::format("KVM_SET_MP_STATE vCPU {}", v.id()), e));
  }
  return {};
}

// The TSCs a snapshot holds were read one vCPU after another, so even a
// guest whose TSCs run in lockstep shows small differences. Restoring each
// exactly would give every vCPU a different offset, and KVM keeps its
// stable masterclock (KVM_CLOCK_TSC_STABLE, which kvmclock guests rely on)
// only when all offsets are equal. So when the captured values are within
// a second of each other (the window KVM itself treats as "meant to be
// synchronised"), all vCPUs get vCPU 0's offset.
Status resync_tsc_offsets(std::vector<Vcpu>& vcpus, const std::vector<std::uint64_t>& tscs) {
  if (tscs.size() != vcpus.size() || vcpus.size() < 2) return {};
  if (!vcpus[0].has_tsc_offset()) return {};  // IA32_TSC writes: KVM syncs its own way
  auto khz = vcpu_tsc_khz(vcpus[0]);
  if (!khz) return std::unexpected(khz.error());
  const std::uint64_t window = std::uint64_t{*khz} * 1000;
  for (auto t : tscs)
    if ((t > tscs[0] ? t - tscs[0] : tscs[0] - t) >= window) {
      spdlog::warn("vCPU TSCs differ by more than a second in the snapshot; restored as they were");
      return {};
    }
  auto offset = vcpus[0].tsc_offset();
  if (!offset) return std::unexpected(offset.error());
  for (std::size_t i = 1; i < vcpus.size(); ++i)
    if (auto ok = vcpus[i].set_tsc_offset(*offset); !ok) return ok;
  return {};
}

// The bounds boot enforces, for restores and migrations: RAM is one region
// from gpa 0 up to the MMIO hole, large enough for what this VMM reads of
// the guest (a crafted snapshot or stream must not make status() read past
// the mapping).
Status check_memory_layout(GuestKind kind, const std::vector<std::unique_ptr<GuestRegion>>& regions) {
  const std::uint64_t min_ram = kind == GuestKind::kLinux ? kLinuxMinMemory : FG_DATA_GPA;
  if (regions.size() != 1 || regions.front()->gpa() != 0 || regions.front()->size() < min_ram ||
      regions.front()->size() > kMaxLowRam)
    return fail("unsupported memory layout: expected one region at gpa 0 of {} KiB..{} MiB", min_ram >> 10,
                kMaxLowRam >> 20);
  return {};
}

}  // namespace

std::string_view guest_kind_name(GuestKind k) {
  switch (k) {
    case GuestKind::kTestGuest: return "test-guest";
    case GuestKind::kLinux: return "linux";
  }
  return "?";
}

std::string_view run_state_name(RunState s) {
  switch (s) {
    case RunState::kRunning: return "running";
    case RunState::kPaused: return "paused";
    case RunState::kStopped: return "stopped";
  }
  return "?";
}

// kVmConfig v1: u32 version, u32 kind, u32 vcpus, u8 irqchip, u8 pit, u32 tsc_khz
std::vector<std::byte> encode_vm_config(const VmConfigState& c) {
  ByteWriter w;
  w.put_u32(kVmConfigVersion);
  w.put_u32(static_cast<std::uint32_t>(c.kind));
  w.put_u32(c.vcpus);
  w.put_u8(c.irqchip ? 1 : 0);
  w.put_u8(c.pit ? 1 : 0);
  w.put_u32(c.tsc_khz);
  return std::move(w).take();
}

Result<VmConfigState> decode_vm_config(std::span<const std::byte> bytes) {
  ByteReader r(bytes);
  std::uint32_t version = 0, kind = 0, vcpus = 0, khz = 0;
  std::uint8_t irqchip = 0, pit = 0;
  if (auto ok = r.get(version); !ok) return std::unexpected(ok.error().context("VM config"));
  if (version != kVmConfigVersion)
    return fail("VM config: version {} is not supported (this build reads {})", version, kVmConfigVersion);
  if (auto ok = r.get(kind, vcpus, irqchip, pit, khz); !ok) return std::unexpected(ok.error().context("VM config"));
  if (auto ok = r.expect_end(); !ok) return std::unexpected(ok.error().context("VM config"));
  if (kind != static_cast<std::uint32_t>(GuestKind::kTestGuest) && kind != static_cast<std::uint32_t>(GuestKind::kLinux))
    return fail("VM config: unknown guest kind {}", kind);
  if (vcpus == 0 || vcpus > FG_MAX_VCPUS) return fail("VM config: {} vCPUs (1..{})", vcpus, FG_MAX_VCPUS);
  if (irqchip > 1 || pit > 1) return fail("VM config: irqchip/pit flags must be 0 or 1");
  if (pit && !irqchip) return fail("VM config: a PIT without an irqchip");
  if (kind == static_cast<std::uint32_t>(GuestKind::kLinux) && !irqchip)
    return fail("VM config: a Linux guest without an irqchip");
  return VmConfigState{static_cast<GuestKind>(kind), vcpus, irqchip == 1, pit == 1, khz};
}

Machine::~Machine() {
  if (runner_) (void)stop("VM destroyed");
  // Devices first: their threads use guest memory and the access to it,
  // which members declared after devices_ would take away before them.
  devices_.reset();
}

Status Machine::create_vm(std::uint64_t memory_bytes, HugePages huge, bool irqchip, std::uint32_t vcpus) {
  auto kvm = Kvm::open();
  if (!kvm) return std::unexpected(kvm.error());
  kvm_.emplace(std::move(*kvm));
  auto msrs = kvm_->msr_index_list();
  if (!msrs) return std::unexpected(msrs.error());
  msr_indices_ = std::move(*msrs);
  auto vm = kvm_->create_vm();
  if (!vm) return std::unexpected(vm.error());
  vm_.emplace(std::move(*vm));
  // The dirty ring can only be enabled before the first vCPU exists, so the
  // choice is made now for a migration that may come later. Nothing is
  // logged until start_dirty_tracking() sets KVM_MEM_LOG_DIRTY_PAGES.
  dirty_backend_ = resolve_dirty_backend(*vm_, DirtyBackend::kAuto);
  if (dirty_backend_ == DirtyBackend::kRing) {
    if (auto ok = vm_->enable_dirty_ring(kDirtyRingBytes); !ok) {
      spdlog::warn("dirty ring unavailable ({}); using the dirty bitmap", ok.error());
      dirty_backend_ = DirtyBackend::kBitmap;
    }
  }
  if (regions_.empty()) {
    auto ram = GuestRegion::create(0, 0, memory_bytes, "ferry-ram", huge);
    if (!ram) return std::unexpected(ram.error());
    regions_.push_back(std::make_unique<GuestRegion>(std::move(*ram)));
  }
  for (const auto& r : regions_)
    if (auto ok = vm_->set_memory_region(*r, false); !ok) return ok;
  // Both must exist before the first vCPU (KVM creates each vCPU's LAPIC
  // with it, and refuses KVM_CREATE_IRQCHIP afterwards).
  if (irqchip) {
    if (auto ok = vm_->create_irqchip(); !ok) return ok;
    if (auto ok = vm_->create_pit(); !ok) return ok;
  }
  vcpus_.reserve(vcpus);  // the runner keeps pointers: no reallocation later
  for (std::uint32_t i = 0; i < vcpus; ++i) {
    auto v = vm_->create_vcpu(i);
    if (!v) return std::unexpected(v.error());
    vcpus_.push_back(std::move(*v));
  }
  return create_dirty_tracker();
}

Status Machine::create_dirty_tracker() {
  std::vector<TrackedSlot> slots;
  for (const auto& r : regions_) slots.push_back({r->slot(), r->gpa(), r->pages()});
  ring_full_log_ = std::make_unique<DirtyLog>(slots);
  Result<std::unique_ptr<DirtyTracker>> t;
  if (dirty_backend_ == DirtyBackend::kRing) {
    std::vector<DirtyRing> rings;
    for (auto& v : vcpus_)
      if (auto ring = v.take_dirty_ring()) rings.push_back(std::move(*ring));
    t = make_ring_tracker(*vm_, std::move(rings), std::move(slots));
  } else {
    t = make_bitmap_tracker(*vm_, std::move(slots));
  }
  if (!t) return std::unexpected(std::move(t.error()).context("dirty tracking"));
  tracker_ = std::move(*t);
  std::vector<GuestRegion*> regions;
  for (const auto& r : regions_) regions.push_back(r.get());
  guest_access_ = std::make_unique<GuestAccess>(std::move(regions), tracker_.get());
  return {};
}

Status Machine::start_dirty_tracking() {
  if (tracking_) return {};
  // All or nothing: a failure part way leaves logging off on every region,
  // so no caller has to clean up after a start that did not happen.
  auto undo = [&](Error e) -> Status {
    tracking_ = true;
    (void)stop_dirty_tracking();
    return std::unexpected(std::move(e).context("start dirty logging"));
  };
  for (const auto& r : regions_)
    if (auto ok = vm_->set_memory_region(*r, true); !ok) return undo(std::move(ok.error()));
  tracking_ = true;
  // Forget anything from an earlier tracking period: round 0 sends all.
  DirtyLog discard(tracker_->slots());
  if (auto ok = harvest_dirty(discard); !ok) return undo(std::move(ok.error()));
  return {};
}

Status Machine::stop_dirty_tracking() {
  if (!tracking_) return {};
  for (const auto& r : regions_)
    if (auto ok = vm_->set_memory_region(*r, false); !ok) return std::unexpected(std::move(ok.error()).context("stop dirty logging"));
  tracking_ = false;
  return {};
}

Status Machine::harvest_dirty(DirtyLog& out) {
  if (auto ok = tracker_->harvest(out); !ok) return ok;
  std::lock_guard lock(ring_full_mu_);
  out.merge(*ring_full_log_);
  ring_full_log_->clear();
  return {};
}

std::vector<std::uint64_t> Machine::dirtied_per_vcpu() const { return tracker_->dirtied_per_vcpu(); }

void Machine::set_throttle(const std::vector<double>& shares) {
  if (!runner_) return;
  for (std::size_t i = 0; i < shares.size() && i < runner_->size(); ++i) runner_->set_throttle(i, shares[i]);
}

std::vector<std::chrono::nanoseconds> Machine::throttled_time() const {
  std::vector<std::chrono::nanoseconds> out;
  for (std::size_t i = 0; runner_ && i < runner_->size(); ++i) out.push_back(runner_->throttled(i));
  return out;
}

std::vector<const GuestRegion*> Machine::regions() const {
  std::vector<const GuestRegion*> out;
  for (const auto& r : regions_) out.push_back(r.get());
  return out;
}

std::optional<std::chrono::nanoseconds> Machine::take_guest_stall() {
  if (!monitor_) return std::nullopt;
  return monitor_->take_window_gap();
}

TestGuestMonitor::Figures Machine::monitor_figures() const { return monitor_ ? monitor_->figures() : TestGuestMonitor::Figures{}; }

Status Machine::create_devices(Serial::Sink console) {
  devices_ = std::make_unique<DeviceManager>([this](std::string why) { on_vcpu_ended(why); });
  Uart::IrqLine line;
  if (kind_ == GuestKind::kLinux)
    line = [vm = &*vm_](bool level) {
      if (auto ok = vm->set_irq_line(kCom1Irq, level); !ok) spdlog::warn("{}", ok.error());
    };
  auto uart = devices_->add(std::make_unique<Uart>(console ? std::move(console) : [](std::string_view) {}, line));
  if (!uart) return std::unexpected(uart.error());
  uart_ = *uart;
  if (kind_ != GuestKind::kLinux) return {};
  if (auto pm = devices_->add(std::make_unique<AcpiPm>()); !pm) return std::unexpected(pm.error());
  if (auto reset = devices_->add(std::make_unique<ResetPorts>()); !reset) return std::unexpected(reset.error());
  return {};
}

Status Machine::create_nets(const std::vector<net::NetConfig>& nets, bool incoming) {
  if (nets.empty()) return {};
  if (kind_ != GuestKind::kLinux) return fail("--net: network devices are for Linux guests");
  if (nets.size() > net::kMaxNets) return fail("--net: at most {} network devices, not {}", net::kMaxNets, nets.size());
  for (std::size_t i = 0; i < nets.size(); ++i) {
    const auto& n = nets[i];
    const std::uint32_t gsi = net::kVirtioFirstGsi + static_cast<std::uint32_t>(i);
    const std::string id = fmt::format("net{}", i);
    auto tap = net::Tap::open(n.tap);
    if (!tap) return std::unexpected(std::move(tap.error()).context(id));
    // A destination's TAP carries nothing until the VM runs here (the
    // device's resume turns the carrier on).
    if (incoming)
      if (auto ok = tap->set_carrier(false); !ok) return std::unexpected(std::move(ok.error()).context(id));
    const net::Mac mac = n.mac ? *n.mac : net::random_mac();
    auto dev = net::VirtioNet::create(std::move(*tap), mac, *guest_access_);
    if (!dev) return std::unexpected(std::move(dev.error()).context(id));
    net::VirtioNet* device = dev->get();  // owned by its transport, then by devices_
    auto irq = IrqFd::assign(*vm_, gsi);
    if (!irq) return std::unexpected(std::move(irq.error()).context(id));
    irqfds_.push_back(std::make_unique<IrqFd>(std::move(*irq)));
    const IrqFd* line = irqfds_.back().get();
    auto t = std::make_unique<virtio::MmioTransport>(
        virtio::MmioTransport::Config{.id = id,
                                      .base = net::kVirtioMmioBase + i * net::kVirtioMmioStride,
                                      .gsi = gsi,
                                      .key = {SectionType::kVirtio, static_cast<std::uint32_t>(i)}},
        *guest_access_, std::move(*dev), [line] {
          if (auto ok = line->trigger(); !ok) spdlog::warn("virtio interrupt: {}", ok.error());
        });
    // A guest's write of queue q to QueueNotify signals that queue's kick
    // eventfd inside KVM: no exit, no VMM thread in between.
    for (std::uint16_t q = 0; q < net::VirtioNet::kQueues; ++q) {
      auto ev = device->kick_event(q).duplicate();
      if (!ev) return std::unexpected(std::move(ev.error()).context(id));
      auto kick = IoEventFd::assign(*vm_, {.space = Space::kMmio, .addr = t->notify_address(), .len = 4, .datamatch = q},
                                    std::move(*ev));
      if (!kick) return std::unexpected(std::move(kick.error()).context(id));
      kicks_.push_back(std::move(*kick));
    }
    if (auto added = devices_->add(std::move(t)); !added) return std::unexpected(added.error());
    nets_.push_back(device);
    spdlog::info("{}: virtio-net on TAP {}{}", id, n.tap,
                 incoming ? " (carrier off until the VM runs here)" : ", MAC " + net::format_mac(mac));
  }
  return {};
}

Result<ExitAction> Machine::on_linux_exit(Vcpu& vcpu) {
  kvm_run& run = vcpu.run();
  switch (run.exit_reason) {
    case KVM_EXIT_IO:
      return devices_->on_io(vcpu);
    case KVM_EXIT_MMIO:
      return devices_->on_mmio(vcpu);
    case KVM_EXIT_SHUTDOWN:
      // A triple fault: how x86 resets when every other way failed.
      on_vcpu_ended("the guest rebooted (triple fault)");
      return ExitAction::kStop;
    case KVM_EXIT_HLT:
      return ExitAction::kContinue;  // only without an in-kernel LAPIC
    default:
      return fail("Linux guest: unexpected exit {} on vCPU {}", run.exit_reason, vcpu.id());
  }
}

void Machine::announce_network() {
  for (auto* n : nets_) n->announce_after_migration();
}

Status Machine::start_vcpus(bool paused) {
  // Devices restored from a state image start paused; a VM that starts
  // running starts them too (a paused one, at resume()).
  if (!paused) devices_->resume();
  ExitHandler guest_handler;
  if (kind_ == GuestKind::kLinux) {
    // No vCPU runs yet: the UART's level is the one the (restored or fresh)
    // interrupt controllers hold.
    guest_handler = [this](Vcpu& v) { return on_linux_exit(v); };
  } else {
    monitor_ = std::make_unique<TestGuestMonitor>(*regions_.front(), &uart_->serial(),
                                                  [this] { on_vcpu_ended("the guest powered off"); });
    guest_handler = [m = monitor_.get()](Vcpu& v) { return m->on_exit(v); };
  }
  // A vCPU whose dirty ring filled up stops with DIRTY_RING_FULL and must
  // not re-enter the guest before its ring is harvested and reset.
  ExitHandler handler = [this, guest_handler](Vcpu& v) -> Result<ExitAction> {
    if (v.run().exit_reason == KVM_EXIT_DIRTY_RING_FULL) {
      std::lock_guard lock(ring_full_mu_);
      if (auto ok = tracker_->harvest(*ring_full_log_); !ok) return std::unexpected(ok.error());
      return ExitAction::kContinue;
    }
    return guest_handler(v);
  };
  // What a migration destination must support: read before any vCPU runs.
  auto cpuid = vcpu_cpuid(vcpus_.front());
  if (!cpuid) return std::unexpected(cpuid.error());
  guest_cpuid_ = std::move(*cpuid);
  std::vector<Vcpu*> ptrs;
  for (auto& v : vcpus_) ptrs.push_back(&v);
  // Every thread that ends by itself reports here: an error stops the whole
  // VM; the last vCPU to halt does too.
  auto on_end = [this](Vcpu& v, const Status& st) {
    if (!st) {
      on_vcpu_ended(fmt::format("vCPU {}: {}", v.id(), st.error().what()));
      return;
    }
    bool all = false;
    {
      std::lock_guard lock(mu_);
      all = ++halted_ == vcpus_.size();
    }
    if (all) on_vcpu_ended("every vCPU halted");
  };
  // Started parked and released only once runner_ is set: a vCPU that stops
  // on its very first exit calls on_vcpu_ended, which uses runner_.
  auto runner = VcpuRunner::start(ptrs, handler, /*start_paused=*/true, on_end);
  if (!runner) return std::unexpected(runner.error());
  runner_ = std::move(*runner);
  paused_ = paused;
  if (!paused) runner_->resume();
  started_ = std::chrono::steady_clock::now();
  return {};
}

void Machine::on_vcpu_ended(const std::string& why) {
  {
    std::lock_guard lock(mu_);
    if (stopped_) return;
    stopped_ = true;
    stop_reason_ = why;
  }
  // Safe from a vCPU thread: request_stop only flags and kicks.
  if (runner_) runner_->request_stop();
  if (notify_) notify_();
}

Result<std::unique_ptr<Machine>> Machine::boot(const MachineConfig& config, Serial::Sink console, Notify stopped) {
  if (config.kind == GuestKind::kLinux) return boot_linux(config, std::move(console), std::move(stopped));
  const auto& g = config.guest;
  std::uint64_t mem = config.memory_bytes ? config.memory_bytes : (test_guest_min_memory(g) + kTwoMiB - 1) / kTwoMiB * kTwoMiB;
  if (mem % kPageSize) return fail("memory size {} is not a multiple of {} bytes", mem, kPageSize);
  if (mem > kMaxLowRam)
    return fail("the built-in test guest supports at most {} MiB of RAM (below the 32-bit MMIO hole), not {} MiB",
                kMaxLowRam >> 20, mem >> 20);
  std::unique_ptr<Machine> m(new Machine());
  m->notify_ = std::move(stopped);
  if (auto ok = m->create_vm(mem, config.huge_pages, config.irqchip, g.vcpus); !ok) return std::unexpected(ok.error());
  if (auto ok = m->create_devices(std::move(console)); !ok) return std::unexpected(ok.error());
  auto khz = vcpu_tsc_khz(m->vcpus_[0]);
  if (!khz) return std::unexpected(khz.error());
  m->tsc_khz_ = *khz;
  if (auto ok = load_test_guest(*m->regions_.front(), g, *khz); !ok) return std::unexpected(ok.error());
  for (auto& v : m->vcpus_) {
    if (auto ok = enter_test_guest(v, v.id()); !ok) return std::unexpected(ok.error());
    // With an in-kernel LAPIC only vCPU 0 (the BSP) starts runnable; the
    // others wait for INIT/SIPI, which this guest has no code to send. The
    // VMM starts them directly, as it does the BSP.
    if (config.irqchip && v.id() != 0)
      if (auto ok = set_mp_state(v, KVM_MP_STATE_RUNNABLE); !ok) return std::unexpected(ok.error());
  }
  if (auto ok = m->start_vcpus(false); !ok) return std::unexpected(ok.error());
  spdlog::info("VM started: {} vCPUs, {} MiB ({} huge pages), {}", g.vcpus, mem >> 20,
               huge_pages_name(config.huge_pages), config.irqchip ? "in-kernel irqchip and PIT" : "no irqchip");
  return m;
}

Result<std::unique_ptr<Machine>> Machine::boot_linux(const MachineConfig& config, Serial::Sink console,
                                                     Notify stopped) {
  const auto& lb = config.linux_boot;
  const std::uint64_t mem = config.memory_bytes ? config.memory_bytes : 512ull << 20;
  if (mem > kMaxLowRam)
    return fail("Linux guests support at most {} MiB of RAM for now (one slot below the 32-bit MMIO hole), not {} MiB",
                kMaxLowRam >> 20, mem >> 20);
  if (!config.irqchip) return fail("a Linux guest needs the in-kernel irqchip");
  // The snapshot format's limit (decode_vm_config) applies to every guest.
  if (lb.vcpus == 0 || lb.vcpus > FG_MAX_VCPUS) return fail("Linux guest: 1..{} vCPUs, not {}", FG_MAX_VCPUS, lb.vcpus);
  std::unique_ptr<Machine> m(new Machine());
  m->kind_ = GuestKind::kLinux;
  m->notify_ = std::move(stopped);
  if (auto ok = m->create_vm(mem, config.huge_pages, true, lb.vcpus); !ok) return std::unexpected(ok.error());
  if (auto ok = m->create_devices(std::move(console)); !ok) return std::unexpected(ok.error());
  if (auto ok = m->create_nets(config.nets, false); !ok) return std::unexpected(ok.error());
  LinuxBootConfig boot = lb;
  for (std::size_t i = 0; i < config.nets.size(); ++i)
    boot.mmio.push_back({net::kVirtioMmioBase + i * net::kVirtioMmioStride, static_cast<std::uint32_t>(virtio::kMmioWindow),
                         static_cast<std::uint32_t>(net::kVirtioFirstGsi + i)});
  auto info = load_linux(*m->regions_.front(), boot);
  if (!info) return std::unexpected(info.error());
  for (auto& v : m->vcpus_)
    if (auto ok = setup_linux_vcpu(*m->kvm_, v, *info, lb.vcpus); !ok) return std::unexpected(ok.error());
  auto khz = vcpu_tsc_khz(m->vcpus_[0]);
  if (!khz) return std::unexpected(khz.error());
  m->tsc_khz_ = *khz;
  if (auto ok = m->start_vcpus(false); !ok) return std::unexpected(ok.error());
  spdlog::info("Linux VM started: {} vCPUs, {} MiB ({} huge pages), kernel {}{}", lb.vcpus, mem >> 20,
               huge_pages_name(config.huge_pages), lb.kernel, lb.initrd.empty() ? "" : ", initrd " + lb.initrd);
  return m;
}

Result<std::unique_ptr<Machine>> Machine::restore(const Snapshot& snap, Serial::Sink console, Notify stopped,
                                                  bool start_paused, HugePages huge_pages,
                                                  const std::vector<net::NetConfig>& nets) {
  const auto& img = snap.image();
  auto ctx = [&](Error e) { return std::unexpected(std::move(e).context(fmt::format("restore {}", snap.path()))); };
  const auto* cfg_sec = img.find(SectionType::kVmConfig, 0);
  if (!cfg_sec) return ctx(Error("no VM config section"));
  auto cfg = decode_vm_config(cfg_sec->payload);
  if (!cfg) return ctx(cfg.error());

  std::unique_ptr<Machine> m(new Machine());
  m->kind_ = cfg->kind;
  m->notify_ = std::move(stopped);
  m->restored_from_ = snap.path();
  // Memory first: vCPU MSRs (kvmclock, steal time) name guest pages.
  for (const auto& r : snap.regions()) {
    auto g = GuestRegion::create(r.slot, r.gpa, r.size, fmt::format("ferry-ram-{}", r.slot), huge_pages);
    if (!g) return ctx(g.error());
    auto read = snap.load_region(r, *g);
    if (!read) return ctx(read.error());
    spdlog::debug("slot {}: {} MiB, {} MiB read (the rest are holes)", r.slot, r.size >> 20, *read >> 20);
    m->regions_.push_back(std::make_unique<GuestRegion>(std::move(*g)));
  }
  if (auto ok = check_memory_layout(m->kind_, m->regions_); !ok) return ctx(ok.error());
  if (auto ok = m->create_vm(0, huge_pages, cfg->irqchip, cfg->vcpus); !ok) return ctx(ok.error());
  if (auto ok = m->create_devices(std::move(console)); !ok) return ctx(ok.error());
  if (auto ok = m->create_nets(nets, false); !ok) return ctx(ok.error());
  if (auto ok = m->apply_state(img, *cfg); !ok) return ctx(ok.error());
  if (auto ok = m->start_vcpus(start_paused); !ok) return ctx(ok.error());
  spdlog::info("VM restored from {}: {} vCPUs, {} MiB{}", snap.path(), cfg->vcpus,
               m->regions_.front()->size() >> 20, start_paused ? ", paused" : "");
  return m;
}

// Restore order: every vCPU (CPUID, registers, MSRs, LAPIC, events...: the
// per-vCPU order is in restore_vcpu_state), then the VM-wide chips and the
// clock last (see vm_state.hh), then devices. Memory is already in place:
// vCPU MSRs (kvmclock, steal time) name guest pages.
Status Machine::apply_state(const state::StateImage& img, const VmConfigState& cfg) {
  auto fail_with = [](Error e) { return std::unexpected(std::move(e)); };
  if (cfg.pit != vm_->has_pit()) return fail("PIT without irqchip");
  std::vector<std::uint64_t> tscs;  // each vCPU's captured TSC
  for (auto& v : vcpus_) {
    const auto* sec = img.find(SectionType::kVcpu, v.id());
    if (!sec) return fail_with(Error(fmt::format("no state for vCPU {}", v.id())));
    auto st = decode_vcpu_state(sec->payload);
    if (!st) return fail_with(std::move(st.error()).context(fmt::format("vCPU {}", v.id())));
    for (const auto& e : st->msrs)
      if (e.index == msr::kTsc) tscs.push_back(e.data);
    if (auto ok = restore_vcpu_state(v, *st); !ok) return fail_with(std::move(ok.error()).context(fmt::format("vCPU {}", v.id())));
  }
  if (auto ok = resync_tsc_offsets(vcpus_, tscs); !ok) return fail_with(ok.error());
  VmState vs;
  const auto* clock = img.find(SectionType::kClock, 0);
  if (!clock) return fail_with(Error("no clock section"));
  auto c = decode_clock_state(clock->payload);
  if (!c) return fail_with(c.error());
  vs.clock = *c;
  if (const auto* s = img.find(SectionType::kIrqchip, 0)) {
    auto ic = decode_irqchip_state(s->payload);
    if (!ic) return fail_with(ic.error());
    vs.irqchip = *ic;
  }
  if (const auto* s = img.find(SectionType::kPit, 0)) {
    auto pit = decode_pit_state(s->payload);
    if (!pit) return fail_with(pit.error());
    vs.pit = *pit;
  }
  if (auto ok = restore_vm_state(*vm_, vs); !ok) return fail_with(ok.error());
  if (auto ok = devices_->restore(img); !ok) return fail_with(ok.error());

  auto khz = vcpu_tsc_khz(vcpus_[0]);
  if (!khz) return fail_with(khz.error());
  tsc_khz_ = *khz;
  if (cfg.tsc_khz != *khz)
    spdlog::warn("TSC runs at {} kHz here, {} kHz where the snapshot was taken: the guest's TSC-paced timing "
                 "(heartbeats, dirty rate) scales by {:.3f}", *khz, cfg.tsc_khz,
                 static_cast<double>(*khz) / cfg.tsc_khz);
  return {};
}

namespace {

std::string one_device(const DeviceDescription& d) {
  return fmt::format("{} ({}{}{})", d.id, d.kind, d.config.empty() ? "" : " ", d.config);
}

std::string device_list(const std::vector<DeviceDescription>& ds) {
  std::string out;
  for (const auto& d : ds) out += fmt::format("{}{}", out.empty() ? "" : ", ", one_device(d));
  return out.empty() ? "none" : out;
}

}  // namespace

Status same_devices(const std::vector<DeviceDescription>& wanted, const std::vector<DeviceDescription>& built) {
  if (wanted == built) return {};
  for (const auto& w : wanted) {
    auto it = std::find_if(built.begin(), built.end(), [&](const DeviceDescription& b) { return b.id == w.id; });
    if (it == built.end())
      return fail("the VM has device {}, which this host does not build; it builds: {}", one_device(w),
                  device_list(built));
    if (*it != w)
      return fail("device {} is {} {} in the VM, {} {} here", w.id, w.kind, w.config, it->kind, it->config);
  }
  return fail("the VM's devices are {}; this host builds {}", device_list(wanted), device_list(built));
}

Result<std::unique_ptr<Machine>> Machine::incoming(const MachineShape& shape, Serial::Sink console, Notify stopped,
                                                   HugePages huge_pages, const std::vector<net::NetConfig>& nets) {
  std::unique_ptr<Machine> m(new Machine());
  m->kind_ = shape.kind;
  m->notify_ = std::move(stopped);
  m->incoming_ = true;
  if (shape.vcpus == 0 || shape.vcpus > FG_MAX_VCPUS) return fail("{} vCPUs (1..{})", shape.vcpus, FG_MAX_VCPUS);
  if (shape.kind == GuestKind::kLinux && !shape.irqchip) return fail("a Linux guest needs the in-kernel irqchip");
  for (const auto& r : shape.regions) {
    auto g = GuestRegion::create(r.slot, r.gpa, r.size, fmt::format("ferry-ram-{}", r.slot), huge_pages);
    if (!g) return std::unexpected(g.error());
    m->regions_.push_back(std::make_unique<GuestRegion>(std::move(*g)));
  }
  if (auto ok = check_memory_layout(m->kind_, m->regions_); !ok) return std::unexpected(ok.error());
  if (auto ok = m->create_vm(0, huge_pages, shape.irqchip, shape.vcpus); !ok) return std::unexpected(ok.error());
  if (auto ok = m->create_devices(std::move(console)); !ok) return std::unexpected(ok.error());
  if (auto ok = m->create_nets(nets, true); !ok) return std::unexpected(ok.error());
  if (shape.devices) {
    // The state that follows is for the source's devices: refuse now, before
    // any memory is sent, rather than fail to load it at the switchover.
    if (auto ok = same_devices(*shape.devices, m->devices()); !ok) return std::unexpected(ok.error());
  }
  return m;
}

Status Machine::load_state(const state::StateImage& img, bool start_paused) {
  if (!incoming_) return fail("load state: only a VM built by Machine::incoming takes a state image");
  const auto* cfg_sec = img.find(SectionType::kVmConfig, 0);
  if (!cfg_sec) return fail("load state: no VM config section");
  auto cfg = decode_vm_config(cfg_sec->payload);
  if (!cfg) return std::unexpected(std::move(cfg.error()).context("load state"));
  if (cfg->kind != kind_ || cfg->vcpus != vcpus_.size() || cfg->irqchip != vm_->has_irqchip())
    return fail("load state: the state is for a {} VM with {} vCPUs{}, this VM is {} with {}{}",
                guest_kind_name(cfg->kind), cfg->vcpus, cfg->irqchip ? " and an irqchip" : "", guest_kind_name(kind_),
                vcpus_.size(), vm_->has_irqchip() ? " and an irqchip" : "");
  if (auto ok = apply_state(img, *cfg); !ok) return std::unexpected(std::move(ok.error()).context("load state"));
  incoming_ = false;
  return start_vcpus(start_paused);
}

Status Machine::pause() {
  {
    std::lock_guard lock(mu_);
    if (stopped_) return fail("the VM is stopped ({})", stop_reason_);
    if (!runner_) return fail("the VM has not started");
  }
  if (auto ok = runner_->pause(); !ok) return ok;
  devices_->pause();  // after the vCPUs: no access reaches a quiesced device
  std::lock_guard lock(mu_);
  paused_ = true;
  return {};
}

Status Machine::resume() {
  std::lock_guard lock(mu_);
  if (stopped_) return fail("the VM is stopped ({})", stop_reason_);
  if (!runner_) return fail("the VM has not started");
  devices_->resume();  // before the vCPUs touch them again
  runner_->resume();
  paused_ = false;
  return {};
}

Status Machine::read_guest(std::uint64_t gpa, std::span<std::byte> out) const {
  return guest_access_->read(gpa, out);
}

Status Machine::write_guest(std::uint64_t gpa, std::span<const std::byte> bytes) {
  // Under mu_, which pause() takes to mark the VM paused: a write either
  // lands before a migration's final harvest (which follows the pause) or
  // is refused, never lost in between.
  std::lock_guard lock(mu_);
  if (stopped_) return fail("write guest memory: the VM is stopped ({})", stop_reason_);
  if (!runner_) return fail("write guest memory: the VM has not started");
  if (paused_)
    return fail("write guest memory: the VM is paused (its memory may be in a snapshot or a migration's last "
                "round); resume it first");
  return guest_access_->write(gpa, bytes);
}

Result<Machine::CapturedState> Machine::capture_state() {
  {
    std::lock_guard lock(mu_);
    if (!paused_ && !stopped_) return fail("capture state: the VM must be paused");
  }
  CapturedState s;
  for (auto& v : vcpus_) {
    // Finish an I/O exit the handler already served, or RIP would still
    // point at the OUT and the restored guest would execute it again.
    if (auto ok = v.complete_pending_exit(); !ok) return std::unexpected(ok.error());
    auto st = capture_vcpu_state(v, msr_indices_);
    if (!st) return std::unexpected(st.error());
    s.vcpus.push_back(std::move(*st));
  }
  auto vs = capture_vm_state(*vm_);
  if (!vs) return std::unexpected(vs.error());
  s.vm = std::move(*vs);
  s.serial = uart_->serial().save();
  return s;
}

Result<state::StateWriter> Machine::state_sections() {
  auto st = capture_state();
  if (!st) return std::unexpected(st.error());
  state::StateWriter w;
  w.add(SectionType::kVmConfig, 0, kVmConfigVersion,
        encode_vm_config({kind_, static_cast<std::uint32_t>(vcpus_.size()), vm_->has_irqchip(), vm_->has_pit(), tsc_khz_}));
  for (std::size_t i = 0; i < st->vcpus.size(); ++i)
    w.add(SectionType::kVcpu, static_cast<std::uint32_t>(i), kVcpuStateVersion, encode_vcpu_state(st->vcpus[i]));
  w.add(SectionType::kClock, 0, kClockStateVersion, encode_clock_state(st->vm.clock));
  if (st->vm.irqchip) w.add(SectionType::kIrqchip, 0, kIrqchipStateVersion, encode_irqchip_state(*st->vm.irqchip));
  if (st->vm.pit) w.add(SectionType::kPit, 0, kPitStateVersion, encode_pit_state(*st->vm.pit));
  devices_->save(w);  // COM1 (kSerial), the ACPI PM block (kDeviceOther)
  return w;
}

Result<std::vector<std::byte>> Machine::state_image() {
  auto w = state_sections();
  if (!w) return std::unexpected(w.error());
  return w->finish();
}

Result<SnapshotFigures> Machine::snapshot(const std::string& path) {
  SnapshotFigures f;
  bool was_running;
  {
    std::lock_guard lock(mu_);
    if (stopped_) return fail("snapshot: the VM is stopped ({})", stop_reason_);
    was_running = !paused_;
  }
  f.was_running = was_running;
  const auto t0 = std::chrono::steady_clock::now();
  if (was_running)
    if (auto ok = pause(); !ok) return std::unexpected(ok.error());
  auto result = [&]() -> Result<SnapshotWriteFigures> {
    auto w = state_sections();
    if (!w) return std::unexpected(w.error());
    std::vector<const GuestRegion*> regions;
    for (const auto& r : regions_) regions.push_back(r.get());
    return write_snapshot(path, std::move(*w), regions);
  }();
  // Resume even when the snapshot failed: a failed snapshot must not leave
  // the VM stopped.
  if (was_running)
    if (auto ok = resume(); !ok && result) return std::unexpected(ok.error());
  f.paused_for = std::chrono::steady_clock::now() - t0;
  if (!result) return std::unexpected(result.error());
  f.file = *result;
  return f;
}

void Machine::console_input(std::string_view bytes) {
  uart_->console_input(bytes);  // raises the IRQ where one is wired; the test guest polls
}

MachineStatus Machine::status() const {
  MachineStatus s;
  s.kind = kind_;
  {
    std::lock_guard lock(mu_);
    s.state = stopped_ ? RunState::kStopped : paused_ ? RunState::kPaused : RunState::kRunning;
    s.stop_reason = stop_reason_;
  }
  s.vcpus = static_cast<std::uint32_t>(vcpus_.size());
  for (const auto& r : regions_) s.memory_bytes += r->size();
  s.irqchip = vm_->has_irqchip();
  s.huge_pages = regions_.front()->huge_pages();
  s.tsc_khz = tsc_khz_;
  s.restored_from = restored_from_;
  s.uptime = std::chrono::steady_clock::now() - started_;
  if (monitor_) {
    std::memcpy(&s.params, regions_.front()->host_at(FG_PARAMS_GPA), sizeof s.params);
    s.monitor = monitor_->figures();
  }
  for (std::size_t i = 0; i < nets_.size(); ++i)
    s.nets.push_back({fmt::format("net{}", i), nets_[i]->tap().name(), net::format_mac(nets_[i]->mac()),
                      nets_[i]->figures()});
  for (std::size_t i = 0; i < vcpus_.size() && runner_; ++i)
    s.per_vcpu.push_back({runner_->exits(i), monitor_ ? read_test_guest_status(*regions_.front(), static_cast<std::uint32_t>(i))
                                                      : fg_status{}});
  return s;
}

Status Machine::stop(std::string reason) {
  {
    std::lock_guard lock(mu_);
    if (!stopped_) {
      stopped_ = true;
      stop_reason_ = std::move(reason);
    }
  }
  Status first;
  if (!runner_) return first;  // an incoming VM whose state never loaded: no vCPU ever ran
  for (auto& st : runner_->stop_and_join())
    if (!st && first) first = std::unexpected(st.error());
  return first;
}

}  // namespace ferry::kvm
