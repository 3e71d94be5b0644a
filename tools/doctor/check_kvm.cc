// KVM checks: the device, the API, and every capability Ferry relies on.
// Capabilities are asked on a throwaway VM where KVM answers per VM (the
// dirty ring's size, for one, is a VM property).
#include <linux/kvm.h>
#include <unistd.h>

#include <cerrno>

#include "tools/doctor/checks.hh"
#include "kvm/quirks.hh"
#include "kvm/system.hh"
#include "kvm/vm.hh"

namespace ferry::doctor {
namespace {

Check make(std::string name, Level level, std::string detail, std::string remedy, nlohmann::json value) {
  return Check{"kvm", std::move(name), level, std::move(detail), std::move(remedy), std::move(value)};
}

struct CapSpec {
  const char* name;
  unsigned cap;
  Level when_missing;
  const char* what;    // what it is for, shown in the detail
  const char* remedy;  // when missing
};

// Order: what migration cannot do without first.
constexpr CapSpec kCaps[] = {
    {"immediate_exit", KVM_CAP_IMMEDIATE_EXIT, Level::kFail, "prompt, race-free vCPU pause",
     "upgrade the host kernel (KVM_CAP_IMMEDIATE_EXIT is in Linux >= 4.11)"},
    {"irqchip", KVM_CAP_IRQCHIP, Level::kFail, "in-kernel LAPIC/IOAPIC/PIC for Linux guests",
     "use a KVM build with in-kernel irqchip support (x86 KVM has it)"},
    {"manual_dirty_protect", KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2, Level::kWarn,
     "dirty-bitmap fallback with KVM_CLEAR_DIRTY_LOG", "upgrade the host kernel (Linux >= 5.3)"},
    {"pit2", KVM_CAP_PIT2, Level::kWarn, "in-kernel PIT for Linux guests' early timer",
     "use a KVM with KVM_CAP_PIT2 (x86 KVM has it); guests needing the PIT cannot boot"},
    {"tsc_control", KVM_CAP_TSC_CONTROL, Level::kWarn, "keep guest TSC frequency across hosts",
     "migrate only between hosts with the same TSC frequency (needs TSC scaling in hardware)"},
    {"xsave", KVM_CAP_XSAVE, Level::kWarn, "transfer AVX/extended FPU state",
     "guests using AVX cannot be migrated exactly; upgrade the host kernel"},
    {"xcrs", KVM_CAP_XCRS, Level::kWarn, "transfer XCR0", "upgrade the host kernel"},
    {"vcpu_events", KVM_CAP_VCPU_EVENTS, Level::kWarn, "transfer pending exceptions/interrupts/NMIs",
     "upgrade the host kernel"},
    {"adjust_clock", KVM_CAP_ADJUST_CLOCK, Level::kWarn, "carry kvmclock across migration",
     "upgrade the host kernel"},
};

}  // namespace

std::vector<Check> check_kvm(const std::string& device) {
  std::vector<Check> out;
  auto kvm = kvm::Kvm::open(device);
  if (!kvm) {
    const int err = kvm.error().sys_errno();
    std::string detail = kvm.error().what();
    std::string remedy = fmt::format("{} is not a working KVM device: run Ferry inside tools/kvm-sandbox", device);
    if (err == ENOENT) {
      detail = fmt::format("{} does not exist", device);
      remedy = "load kvm-intel/kvm-amd (needs VT-x/AMD-V), or run Ferry inside tools/kvm-sandbox";
    } else if (err == EACCES || err == EPERM) {
      remedy = fmt::format("run as root or add the user to the group owning {}", device);
    }
    out.push_back(make("device", Level::kFail, std::move(detail), std::move(remedy), false));
    return out;
  }
  out.push_back(make("device", Level::kOk, fmt::format("{} opened", device), "", true));
  out.push_back(make("api_version", Level::kOk, fmt::format("API version {}", kvm->api_version()), "", kvm->api_version()));

  auto vm = kvm->create_vm();
  if (!vm) {
    out.push_back(make("create_vm", Level::kFail, vm.error().what(),
                       "KVM_CREATE_VM failed: check dmesg (virtualization disabled in firmware, or out of memory)", false));
    return out;
  }
  out.push_back(make("create_vm", Level::kOk, "a VM can be created", "", true));
  if (auto slow = kvm::kvm_emulates_guests_reason()) {
    out.push_back(make("hardware_virt", Level::kWarn, fmt::format("{}; guests run hundreds of times slower", *slow),
                       "for real workloads use a host with VT-x/AMD-V; tools/kvm-sandbox is faster than this KVM",
                       false));
  } else {
    out.push_back(make("hardware_virt", Level::kOk, "guests run on hardware virtualization", "", true));
  }

  // Dirty logging: the ring is Ferry's default; the bitmap is the fallback.
  const int ring = vm->check_extension(KVM_CAP_DIRTY_LOG_RING);
  const int ring_acq_rel = vm->check_extension(KVM_CAP_DIRTY_LOG_RING_ACQ_REL);
  const int ring_max = std::max(ring, ring_acq_rel);
  const auto untrusted = kvm::dirty_ring_unreliable_reason();
  if (ring_max > 0 && untrusted) {
    out.push_back(make("dirty_ring", Level::kWarn,
                       fmt::format("dirty ring offered (max {} KiB per vCPU) but not trusted: {}; Ferry tracks dirty "
                                   "pages with the bitmap instead",
                                   ring_max / 1024, *untrusted),
                       "nothing to do (the bitmap is exact); hardware-virtualized KVM gets the cheaper ring", ring_max));
  } else if (ring_max > 0) {
    out.push_back(make("dirty_ring", Level::kOk,
                       fmt::format("dirty ring available, max {} KiB per vCPU ({} entries)", ring_max / 1024,
                                   ring_max / static_cast<int>(sizeof(kvm_dirty_gfn))),
                       "", ring_max));
  } else {
    out.push_back(make("dirty_ring", Level::kWarn, "no KVM dirty ring; the dirty bitmap will be used",
                       "upgrade the host kernel (dirty ring: Linux >= 5.11) for cheaper dirty tracking", 0));
  }
  out.push_back(make("dirty_ring_acq_rel", ring_acq_rel > 0 ? Level::kOk : Level::kWarn,
                     ring_acq_rel > 0 ? "ACQ_REL dirty ring offered"
                                      : "ACQ_REL dirty ring not offered (the plain ring is used; fine on x86)",
                     ring_acq_rel > 0 ? "" : "none needed on x86; Linux >= 6.1 offers it", ring_acq_rel));

  for (const auto& spec : kCaps) {
    const int v = vm->check_extension(spec.cap);
    out.push_back(make(spec.name, v > 0 ? Level::kOk : spec.when_missing,
                       fmt::format("{} {}", v > 0 ? "available:" : "MISSING:", spec.what), v > 0 ? "" : spec.remedy,
                       v));
  }

  const int max_vcpus = kvm->check_extension(KVM_CAP_MAX_VCPUS);
  out.push_back(make("max_vcpus", max_vcpus > 0 ? Level::kOk : Level::kWarn,
                     fmt::format("up to {} vCPUs per VM", max_vcpus), max_vcpus > 0 ? "" : "old kernel", max_vcpus));

  auto msrs = kvm->msr_index_list();
  if (msrs) {
    out.push_back(make("msr_list", Level::kOk, fmt::format("{} MSRs can be saved and restored", msrs->size()), "",
                       msrs->size()));
  } else {
    out.push_back(make("msr_list", Level::kFail, msrs.error().what(),
                       "KVM_GET_MSR_INDEX_LIST must work to transfer CPU state", 0));
  }
  return out;
}

}  // namespace ferry::doctor
