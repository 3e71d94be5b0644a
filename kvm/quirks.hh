#pragma once
// Known behaviours of particular KVM implementations that Ferry must route
// around. Each entry says what was measured, so it can be re-checked.
#include <optional>
#include <string>

namespace ferry::kvm {

// Whether KVM here is PVM (the kvm_pvm module): KVM without hardware
// virtualization. `sysfs_root` is for tests.
bool kvm_is_pvm(const std::string& sysfs_root = "/sys");

// Why this host's dirty ring must not be trusted, or nullopt when it can be.
//
// PVM (the kvm_pvm module: KVM without hardware virtualization, found on the
// project's build machines) stops the vCPU only when the ring is completely
// full rather than at the soft limit, and then drops entries: a guest writing
// 1500 pages through a 256-entry ring was reported 1280 of them in most runs
// (tests/kvm/dirty_tracker_test.cc, RingOverflowLosesNothing). A lost entry is
// a page that live migration would never resend. The dirty bitmap on the same
// host was exact in every run.
std::optional<std::string> dirty_ring_unreliable_reason(const std::string& sysfs_root = "/sys");

// PVM runs guests that are not PVM-aware (all of Ferry's, and ordinary
// Linux) through its instruction emulator: the built-in test guest rewrote
// ~60 pages/s natively on PVM versus ~20,000 pages/s under nested KVM in
// QEMU's emulator (tools/kvm-sandbox). Returns why this host's KVM is slow,
// or nullopt.
std::optional<std::string> kvm_emulates_guests_reason(const std::string& sysfs_root = "/sys");

}  // namespace ferry::kvm
